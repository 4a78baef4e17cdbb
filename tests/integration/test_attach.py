"""Attach mode, signals and thread selection, against running processes."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import TARGETS
from tests.helpers import (
    BLOCKER,
    SIDECAR,
    WAIT_S,
    PipeLines,
    Sidecar,
    Target,
    matching_block,
    parse_json_lines,
    truth,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for thing in started:
        if isinstance(thing, Target):
            thing.stop()
        elif thing.process.poll() is None:
            thing.process.kill()
            thing.process.wait()


def test_attach_reports_blocks_and_stops_when_the_target_exits(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    # GIVEN a running asyncio app and the sidecar attached to its PID
    target = Target(tmp_path, "all")
    cleanup.append(target)
    sidecar = Sidecar("-t", "50", str(target.pid))
    cleanup.append(sidecar)
    # WHEN the app blocks seven ways and then exits
    target.go()
    target.process.wait(timeout=WAIT_S)
    # THEN the sidecar stops by itself, having reported every block
    code, records = sidecar.finish()
    assert code == 0
    blocks = [r for r in records if r["type"] == "block"]
    expected = truth(target.out)
    assert len(expected) == 7
    for true_block in expected:
        matching_block(blocks, true_block)
    assert records[-1]["type"] == "summary"
    assert records[-1]["blocks"] == 7


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_block_just_detected_survives_a_stop_signal(
    tmp_path: Path, cleanup: list[Any], signum: int
) -> None:
    # GIVEN the sidecar attached to an app that blocks once, then idles
    target = Target(tmp_path, "sleep", "--linger", "30")
    cleanup.append(target)
    sidecar = Sidecar("-t", "50", str(target.pid))
    cleanup.append(sidecar)
    target.go()
    deadline = time.monotonic() + WAIT_S
    while not truth(target.out) and time.monotonic() < deadline:
        select.select([], [], [], 0.01)
    # WHEN the sidecar is told to stop right after the block ended
    sidecar.process.send_signal(signum)
    code, records = sidecar.finish()
    # THEN it exits cleanly and the block is in its output, then the summary
    assert code == 0
    (true_block,) = truth(target.out)
    matching_block([r for r in records if r["type"] == "block"], true_block)
    assert records[-1]["type"] == "summary"
    assert target.process.poll() is None, "the watched app must keep running"


def test_tid_narrows_to_one_thread(tmp_path: Path, cleanup: list[Any]) -> None:
    # GIVEN an app with two loop threads, each about to block once
    target = Target(tmp_path, "two-threads")
    cleanup.append(target)
    first, second = target.loop_tids
    # WHEN the sidecar watches only the first
    sidecar = Sidecar("-t", "50", "--tid", str(first), str(target.pid))
    cleanup.append(sidecar)
    target.go()
    target.process.wait(timeout=WAIT_S)
    _, records = sidecar.finish()
    # THEN the first thread's block is reported and the second's is not
    blocks = [r for r in records if r["type"] == "block"]
    expected = {r["tid"]: r for r in truth(target.out)}
    assert set(expected) == {first, second}
    matching_block(blocks, expected[first])
    assert {b["tid"] for b in blocks} == {first}


@pytest.fixture(scope="module")
def native_poller(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("native") / "libpoller.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-pthread", "-o", str(lib), str(TARGETS / "native_poller.c")],
        check=True,
    )
    return lib


def test_native_epoll_threads_are_not_reported_as_loops(
    tmp_path: Path, cleanup: list[Any], native_poller: Path
) -> None:
    # GIVEN an app with a native thread that polls epoll and works 150 ms
    # between polls, and whose own loop blocks once
    target = Target(tmp_path, "native", env={"NATIVE_POLLER": str(native_poller)})
    cleanup.append(target)
    sidecar = Sidecar("-t", "50", str(target.pid))
    cleanup.append(sidecar)
    target.go()
    target.process.wait(timeout=WAIT_S)
    _, records = sidecar.finish()
    # THEN only the loop's block is reported; the native thread is named in the summary
    blocks = [r for r in records if r["type"] == "block"]
    (true_block,) = truth(target.out)
    matching_block(blocks, true_block)
    assert len(blocks) == 1
    summary = records[-1]
    assert summary["ignored_blocks"] >= 3
    assert [t["thread_kind"] for t in summary["ignored_threads"]] == ["native"]


def test_all_threads_reports_the_native_poller_too(
    tmp_path: Path, cleanup: list[Any], native_poller: Path
) -> None:
    target = Target(tmp_path, "native", env={"NATIVE_POLLER": str(native_poller)})
    cleanup.append(target)
    sidecar = Sidecar("-t", "50", "--all-threads", str(target.pid))
    cleanup.append(sidecar)
    target.go()
    target.process.wait(timeout=WAIT_S)
    _, records = sidecar.finish()
    blocks = [r for r in records if r["type"] == "block"]
    assert len({b["tid"] for b in blocks}) == 2
    assert len(blocks) >= 4


def test_several_pids_are_watched_until_the_last_one_exits(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    # GIVEN two running apps and one sidecar attached to both
    first = Target(tmp_path / "a", "sleep")
    second = Target(tmp_path / "b", "cpu", "--linger", "0.5")
    cleanup.extend([first, second])
    sidecar = Sidecar("-t", "50", str(first.pid), str(second.pid))
    cleanup.append(sidecar)
    # WHEN both block once and exit
    first.go()
    second.go()
    first.process.wait(timeout=WAIT_S)
    second.process.wait(timeout=WAIT_S)
    code, records = sidecar.finish()
    # THEN both blocks are reported under their own PID, and the sidecar stopped by itself
    assert code == 0
    blocks = [r for r in records if r["type"] == "block"]
    for target in (first, second):
        (true_block,) = truth(target.out)
        assert matching_block(blocks, true_block)["pid"] == target.pid


def test_sigterm_in_launch_mode_reaches_the_command_and_keeps_its_blocks(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    # GIVEN a launched app that blocks once, then idles for a long time
    out = tmp_path / "truth.jsonl"
    process = subprocess.Popen(
        [*SIDECAR, "--json", "-t", "50", "--", sys.executable, str(BLOCKER), "sleep",
         "--linger", "60", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    sidecar = Sidecar.__new__(Sidecar)
    sidecar.process = process
    cleanup.append(sidecar)
    assert process.stdout is not None
    stdout_lines = PipeLines(process.stdout)
    first = stdout_lines.wait_for('"type":"block"')
    # WHEN the sidecar gets SIGTERM
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=WAIT_S)
    stdout = first + "\n" + stdout_lines.rest()
    # THEN the app got it too, the sidecar exits with the app's status, and the block was reported
    assert process.returncode == 128 + signal.SIGTERM
    (true_block,) = truth(out)
    records = parse_json_lines(stdout)
    assert records[-1]["type"] == "summary"
    assert records[-1]["blocks"] == 1
    matching_block([r for r in records if r["type"] == "block"], true_block)
