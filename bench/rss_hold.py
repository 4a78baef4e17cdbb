#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""The child of ``bench/rss.py hold``: hold the loaded detector, watching one PID, until told.

USAGE: rss_hold.py bcc|loader PID [--imports]

``bcc``: ``Detector.load()`` as the sidecar does today (BCC in this process).
``loader``: ``kernel.loader.load()`` (BCC in a child that exits), the same
tracepoints attached here, the ring buffer mapped here. ``--imports`` first
imports what the sidecar imports (our stages, the OTel SDK, both OTLP
exporters), as the sidecar with export on holds them.

Prints one JSON line once attached and watching: the load time in seconds
(from before ``import bcc`` / before starting the child to attached), this
process's peak RSS so far (VmHWM, KiB) and its largest child's (the
compiler's ru_maxrss). Then
it drains the ring buffer until stdin closes.
"""

from __future__ import annotations

import ctypes
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
    how, pid = argv[0], int(argv[1])
    if "--imports" in argv:
        import opentelemetry.exporter.otlp.proto.grpc.metric_exporter  # noqa: PLC0415
        import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: PLC0415
        import opentelemetry.exporter.otlp.proto.http.metric_exporter  # noqa: PLC0415
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: PLC0415, F401

        import otel_blocksnoop.session  # noqa: PLC0415, F401

    from otel_blocksnoop.events import NS_PER_MS  # noqa: PLC0415
    from otel_blocksnoop.kernel.program import DetectorConfig  # noqa: PLC0415

    config = DetectorConfig(threshold_ns=10 * NS_PER_MS)
    stop = threading.Event()
    started = time.monotonic()
    if how == "bcc":
        from otel_blocksnoop.kernel.detector import Detector  # noqa: PLC0415

        detector = Detector(config)
        detector.load()
        detector.watch(pid)

        def poll() -> None:
            detector.poll(100)

        close = detector.close
    else:
        from otel_blocksnoop.kernel import loader  # noqa: PLC0415
        from otel_blocksnoop.kernel.constants import WATCH_ROOT  # noqa: PLC0415
        from otel_blocksnoop.kernel.detector import EPOLL_SYSCALLS  # noqa: PLC0415
        from otel_blocksnoop.kernel.layout import WatchStateC  # noqa: PLC0415
        from otel_blocksnoop.kernel.tracepoints import tracepoint_exists  # noqa: PLC0415

        program = loader.load(config)
        pairs = [
            (function, f"syscalls:sys_{side}_{name}")
            for name in EPOLL_SYSCALLS
            if tracepoint_exists("syscalls", f"sys_enter_{name}")
            for function, side in (("on_epoll_enter", "enter"), ("on_epoll_exit", "exit"))
        ]
        program.attach(pairs)
        program.ring_buffer("events", lambda _raw: None)
        watched = program.map("watched")
        watched.update(bytes(ctypes.c_uint32(pid)), bytes(WatchStateC(how=WATCH_ROOT)))

        def poll() -> None:
            program.poll(100)

        close = program.close
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
        poll()
    close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
