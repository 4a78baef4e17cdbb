"""Failing a build on a blocked loop: ``--fail-on`` on a launched command, and the pytest plugin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from harness import TARGETS
from otel_blocksnoop.errors import ExitCode
from tests.helpers import BLOCKER, RUN_TIMEOUT_S, SIDECAR, run_raw

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]


def blocking_app(ms: float) -> list[str]:
    """An asyncio app that blocks its loop once for ``ms`` (time.sleep), then exits 0."""
    return [sys.executable, str(BLOCKER), "sleep", "--ms", str(ms), "--out", "/dev/null"]


FAILING_APP = """
import asyncio, sys, time

async def main():
    await asyncio.sleep(0.2)
    time.sleep(0.15)

asyncio.run(main())
sys.exit(3)
"""


def test_a_launched_app_that_blocks_past_fail_on_fails_the_run_with_the_block_printed() -> None:
    # GIVEN an app that blocks its loop for 150 ms, watched with --fail-on 50
    result = run_raw("-q", "--fail-on", "50", "--", *blocking_app(150))
    # THEN the run exits LOOP_BLOCKED, after printing the block with its stack and call site
    assert result.returncode == ExitCode.LOOP_BLOCKED, result.stderr
    assert "failing (exit 13): 1 blocked loop iteration of at least 50 ms" in result.stderr
    assert "in block_once" in result.stderr


def test_a_launched_app_whose_blocks_stay_under_fail_on_keeps_its_exit_code_0() -> None:
    # GIVEN an app that blocks for 20 ms only, with -t 10 so the block is reported, not failed
    result = run_raw("-q", "-t", "10", "--fail-on", "100", "--", *blocking_app(20))
    assert result.returncode == ExitCode.OK, result.stderr
    assert "failing" not in result.stderr
    assert "in block_once" in result.stdout  # reported all the same


def test_a_failing_command_keeps_its_own_exit_code_and_the_block_is_still_printed() -> None:
    result = run_raw("-q", "--fail-on", "50", "--", sys.executable, "-c", FAILING_APP)
    assert result.returncode == 3, result.stderr
    assert "the command's own exit code 3 wins" in result.stderr
    assert 'File "<string>", line 6, in main' in result.stderr


def test_a_bad_fail_on_value_is_a_one_line_usage_error() -> None:
    result = run_raw("--fail-on", "-1", "--", sys.executable, "-c", "pass")
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.count("\n") == 1
    assert "argument --fail-on: must be from" in result.stderr


# The pytest plugin: a real pytest, in a directory of its own, with --blocksnoop.

SUITE = TARGETS / "blocking_suite.py"
BLOCKING = {
    "test_sleeps_in_a_coroutine": ("test_sleeps_in_a_coroutine", "sleep"),
    "test_hashes_in_a_c_extension": ("test_hashes_in_a_c_extension.<locals>.derive_key", "pbkdf2"),
    "test_counts_in_pure_python": ("test_counts_in_pure_python", "loop"),
}
CLEAN = ("test_sleeps_with_no_loop_running", "test_awaits_without_blocking")
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


def run_pytest(
    tmp_path: Path, *args: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """pytest on the blocking suite, copied into ``tmp_path`` with an ini of its own."""
    (tmp_path / "test_blocking.py").write_text(SUITE.read_text())
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    )
    return subprocess.run(
        [*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S * 2,
        check=False,
    )


def outcomes(junit: Path) -> dict[str, str]:
    """Each test's failure message, or "" for a test that passed."""
    cases = ET.parse(junit).getroot().iter("testcase")  # noqa: S314 - our own file
    found = {}
    for case in cases:
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        found[case.attrib["name"]] = "" if failure is None else failure.attrib.get("message", "")
    return found


def named_at(function: str, test_file: Path, marker: str, text: str) -> bool:
    """Whether ``text`` names ``function`` at a line of the suite marked ``marker``.

    A pure-Python loop is marked on its ``for`` line and its body: a sample may
    catch the thread at either (the header's instructions take about a fifth of
    an iteration), and the line sampled most is the call site.
    """
    lines = SUITE.read_text().splitlines()
    marked = [i for i, line in enumerate(lines, 1) if line.endswith(f"# blocks: {marker}")]
    return any(f"at {function} ({test_file}:{number})" in text for number in marked)


def test_the_plugin_fails_exactly_the_tests_that_blocked_naming_each_call_site(
    tmp_path: Path,
) -> None:
    # GIVEN a suite of three tests that block their loop (time.sleep in a coroutine, a C
    # extension call, a pure-Python loop), one that sleeps with no loop running and
    # one that only awaits
    junit = tmp_path / "junit.xml"
    # WHEN it runs under pytest --blocksnoop=100, tests unchanged
    result = run_pytest(tmp_path, "--blocksnoop=100", f"--junitxml={junit}", "-p", "asyncio")
    # THEN exactly the three blocking tests fail, each naming its blocking call's site
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    found = outcomes(junit)
    assert all(found[name] == "" for name in CLEAN), found
    test_file = tmp_path / "test_blocking.py"
    for name, (function, marker) in BLOCKING.items():
        assert "event loop blocked during this test's call" in found[name], (name, found)
        assert named_at(function, test_file, marker, found[name]), (name, found)
    assert "2 passed" in result.stdout


def test_without_the_option_the_suite_runs_as_it_would_without_the_plugin(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "-p", "asyncio", "-q")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "5 passed" in result.stdout


def test_a_bad_blocksnoop_value_is_a_one_line_usage_error(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "--blocksnoop=-5")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "argument --blocksnoop: must be from 0.001 to" in result.stderr


def test_without_privileges_the_run_stops_before_any_test_with_the_sidecars_reason(
    tmp_path: Path,
) -> None:
    # GIVEN root with every capability dropped (the test process cannot be watched)
    no_caps = ("setpriv", "--bounding-set=-all", "--inh-caps=-all")
    # WHEN pytest runs with --blocksnoop
    result = run_pytest(tmp_path, "--blocksnoop=100", "-p", "asyncio", prefix=no_caps)
    # THEN it stops with a usage error that gives the sidecar's one line, and runs no test
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "--blocksnoop" in line]
    assert len(errors) == 1, result.stderr
    assert "cannot watch the test process: otel-blocksnoop:" in errors[0]
    assert "capabilit" in errors[0]
    assert "(hint: " in errors[0]
    assert "passed" not in result.stdout


def test_fail_on_around_pytest_fails_the_build_on_each_blocking_test_and_nothing_else(
    tmp_path: Path,
) -> None:
    # GIVEN the suite, run by pytest without the plugin, under --fail-on 100
    (tmp_path / "test_blocking.py").write_text(SUITE.read_text())
    (tmp_path / "pytest.ini").write_text(INI)
    pytest_run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "asyncio"]
    result = subprocess.run(
        [*SIDECAR, "-q", "--fail-on", "100", "--", *pytest_run],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S * 2,
        check=False,
    )
    # THEN the tests pass, and the run fails on the three blocks, each with its call site;
    # the sync test's sleep between two loops held up no loop and is not listed
    assert result.returncode == ExitCode.LOOP_BLOCKED, result.stderr
    assert "5 passed" in result.stdout
    assert "failing (exit 13): 3 blocked loop iterations of at least 100 ms" in result.stderr
    test_file = tmp_path / "test_blocking.py"
    for function, marker in BLOCKING.values():
        assert named_at(function, test_file, marker, result.stderr), result.stderr
    assert "test_sleeps_with_no_loop_running (" not in result.stderr
