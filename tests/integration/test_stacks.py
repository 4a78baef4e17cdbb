"""The blocking code: real Austin against real targets on every Python found here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.interpreters import pyenv_python
from tests.helpers import BLOCKER, matching_block, run_sidecar, truth
from tests.integration.test_frame_reader import MINORS, target_command

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

# What the innermost application frame must be for each way of blocking,
# and a piece of the source line Austin must point at.
CALL_SITES = {
    "sleep": ("block_once", "BLOCKERS[scenario](seconds)"),
    "cpu": ("busy", "time.thread_time() < deadline"),
    "hashlib": ("pbkdf2", "max(1, int(seconds / PER_ROUND))"),
    "read": ("read_pipe", "os.read(read_end, 1)"),
    "subprocess": ("wait_subprocess", 'subprocess.run(["sleep"'),
    "lock": ("held_lock", "lock.acquire()"),
    "gil": ("gil_contention", 'os.stat("/")'),
}

# Why each way of blocking held the loop: (cause, syscalls accepted). Python
# 3.9 and 3.10 sleep in select (pselect6 through glibc), later ones in
# clock_nanosleep.
CAUSES: dict[str, tuple[str, set[str | None]]] = {
    "sleep": ("syscall", {"clock_nanosleep", "select", "pselect6"}),
    "cpu": ("cpu", {None}),
    "hashlib": ("cpu", {None}),
    "read": ("syscall", {"read"}),
    "subprocess": ("syscall", {"wait4", "vfork"}),  # vfork: a slow exec under load
    "lock": ("syscall", {"futex"}),
    "gil": ("gil", {None}),
}

# What the kernel booked for a block, printed when its cause is not the one expected.
KERNEL_BOOKS = (
    "duration_ms",
    "on_cpu_ms",
    "runq_ms",
    "off_cpu_ms",
    "sleeps",
    "sibling_cpu_ms",
    "started_before_watch",
    "iteration",
)


def target_pythons() -> dict[str, Path | None]:
    """The sidecar's own interpreter and pyenv's CPython 3.9, 3.10, 3.12, 3.13 (None: not here).

    A missing one is a test that skips, so a failure under CI, not a test left out.
    """
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    found: dict[str, Path | None] = {own: Path(sys.executable)}
    for minor in (9, 10, 12, 13):
        found.setdefault(f"3.{minor}", pyenv_python(minor))
    return found


PYTHONS = target_pythons()


def assert_call_site(
    block: dict[str, Any],
    scenario: str,
    causes: dict[str, tuple[str, set[str | None]]] = CAUSES,
) -> None:
    function, snippet = CALL_SITES[scenario]
    site = block["call_site"]
    assert site is not None, f"{scenario}: no stack"
    assert site["function"].endswith(function), (scenario, site)
    line = Path(site["file"]).read_text().splitlines()[site["line"] - 1]
    assert snippet in line, (scenario, line)
    assert block["samples"] >= 3, block
    assert block["stack"][-1]["source"], "source lines come from the target's files"
    cause, syscalls = causes[scenario]
    assert (block["cause"], block["syscall"]) in {(cause, name) for name in syscalls}, (
        scenario,
        block["cause"],
        block["syscall"],
        {key: block[key] for key in KERNEL_BOOKS},
    )


@pytest.mark.parametrize("version", sorted(PYTHONS))
def test_each_kind_of_block_names_the_blocking_call(tmp_path: Path, version: str) -> None:
    python = PYTHONS[version]
    if python is None:
        pytest.skip(f"no CPython {version} under pyenv here")
    # GIVEN an app on this interpreter that blocks seven known ways for ~120 ms each,
    # its stacks read by Austin (by default only 3.9 and 3.10's are)
    # (after 1 s: Austin cannot attach to a 3.9/3.10 interpreter still starting)
    out = tmp_path / "truth.jsonl"
    target = [str(python), str(BLOCKER), "all", "--delay", "1", "--out", str(out)]
    run = run_sidecar("--json", "-q", "-t", "50", "--stacks-from", "austin", "--", *target)
    assert run.returncode == 0, run.stderr
    # THEN each block carries the stack of the code that blocked, down to the line,
    # and why it blocked
    expected = truth(out)
    assert [r["scenario"] for r in expected] == list(CALL_SITES)
    for true_block in expected:
        assert_call_site(matching_block(run.blocks, true_block), true_block["scenario"])


# 3.15's stacks come from memory by default: test_mount_namespaces.py shows them.
MEMORY_MINORS = (*MINORS, 14)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("minor", MEMORY_MINORS, ids=[f"3.{m}" for m in MEMORY_MINORS])
def test_stacks_read_from_the_apps_memory_name_the_same_calls_as_austin(
    tmp_path: Path, minor: int, loop: str
) -> None:
    # GIVEN an app on pyenv's CPython 3.11 or 3.12 (read by their generated layouts),
    # 3.13 (the first to publish _Py_DebugOffsets) or sid's 3.14 (in its root) that
    # blocks seven known ways, watched with the stacks read by the sidecar from its memory
    out = tmp_path / "truth.jsonl"
    extra = ["--uvloop"] if loop == "uvloop" else []
    target = target_command(minor, loop, BLOCKER, "all", "--out", str(out), *extra)
    run = run_sidecar("--json", "-v", "-t", "50", "--stacks-from", "memory", "--", *target)
    assert run.returncode == 0, run.stderr
    # THEN no Austin ran, and each block names the same call, down to the line, as
    # Austin does in the test above, with the same cause
    assert f"CPython 3.{minor}) from its memory" in run.stderr
    assert "austin -P" not in run.stderr
    expected = truth(out)
    assert [r["scenario"] for r in expected] == list(CALL_SITES)
    for true_block in expected:
        assert_call_site(matching_block(run.blocks, true_block), true_block["scenario"])


# sid's CPython 3.14 and 3.15 (Austin asked for on 3.14, memory by default on 3.15), asyncio and
# uvloop: test_mount_namespaces.py, whose apps run in their own root as they must.


def test_uvloop_blocks_name_the_blocking_call(tmp_path: Path) -> None:
    out = tmp_path / "truth.jsonl"
    run = run_sidecar(
        "--json", "-q", "-t", "50", "--", sys.executable, str(BLOCKER), "all", "--uvloop",
        "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for true_block in truth(out):
        assert_call_site(matching_block(run.blocks, true_block), true_block["scenario"])


def test_a_loop_in_another_thread_gets_its_own_threads_stack(tmp_path: Path) -> None:
    out = tmp_path / "truth.jsonl"
    run = run_sidecar(
        "--json", "-q", "-t", "50", "--", sys.executable, str(BLOCKER), "two-threads",
        "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for true_block in truth(out):
        block = matching_block(run.blocks, true_block)
        assert block["call_site"]["function"].endswith("body"), block["call_site"]


def test_no_stacks_flag_reports_blocks_without_code(tmp_path: Path) -> None:
    out = tmp_path / "truth.jsonl"
    run = run_sidecar(
        "--json", "-q", "--no-stacks", "-t", "50", "--", sys.executable, str(BLOCKER), "sleep",
        "--out", str(out),
    )  # fmt: skip
    (true_block,) = truth(out)
    block = matching_block(run.blocks, true_block)
    assert block["stack"] == []
    assert block["call_site"] is None


@pytest.mark.parametrize("named_by", ["flag", "AUSTINPATH"])
def test_a_missing_austin_degrades_to_blocks_without_stacks(tmp_path: Path, named_by: str) -> None:
    # GIVEN an Austin named by --austin (over a bad $AUSTINPATH) or by $AUSTINPATH alone,
    # that does not exist, while the venv has one
    out = tmp_path / "truth.jsonl"
    env = {**os.environ, "AUSTINPATH": str(tmp_path / "no-austin-here")}
    flag = ["--austin", str(tmp_path / "missing")] if named_by == "flag" else []
    result = subprocess.run(
        [sys.executable, "-m", "otel_blocksnoop", "--json", "-t", "50", *flag,
         "--", sys.executable, str(BLOCKER), "sleep", "--out", str(out)],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    # THEN the warning names what was asked for, and blocks still come, without stacks
    assert result.returncode == 0, result.stderr
    assert "without stacks" in result.stderr
    asked = str(tmp_path / "missing") if named_by == "flag" else "$AUSTINPATH="
    assert f"failed to find Austin at {asked}" in result.stderr
    blocks = [r for r in map(json.loads, result.stdout.splitlines()) if r["type"] == "block"]
    (true_block,) = truth(out)
    assert matching_block(blocks, true_block)["stack"] == []
