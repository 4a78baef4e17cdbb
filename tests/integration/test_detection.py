"""Detection against real asyncio apps, with the real kernel probes and the real CLI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BLOCKER, matching_block, run_sidecar, truth

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

TOLERANCE_NS = 20_000_000  # generous: precision is measured in bench/, not here


Record = dict[str, Any]


def launch(
    tmp_path: Path, *target_args: str, threshold_ms: int = 50
) -> tuple[list[Record], list[Record]]:
    """Run the target under the sidecar; return (reported blocks, the target's own record)."""
    out = tmp_path / "truth.jsonl"
    target = [sys.executable, str(BLOCKER), *target_args, "--out", str(out)]
    run = run_sidecar("--json", "-q", "-t", str(threshold_ms), "--", *target)
    assert run.returncode == 0, run.stderr
    return run.blocks, truth(out)


@pytest.mark.parametrize("scenario", ["sleep", "cpu", "hashlib", "read", "subprocess", "lock"])
def test_each_kind_of_block_is_reported_on_the_loop_thread(tmp_path: Path, scenario: str) -> None:
    # GIVEN an asyncio app that blocks its loop once for ~120 ms in a known way
    # WHEN it runs under the sidecar with a 50 ms threshold
    blocks, expected = launch(tmp_path, scenario)
    # THEN exactly that block is reported, on that thread, with its duration
    assert len(expected) == 1
    assert len(blocks) == 1
    block = matching_block(blocks, expected[0])
    true_ns = expected[0]["end_ns"] - expected[0]["start_ns"]
    reported_ns = block["end_monotonic_ns"] - block["start_monotonic_ns"]
    assert true_ns <= reported_ns < true_ns + TOLERANCE_NS
    assert block["thread_kind"] == "loop"


def test_long_idle_awaits_are_not_blocks(tmp_path: Path) -> None:
    # GIVEN an app whose loop only waits (three 300 ms asyncio.sleep calls)
    blocks, _ = launch(tmp_path, "idle", threshold_ms=10)
    # THEN nothing is reported
    assert blocks == []


def test_launch_mode_catches_a_block_in_the_first_50_ms(tmp_path: Path) -> None:
    # GIVEN an app that blocks before its first await, right after start-up
    blocks, expected = launch(tmp_path, "early", "--ms", "80")
    # THEN the probes were attached before it ran: the block is there
    assert len(expected) == 1
    matching_block(blocks, expected[0])


def test_a_loop_in_a_non_main_thread_is_reported_under_its_own_tid(tmp_path: Path) -> None:
    blocks, expected = launch(tmp_path, "thread")
    (true_block,) = expected
    block = matching_block(blocks, true_block)
    assert block["tid"] != block["pid"]
    assert block["thread_kind"] == "loop"


def test_two_loops_in_two_threads_are_told_apart(tmp_path: Path) -> None:
    blocks, expected = launch(tmp_path, "two-threads")
    assert len(expected) == 2
    assert len({b["tid"] for b in expected}) == 2
    for true_block in expected:
        matching_block(blocks, true_block)
    assert len(blocks) == 2


def test_uvloop_blocks_are_reported(tmp_path: Path) -> None:
    blocks, expected = launch(tmp_path, "all", "--uvloop")
    assert len(expected) == 7
    for true_block in expected:
        matching_block(blocks, true_block)
    assert len(blocks) == 7


def test_uvloop_in_a_thread_is_reported(tmp_path: Path) -> None:
    blocks, expected = launch(tmp_path, "thread", "--uvloop")
    (true_block,) = expected
    assert matching_block(blocks, true_block)["thread_kind"] == "loop"


def test_a_python_app_started_by_a_launched_shell_is_watched(tmp_path: Path) -> None:
    # GIVEN a shell script that forks the app (not exec): the app is a child of the watched PID
    out = tmp_path / "truth.jsonl"
    script = f"{sys.executable} {BLOCKER} sleep --out {out}; true"
    run = run_sidecar("--json", "-q", "-t", "50", "--", "sh", "-c", script)
    # THEN its block is reported, under its own PID
    assert run.returncode == 0, run.stderr
    (true_block,) = truth(out)
    matching_block(run.blocks, true_block)
