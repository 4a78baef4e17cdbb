"""The kernel's thread table, as the sidecar reads it: who is out of epoll, and since when."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from otel_blocksnoop.events import NS_PER_MS
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
