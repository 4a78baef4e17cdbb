#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""The child of ``bench/rss.py steps``: import and load as the sidecar does, step by step.

After each step it prints one JSON line: the step, RSS and anonymous memory
(KiB, /proc/self/smaps_rollup) and the seconds the step took. Only the
standard library is imported before the first line.
"""

from __future__ import annotations

import json
import sys
import time


def say(step: str, started: float) -> None:
    took = time.monotonic() - started
    with open("/proc/self/smaps_rollup") as rollup:  # noqa: PTH123 - pathlib is an import too
        fields = {line.split()[0].rstrip(":"): line.split()[1] for line in list(rollup)[1:]}
    row = {"step": step, "rss": int(fields["Rss"]), "anon": int(fields["Anonymous"]), "s": took}
    print(json.dumps(row), flush=True)


def main() -> int:
    # Each import is measured on its own, in the order the sidecar meets them.
    say("python", time.monotonic())
    started = time.monotonic()
    import otel_blocksnoop.session  # noqa: PLC0415, F401

    say("+ otel_blocksnoop.session (OTel SDK, API, our stages)", started)
    started = time.monotonic()
    import opentelemetry.exporter.otlp.proto.http.metric_exporter  # noqa: PLC0415
    import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: PLC0415

    say("+ OTLP/HTTP exporters (protobuf)", started)
    started = time.monotonic()
    import opentelemetry.exporter.otlp.proto.grpc.metric_exporter  # noqa: PLC0415
    import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: PLC0415, F401

    say("+ OTLP/gRPC exporters (grpc)", started)
    from otel_blocksnoop.events import NS_PER_MS  # noqa: PLC0415
    from otel_blocksnoop.kernel.detector import Detector  # noqa: PLC0415
    from otel_blocksnoop.kernel.program import DetectorConfig  # noqa: PLC0415

    started = time.monotonic()
    detector = Detector(DetectorConfig(threshold_ns=10 * NS_PER_MS))
    detector.load()
    say("+ Detector.load(): compiled by a child; attach, ring buffer here", started)
    started = time.monotonic()
    detector.close()
    say("+ Detector.close()", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
