#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""The child of ``bench/rss.py hold``: hold the loaded detector, watching one PID, until told.

USAGE: rss_hold.py PID [--imports]

Loads as the sidecar does (``Detector.load()``: BCC in a compiler process
that exits, the maps and programs held here by their fds). ``--imports``
first imports what the sidecar imports (our stages, the OTel SDK, both OTLP
exporters), as the sidecar with export on holds them.

Prints one JSON line once attached and watching: the load time in seconds
(from before starting the compiler process to attached), this process's peak
RSS so far (VmHWM, KiB) and its largest child's (the compiler's ru_maxrss),
and whether bcc was imported here. Then it drains the ring buffer until
stdin closes.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time


def vm_hwm_kib() -> int:
    """Peak RSS of our own memory (ru_maxrss would count the parent's, from before our exec)."""
    with open("/proc/self/status") as status:  # noqa: PTH123 - no pathlib import for one read
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main(argv: list[str]) -> int:
    pid = int(argv[0])
    if "--imports" in argv:
        import opentelemetry.exporter.otlp.proto.grpc.metric_exporter  # noqa: PLC0415
        import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: PLC0415
        import opentelemetry.exporter.otlp.proto.http.metric_exporter  # noqa: PLC0415
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: PLC0415, F401

        import otel_blocksnoop.session  # noqa: PLC0415, F401

    from otel_blocksnoop.events import NS_PER_MS  # noqa: PLC0415
    from otel_blocksnoop.kernel.detector import Detector  # noqa: PLC0415
    from otel_blocksnoop.kernel.program import DetectorConfig  # noqa: PLC0415

    stop = threading.Event()
    started = time.monotonic()
    detector = Detector(DetectorConfig(threshold_ns=10 * NS_PER_MS))
    detector.load()
    detector.watch(pid)
    load_s = time.monotonic() - started
    print(
        json.dumps(
            {
                "load_s": load_s,
                "peak_kib": vm_hwm_kib(),
                "child_peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                "bcc": "bcc" in sys.modules,
            }
        ),
        flush=True,
    )

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    while not stop.is_set():
        detector.poll(100)
    detector.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
