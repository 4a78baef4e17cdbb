"""Node mode's bookkeeping: processes attached as found, let go after their blocks, a cap."""

from __future__ import annotations

import logging
import select
import subprocess
from collections.abc import Iterator

import pytest

from otel_blocksnoop import node as node_module
from otel_blocksnoop.node import TRIM_EVERY_S, NodeWatch
from otel_blocksnoop.process.target import TargetInfo

WAIT_S = 10.0


class FakeFinder:
    """Hands out the processes put in ``next``; remembers what it was told to forget."""

    def __init__(self) -> None:
        self.next: list[int] = []
        self.forgotten: list[int] = []

    def scan(self) -> list[TargetInfo]:
        found, self.next = self.next, []
        return [
            TargetInfo(pid=pid, exe="/usr/bin/python3", cmdline="python3 app.py") for pid in found
        ]

    def forget(self, pid: int) -> None:
        self.forgotten.append(pid)


class FakeStages:
    def __init__(self) -> None:
        self.attached: list[tuple[int, bool]] = []
        self.released: list[int] = []
        self.holding: set[int] = set()

    def attach(self, target: TargetInfo, *, running: bool) -> None:
        self.attached.append((target.pid, running))

    def holds(self, pid: int) -> bool:
        return pid in self.holding

    def release(self, pid: int) -> None:
        self.released.append(pid)

    def held(self) -> dict[str, int]:
        return {"things": len(self.attached) - len(self.released)}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    yield started
    for process in started:
        process.kill()
        process.wait()


def wait_exit_seen(node: NodeWatch) -> None:
    assert select.select([node], [], [], WAIT_S)[0] == [node]


def test_found_processes_are_attached_and_let_go_once_their_blocks_are_out(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    # GIVEN two processes running at start, and one that starts later
    finder, stages, clock = FakeFinder(), FakeStages(), Clock()
    node = NodeWatch(finder, stages, 10, clock=clock)
    first, second, third = (p.pid for p in sleepers)
    finder.next = [first, second]
    assert node.start() == 2
    finder.next = [third]
    clock.now += 1.0
    node.step()
    assert stages.attached == [(first, True), (second, True), (third, False)]
    # WHEN one exits while a block of it is still on its way
    stages.holding.add(first)
    sleepers[0].kill()
    sleepers[0].wait()
    wait_exit_seen(node)
    node.step()
    node.step()
    # THEN it is held until the block is out, then let go of, and its PID forgotten
    assert stages.released == []
    assert node.counts().watched == 3
    stages.holding.clear()
    clock.now += 0.2
    node.step()
    assert stages.released == [first]
    assert first in finder.forgotten
    counts = node.counts()
    assert (counts.found, counts.left, counts.watched) == (3, 1, 2)
    assert not node.exited()
    node.close()


def test_a_process_whose_blocks_never_go_out_is_let_go_after_a_bound(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    finder, stages, clock = FakeFinder(), FakeStages(), Clock()
    node = NodeWatch(finder, stages, 10, clock=clock)
    finder.next = [sleepers[0].pid]
    node.start()
    stages.holding.add(sleepers[0].pid)
    sleepers[0].kill()
    sleepers[0].wait()
    wait_exit_seen(node)
    node.step()
    clock.now += 11.0
    node.step()
    assert stages.released == [sleepers[0].pid]
    node.close()


def test_past_the_cap_processes_are_counted_once_warned_of_once_and_taken_when_room_comes(
    sleepers: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a cap of one and three processes found
    finder, stages, clock = FakeFinder(), FakeStages(), Clock()
    node = NodeWatch(finder, stages, 1, clock=clock)
    first, second, third = (p.pid for p in sleepers)
    finder.next = [first, second, third]
    with caplog.at_level(logging.WARNING):
        node.start()
        # WHEN the scans find the two refused ones again
        for _ in range(3):
            clock.now += 1.0
            finder.next = [second, third]
            node.step()
    # THEN one is watched, two are counted once each, with one warning
    assert stages.attached == [(first, True)]
    assert node.counts().over_cap == 2
    assert len([r for r in caplog.records if "--max-processes" in r.getMessage()]) == 1
    # AND once the watched one exits, the next scan takes one of them
    sleepers[0].kill()
    sleepers[0].wait()
    wait_exit_seen(node)
    node.step()
    clock.now += 1.0
    finder.next = [second, third]
    node.step()
    assert stages.attached[-1] == (second, False)
    assert node.counts().watched == 1
    node.close()


def test_a_process_gone_before_it_is_watched_is_not_attached() -> None:
    finder, stages = FakeFinder(), FakeStages()
    gone = subprocess.Popen(["true"])
    gone.wait()
    node = NodeWatch(finder, stages, 10)
    finder.next = [gone.pid]
    assert node.start() == 0
    assert stages.attached == []
    assert finder.forgotten == [gone.pid]
    node.close()


def test_an_exit_is_let_go_of_at_a_later_step_than_the_one_that_saw_it(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    # GIVEN a watched process that exits, with nothing of it held
    finder, stages = FakeFinder(), FakeStages()
    node = NodeWatch(finder, stages, 10)
    finder.next = [sleepers[0].pid]
    node.start()
    sleepers[0].kill()
    sleepers[0].wait()
    wait_exit_seen(node)
    # WHEN the step that sees the exit runs, and then the next
    node.step()
    assert stages.released == []  # the flow has yet to take in the kernel's last events
    node.step()
    # THEN it is let go of at the second
    assert stages.released == [sleepers[0].pid]
    node.close()


def test_the_c_heap_is_trimmed_after_processes_are_let_go_at_most_once_a_period(
    sleepers: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN three processes watched, and the C heap's trim counted
    finder, stages, clock = FakeFinder(), FakeStages(), Clock()
    trims: list[float] = []
    monkeypatch.setattr(node_module, "_TRIM", lambda: trims.append(clock.now))
    node = NodeWatch(finder, stages, 10, clock=clock)
    finder.next = [p.pid for p in sleepers]
    node.start()
    node.step()
    assert trims == []  # nothing let go yet
    # WHEN one exits and is let go of
    sleepers[0].kill()
    sleepers[0].wait()
    wait_exit_seen(node)
    node.step()
    node.step()
    # THEN the heap is trimmed then
    assert stages.released == [sleepers[0].pid]
    assert trims == [clock.now]
    # WHEN another goes within the period
    sleepers[1].kill()
    sleepers[1].wait()
    wait_exit_seen(node)
    clock.now += 1.0
    node.step()
    node.step()
    # THEN it waits for the period's end, and after that nothing let go means no trim
    assert len(stages.released) == 2
    assert len(trims) == 1
    clock.now += TRIM_EVERY_S
    node.step()
    assert len(trims) == 2
    clock.now += TRIM_EVERY_S
    node.step()
    assert len(trims) == 2
    node.close()
