#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""What reading a blocked loop's ready queue (who waited) adds to a context read.

harness/targets/waiting_app.py --hold: N requests keep their next step ready
while one more blocks the loop for good (spinning), in its own span. The
loop thread is then read --reads times with ``ContextReader.thread_context``,
alone and followed by ``ready_work`` (first in a block, and again),
alternated; the median and p99 of each (microseconds of the sidecar's time)
and the remote reads per call are printed as a markdown table, per --waiters
value. Past MAX_CONTEXTS (24) contexts a read leaves the rest's requests
unread (counted), so the cost of a first read stops growing there.

USAGE: delayed_cost.py [--python PATH] [--waiters 0,3,16,64] [--reads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from otel_blocksnoop.process.context import ContextReader  # noqa: E402

APP = REPO / "harness" / "targets" / "waiting_app.py"
START_TIMEOUT_S = 30.0
MODES = ("without", "first", "again")
"""Each call's kind: no ready queue, the queue first in a block, again in the same block."""


def _held(python: str, waiters: int) -> tuple[subprocess.Popen[str], int]:
    """The app, blocked for good with ``waiters`` requests ready; and its loop thread."""
    app = subprocess.Popen(
        [python, str(APP), "--hold", "--waiters", str(waiters)],
        stdout=subprocess.PIPE,
        text=True,
    )
    if app.stdout is None:
        msg = "no pipe from the app"
        raise RuntimeError(msg)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = app.stdout.readline()
        if line.startswith("{"):
            return app, json.loads(line)["holding"]
    app.kill()
    msg = "the app never said it holds its loop"
    raise RuntimeError(msg)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(python: str, waiters: int, reads: int) -> dict[str, float]:
    app, tid = _held(python, waiters)
    try:
        reader = ContextReader(app.pid)
        if reader.unsupported:
            raise RuntimeError(reader.unsupported)
        modes = dict(zip(MODES, ((False, False), (True, False), (True, True)), strict=True))
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        calls: dict[str, list[int]] = {mode: [] for mode in modes}
        found = None
        for _ in range(reads):
            for mode, (ready, again) in modes.items():
                before = reader.reads
                start = time.perf_counter_ns()
                reader.thread_context(tid)
                if ready:
                    found = reader.ready_work(tid, again=again)
                times[mode].append((time.perf_counter_ns() - start) / 1000)
                calls[mode].append(reader.reads - before)
        if found is None or len(found.requests) + len(found.unread) != waiters:
            msg = f"the read found {found} with {waiters} waiting"
            raise RuntimeError(msg)
        return {
            **{f"{mode}_median_us": statistics.median(times[mode]) for mode in modes},
            **{f"{mode}_p99_us": _percentile(times[mode], 0.99) for mode in modes},
            **{f"{mode}_reads": statistics.median(calls[mode]) for mode in modes},
        }
    finally:
        app.kill()
        app.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the app's interpreter")
    parser.add_argument("--waiters", default="0,3,16,64")
    parser.add_argument("--reads", type=int, default=500)
    args = parser.parse_args()
    version = subprocess.run(
        [args.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    print(f"CPython {version}, {args.reads} reads each, alternated")
    print("| waiting requests | context read | with the ready queue, first in a block "
          "| again in the block | remote reads (each) |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: |")
    for waiters in (int(n) for n in args.waiters.split(",")):
        m = measure(args.python, waiters, args.reads)
        cells = [f"{m[f'{mode}_median_us']:.0f} / {m[f'{mode}_p99_us']:.0f} µs" for mode in MODES]
        reads = " / ".join(f"{m[f'{mode}_reads']:.0f}" for mode in MODES)
        print(f"| {waiters} | {' | '.join(cells)} | {reads} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
