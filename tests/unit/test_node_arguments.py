"""Node mode on the command line: --all, --match, --container, --pod, --max-processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from otel_blocksnoop.analysis import throttle
from otel_blocksnoop.analysis.enrich import MAX_IDENTITIES
from otel_blocksnoop.analysis.trace_link import MAX_READERS
from otel_blocksnoop.bounded import MAX_WATCHED_PROCESSES
from otel_blocksnoop.cli import parse_arguments
from otel_blocksnoop.errors import ExitCode
from otel_blocksnoop.export.otel.resource import MAX_RESOURCES
from otel_blocksnoop.process.discovery import PodSelector

POD_UID = "6a1f0e3c-7b2d-4c5e-9f80-1a2b3c4d5e6f"


def test_all_watches_every_python_process_with_the_default_cap() -> None:
    config = parse_arguments(["--all", "-t", "10"])
    assert config.select is not None
    assert config.select.pattern is None
    assert config.select.container is None
    assert config.pids == ()
    assert config.max_processes == 256


def test_the_cap_may_be_as_high_as_the_per_process_tables_hold() -> None:
    config = parse_arguments(["--all", "--max-processes", str(MAX_WATCHED_PROCESSES)])
    assert config.max_processes == MAX_WATCHED_PROCESSES
    # Every table kept per watched process holds the cap's most.
    assert MAX_RESOURCES == MAX_IDENTITIES == MAX_READERS == throttle.MAX_PROCESSES
    assert MAX_RESOURCES == MAX_WATCHED_PROCESSES


def test_match_and_container_narrow_each_other() -> None:
    config = parse_arguments(
        ["--match", "uvicorn|gunicorn", "--container", "docker://3F2A9C1B7D4E", "--json"]
    )
    assert config.select is not None
    assert config.select.wants_command("python -m uvicorn app:app")
    assert not config.select.wants_command("python worker.py")
    assert config.select.container == "3f2a9c1b7d4e"
    assert config.select.wants_container("3f2a9c1b7d4e" + "0" * 52)
    assert not config.select.wants_container("aa" * 32)
    assert not config.select.wants_container(None)
    assert config.json


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("checkout-7d9f8b6c5-x2x4q", PodSelector(name="checkout-7d9f8b6c5-x2x4q")),
        ("shop/checkout-0", PodSelector(name="checkout-0", namespace="shop")),
        ("pod/checkout-0", PodSelector(name="checkout-0")),
        ("6A1F0E3C-7B2D-4C5E-9F80-1A2B3C4D5E6F", PodSelector(uid=POD_UID)),
    ],
)
def test_a_pod_is_named_as_kubectl_names_it(text: str, expected: PodSelector) -> None:
    config = parse_arguments(["--pod", text])
    assert config.select is not None
    assert config.select.pod == expected


def test_without_a_selector_no_node_mode() -> None:
    assert parse_arguments(["1234"]).select is None


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--match", "app[.py"], "not a regular expression: 'app[.py'"),
        (["--container", "not-hex!"], "not a container id"),
        (["--all", "1234"], "one of them"),
        (["--match", "x", "--", "python3", "app.py"], "one of them"),
        (["--all", "--tid", "5"], "--tid needs a PID"),
        (["--all", "--max-processes", "0"], "must be positive"),
        (["--all", "--max-processes", "257"], "at most 256, not '257'"),
        (["--pod", "Shop/Checkout"], "not a pod: 'Shop/Checkout'"),
        (["--pod", "a/b/c"], "not a pod: 'a/b/c'"),
        (["--pod", "shop/"], "not a pod: 'shop/'"),
        (["--pod", "x", "1234"], "one of them"),
    ],
)
def test_bad_node_arguments_are_one_line_and_the_usage_code(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # WHEN the command line is wrong in one way
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(argv)
    # THEN one line says which, and the exit code is the usage one
    err = capsys.readouterr().err
    assert exit_info.value.code == ExitCode.USAGE
    assert err.count("\n") == 1, err
    assert said in err
    assert err.startswith("otel-blocksnoop: error: ")


def test_a_bad_regex_exits_2_with_one_line_from_the_command() -> None:
    # WHEN the sidecar itself is run with a pattern that does not compile
    result = subprocess.run(
        [sys.executable, "-m", "otel_blocksnoop", "--match", "(unclosed"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # THEN it exits 2 with one line on stderr and no traceback
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.count("\n") == 1, result.stderr
    assert "not a regular expression: '(unclosed'" in result.stderr
    assert "Traceback" not in result.stderr
