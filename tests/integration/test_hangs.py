"""Hangs: a loop that does not come back is reported while it is stuck, and never lost."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_blocksnoop.kernel.detector import EPOLL_SYSCALLS
from otel_blocksnoop.kernel.syscalls import syscall_name
from otel_blocksnoop.process.target import thread_syscall
from tests.helpers import (
    BLOCKER,
    SIDECAR,
    WAIT_S,
    PipeLines,
    Sidecar,
    Target,
    matching_block,
    parse_json_lines,
    run_sidecar,
    truth,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

HANG = '"type":"hang"'


def records_of(lines: PipeLines, rest: str) -> list[dict[str, Any]]:
    return parse_json_lines("\n".join([*lines.seen, rest]))


def assert_stuck_in_deadlock(record: dict[str, Any]) -> None:
    assert record["call_site"]["function"] == "deadlock", record["call_site"]
    assert "lock.acquire(timeout=seconds)" in record["stack"][-1]["source"]
    assert (record["cause"], record["syscall"]) == ("syscall", "futex")


@pytest.fixture
def launched() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_deadlocked_loop_is_reported_while_stuck_and_again_when_it_ends(
    tmp_path: Path,
) -> None:
    # GIVEN an app whose loop takes a lock it already holds, for 1.5 s
    out = tmp_path / "truth.jsonl"
    run = run_sidecar(
        "--json", "-q", "-t", "100", "--", sys.executable, str(BLOCKER), "deadlock",
        "--ms", "1500", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (stuck,) = truth(out)
    block = matching_block(run.blocks, stuck)
    hangs = [r for r in run.records if r["type"] == "hang"]
    # THEN it was reported while stuck: first soon after the threshold, then
    # again after a second, each time with the stack and the cause so far
    assert [round(h["start_monotonic_ns"] - stuck["start_ns"], -7) for h in hangs] == [0, 0]
    assert hangs[0]["duration_ms"] < hangs[1]["duration_ms"] < block["duration_ms"]
    assert hangs[1]["duration_ms"] >= 1000
    for record in [*hangs, block]:
        assert_stuck_in_deadlock(record)
    assert all(h["end_reason"] is None for h in hangs)
    # AND the final block is the whole of it, ended by the loop coming back
    assert block["end_reason"] == "returned"
    assert abs(block["duration_ms"] * 1e6 - (stuck["end_ns"] - stuck["start_ns"])) < 5e6
    assert run.summary["blocks"] == 1


def test_a_hung_app_that_is_killed_still_gets_its_block(
    tmp_path: Path, launched: list[subprocess.Popen[str]]
) -> None:
    # GIVEN a launched app stuck in a deadlock that would last a minute
    sidecar = subprocess.Popen(
        [*SIDECAR, "--json", "-t", "100", "--", sys.executable, str(BLOCKER), "deadlock",
         "--ms", "60000", "--out", str(tmp_path / "truth.jsonl")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    launched.append(sidecar)
    assert sidecar.stdout is not None
    lines = PipeLines(sidecar.stdout)
    hang = json.loads(lines.wait_for(HANG))
    # WHEN it is killed during the hang
    subprocess.run(["kill", "-KILL", str(hang["pid"])], check=True)
    # THEN the sidecar reports the block as ended by the thread's exit, and
    # exits as the app did
    assert sidecar.wait(timeout=WAIT_S) == 128 + signal.SIGKILL
    records = records_of(lines, lines.rest())
    (block,) = [r for r in records if r["type"] == "block"]
    assert block["end_reason"] == "thread_exited"
    assert block["duration_ms"] > hang["duration_ms"]
    assert_stuck_in_deadlock(block)


def test_stopping_the_sidecar_during_a_hang_reports_the_block_so_far(tmp_path: Path) -> None:
    # GIVEN a sidecar attached to an app that then hangs for a minute
    target = Target(tmp_path, "deadlock", "--ms", "60000")
    try:
        sidecar = Sidecar("-t", "100", str(target.pid))
        assert sidecar.process.stdout is not None
        lines = PipeLines(sidecar.process.stdout)
        target.go()
        hang = json.loads(lines.wait_for(HANG))
        # WHEN the sidecar is told to stop while the loop is still stuck
        sidecar.process.send_signal(signal.SIGTERM)
        assert sidecar.process.wait(timeout=WAIT_S) == 0
        # THEN the block is reported, ended by the stop, and counted
        records = records_of(lines, lines.rest())
        (block,) = [r for r in records if r["type"] == "block"]
        assert block["end_reason"] == "sidecar_stopped"
        assert block["duration_ms"] > hang["duration_ms"]
        assert_stuck_in_deadlock(block)
        assert records[-1]["type"] == "summary"
        assert records[-1]["blocks"] == 1
    finally:
        target.stop()


@pytest.mark.parametrize("stacks", ["stacks", "no-stacks"])
def test_a_thread_that_left_its_loop_for_good_is_not_a_hang(tmp_path: Path, stacks: str) -> None:
    # GIVEN an app that blocks once, ends its loop, then works 1.5 s without one;
    # watched without stacks too, where only the kernel's books (the loop's epoll
    # fd closed) tell that no loop runs
    out = tmp_path / "truth.jsonl"
    extra = ["--no-stacks"] if stacks == "no-stacks" else []
    run = run_sidecar(
        "--json", "-q", "-t", "100", *extra, "--", sys.executable, str(BLOCKER), "sleep",
        "--after", "1.5", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # THEN only the real block is reported: no hang, and no block at exit
    assert [r["type"] for r in run.records] == ["block", "summary"]
    matching_block(run.blocks, truth(out)[0])


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_time_between_two_loops_of_a_thread_is_not_a_block(tmp_path: Path, loop: str) -> None:
    # GIVEN an app whose main thread runs a loop that blocks once, works 0.6 s without
    # a loop (plain code, as between two asyncio.run calls or two tests), then runs
    # a new loop that blocks once more
    out = tmp_path / "truth.jsonl"
    extra = ["--uvloop"] if loop == "uvloop" else []
    run = run_sidecar(
        "--json", "-q", "-t", "100", "--", sys.executable, str(BLOCKER), "sleep",
        "--after", "0.6", "--again", "--out", str(out), *extra,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # THEN the two real blocks are reported, each once, and nothing for the time
    # between the loops (the first loop closed its epoll fd: no loop was held up)
    expected = truth(out)
    assert len(expected) == 2
    assert [r["type"] for r in run.records] == ["block", "block", "summary"], run.records
    for true_block in expected:
        matching_block(run.blocks, true_block)


def test_a_loop_that_takes_long_to_close_is_not_a_block(tmp_path: Path) -> None:
    # GIVEN an app that blocks once, then whose loop takes 600 ms of CPU to close
    # after asyncio.run's last iteration (what a busy machine does to a teardown)
    out = tmp_path / "truth.jsonl"
    run = run_sidecar(
        "--json", "-q", "-t", "100", "--", sys.executable, str(BLOCKER), "sleep",
        "--close-ms", "600", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # THEN only the real block is reported: no hang while it closes, no block at exit
    assert [r["type"] for r in run.records] == ["block", "summary"]
    matching_block(run.blocks, truth(out)[0])


def wait_in_syscall(pid: int, tid: int, *names: str, timeout: float = WAIT_S) -> None:
    """Until the kernel says thread ``tid`` sleeps in one of the syscalls ``names``."""
    deadline = time.monotonic() + timeout
    while (nr := thread_syscall(pid, tid)) is None or syscall_name(nr) not in names:
        assert time.monotonic() < deadline, f"thread {tid} not in {names} within {timeout} s"
        time.sleep(0.01)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_loop_already_hung_at_attach_is_reported_at_once_with_its_stack(
    tmp_path: Path, loop: str
) -> None:
    # GIVEN an app whose loop is stuck in a deadlock before any sidecar watches it
    extra = ["--uvloop"] if loop == "uvloop" else []
    target = Target(tmp_path, "deadlock", "--ms", "8000", "--linger", "0.2", *extra)
    try:
        target.go()
        wait_in_syscall(target.pid, target.main_tid, "futex")
        # WHEN the sidecar attaches
        sidecar = Sidecar("-t", "100", str(target.pid))
        assert sidecar.process.stdout is not None
        lines = PipeLines(sidecar.process.stdout)
        attached_ns = time.monotonic_ns()
        # THEN the hang is reported soon, with its stack and cause, said to have
        # begun before watching (its start is when watching began)
        hang = json.loads(lines.wait_for(HANG))
        assert hang["tid"] == target.main_tid
        assert_stuck_in_deadlock(hang)
        assert hang["started_before_watch"] is True
        assert hang["start_monotonic_ns"] <= attached_ns
        # AND when the loop comes back, the block ends as any block does
        block = json.loads(lines.wait_for('"type":"block"'))
        (stuck,) = truth(target.out)
        assert block["start_monotonic_ns"] == hang["start_monotonic_ns"] > stuck["start_ns"]
        assert abs(block["end_monotonic_ns"] - stuck["end_ns"]) < 5e6
        assert block["end_reason"] == "returned"
        assert block["started_before_watch"] is True
        assert_stuck_in_deadlock(block)
        sidecar.process.send_signal(signal.SIGTERM)
        code, rest = sidecar.finish()
        assert code == 0
        assert rest[-1]["type"] == "summary"
        assert rest[-1]["blocks"] == 1
    finally:
        target.stop()


def test_an_idle_loop_at_attach_is_not_taken_for_a_blocked_one(tmp_path: Path) -> None:
    # GIVEN an app whose loop idles in epoll, and a second loop thread that idles too
    target = Target(tmp_path, "two-threads", "--ms", "150")
    try:
        for tid in [target.main_tid, *target.loop_tids]:
            wait_in_syscall(target.pid, tid, *EPOLL_SYSCALLS)
        # WHEN the sidecar attaches, then the app blocks its loops once each
        sidecar = Sidecar("-t", "100", str(target.pid))
        target.go()
        assert target.process.wait(timeout=WAIT_S) == 0
        code, records = sidecar.finish()
        # THEN only the real blocks are reported, none said to predate watching
        assert code == 0
        blocks = [r for r in records if r["type"] in ("block", "hang")]
        assert [b["type"] for b in blocks] == ["block", "block"], blocks
        for stuck in truth(target.out):
            assert matching_block(blocks, stuck)["started_before_watch"] is False
    finally:
        target.stop()
