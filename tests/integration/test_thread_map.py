"""The kernel's thread table, as the sidecar reads it with the GIL held, against BCC's own read."""

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


def test_the_thread_table_read_key_by_key_matches_bccs_read() -> None:
    # GIVEN the detector loaded, watching a loop that idles in epoll and one blocked
    detector = Detector(DetectorConfig(threshold_ns=10 * NS_PER_MS, activity=False))
    detector.load()
    apps = [subprocess.Popen([sys.executable, "-c", code]) for code in (IDLE_LOOP, BLOCKED_LOOP)]
    try:
        for app in apps:
            detector.watch(app.pid)
        bcc_table = detector._bpf["threads"]  # noqa: SLF001 (the reference read)
        deadline = time.monotonic() + 10
        while len(bcc_table.items()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)

        # WHEN both reads are taken
        ours = {tid: state.left_epoll_ns for tid, state in detector._threads.items()}  # type: ignore[union-attr]  # noqa: SLF001
        theirs = {key.value: state.left_epoll_ns for key, state in bcc_table.items()}

        # THEN they hold the same threads and times, and say who is out of epoll
        assert set(ours) == set(theirs) == {app.pid for app in apps}
        assert ours == theirs
        idle, blocked = (app.pid for app in apps)
        assert detector.out_since(idle) == 0
        assert detector.out_since(blocked) == theirs[blocked] > 0
        assert detector.out_since(1) == 0  # not in the table
    finally:
        for app in apps:
            app.kill()
            app.wait()
        detector.close()
