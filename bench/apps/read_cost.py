# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Times the sidecar's context reads of another process's threads, in a process of its own.

Runs on the sidecar's interpreter with otel_blocksnoop importable, so a
read costs here what it costs the sidecar's trace-link thread, and nothing
else of the benchmark's runs in the same process (its threads would hold the
GIL now and then and show up in the tail). Builds one ``ContextReader(PID)``
and calls it N times per TID, the TIDs in turn, after a warm-up; each call is
timed with ``time.perf_counter_ns``. The call timed is the reader's public
per-thread read: ``thread_context(tid)`` or ``read(tid)`` when the reader has
one, else ``active_span(tid)``. Prints one JSON object: {"method",
"unsupported", "threads": {TID: {"ns": [...], "reads_per_call", "span":
[trace_id, span_id] or null}}}.

USAGE: read_cost.py PID TID [TID ...] [--calls N] [--warmup N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from otel_blocksnoop.process.context import ContextReader

METHODS = ("thread_context", "read")
"""Newer names of the per-thread read, preferred when the reader has them."""


def timed_method(reader: ContextReader) -> tuple[str, Callable[[int], Any]]:
    """The reader's public per-thread read, by the newest name it has."""
    for name in METHODS:
        method = getattr(reader, name, None)
        if callable(method):
            return name, method
    return "active_span", reader.active_span


def main() -> None:
    """Read, time, and print the timings as JSON on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("pid", type=int)
    parser.add_argument("tids", type=int, nargs="+")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    reader = ContextReader(args.pid)
    name, method = timed_method(reader)
    result: dict[str, Any] = {"method": name, "unsupported": reader.unsupported, "threads": {}}
    timings: dict[int, list[int]] = {tid: [] for tid in args.tids}
    reads: dict[int, int] = dict.fromkeys(args.tids, 0)
    for _ in range(args.warmup):
        for tid in args.tids:
            method(tid)
    for _ in range(args.calls):
        for tid in args.tids:
            before = reader.reads
            started = time.perf_counter_ns()
            method(tid)
            timings[tid].append(time.perf_counter_ns() - started)
            reads[tid] += reader.reads - before
    for tid in args.tids:
        span = reader.active_span(tid)
        result["threads"][str(tid)] = {
            "ns": timings[tid],
            "reads_per_call": reads[tid] / args.calls,
            "span": [span.trace_id, span.span_id] if span is not None else None,
        }
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
