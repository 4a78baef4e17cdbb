"""The kernel's thread table, as the sidecar reads it: who is out of epoll, and since when."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from otel_blocksnoop.events import NS_PER_MS
from otel_blocksnoop.kernel.constants import OFF_RUNQ
from otel_blocksnoop.kernel.detector import Detector
from otel_blocksnoop.kernel.program import DetectorConfig

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

IDLE_LOOP = "import asyncio; asyncio.run(asyncio.sleep(30))"
BLOCKED_LOOP = "import asyncio, time\nasync def main():\n    time.sleep(30)\nasyncio.run(main())"


def test_the_thread_table_says_which_loop_is_out_of_epoll() -> None:
    # GIVEN the detector loaded, watching a loop that idles in epoll and one blocked
    detector = Detector(DetectorConfig(threshold_ns=10 * NS_PER_MS, activity=False))
    detector.load()
    apps = [subprocess.Popen([sys.executable, "-c", code]) for code in (IDLE_LOOP, BLOCKED_LOOP)]
    try:
        for app in apps:
            detector.watch(app.pid)
        deadline = time.monotonic() + 10
        while len(detector.snapshot(0).times) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)

        # WHEN the table is read
        snapshot = detector.snapshot(0)
        now = time.monotonic_ns()

        # THEN it holds both loop threads, and only the blocked one is out of epoll
        assert {times.tid for times in snapshot.times} == {app.pid for app in apps}
        idle, blocked = (app.pid for app in apps)
        assert [block.tid for block in snapshot.ongoing] == [blocked]
        assert detector.out_since(idle) == 0
        assert 0 < detector.out_since(blocked) == snapshot.ongoing[0].start_ns < now
        assert detector.out_since(1) == 0  # not in the table
    finally:
        for app in apps:
            app.kill()
            app.wait()
        detector.close()


ADOPT_TRIES = 5


def schedstat(pid: int) -> tuple[int, int]:
    """The kernel's own totals for ``pid``: (time on CPU, time waiting in a run queue)."""
    on_cpu, waited, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(on_cpu), int(waited)


def run_delay_ns(pid: int) -> int:
    """Its run-queue total once it ran again: a wait in progress is counted when it ends."""
    ran, _ = schedstat(pid)
    deadline = time.monotonic() + 10
    while (now := schedstat(pid))[0] == ran:
        assert time.monotonic() < deadline, "the thread did not run"
        time.sleep(0.001)
    return now[1]


def test_a_thread_seen_running_while_its_books_say_preempted_is_booked_on_cpu_from_then() -> None:
    # GIVEN the detector with its books and ticks, and a thread that runs on CPU without end
    detector = Detector(DetectorConfig(threshold_ns=10 * NS_PER_MS, trigger_ns=20 * NS_PER_MS))
    detector.load()
    app = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        detector.watch(app.pid)
        # WHEN its books say it waits for a CPU while it runs: how a switch back on
        # CPU that was never reported leaves them (and an adoption that raced one)
        for _ in range(ADOPT_TRIES):
            _, waited_before = schedstat(app.pid)
            start = detector.adopt(app.pid, app.pid, OFF_RUNQ)
            assert start is not None
            deadline = time.monotonic() + 2
            while detector.counters().unseen_switches == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            if detector.counters().unseen_switches:
                break
            # it did wait for a CPU when adopted, and its switch back was reported: again
            detector.disown(app.pid, start)
        else:
            pytest.fail(
                f"the thread was never seen running while booked off CPU ({ADOPT_TRIES} tries)"
            )
        deadline = time.monotonic() + 10
        while True:
            block = detector.ongoing(app.pid)
            assert block is not None
            assert block.activity is not None
            if block.activity.on_cpu_ns + block.activity.runq_ns >= 300 * NS_PER_MS:
                break
            assert time.monotonic() < deadline, block
            time.sleep(0.02)
        waited = run_delay_ns(app.pid) - waited_before

        # THEN a tick that finds it running closes the wait there: what is booked
        # in the run queue is its real wait, give or take one tick, not its time on CPU
        tick_ns = detector.config.tick_ns
        assert block.activity.runq_ns <= waited + tick_ns + 2 * NS_PER_MS, (block, waited)
    finally:
        app.kill()
        app.wait()
        detector.close()
