#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""How soon a deadlocked loop is reported while it is stuck.

Launches harness/targets/blocker.py's ``deadlock`` scenario (the loop takes a
lock it already holds, for --ms) under ``otel-blocksnoop --json -t T`` and
reads the first ``hang`` record's ``duration_ms``: how long the loop had
been stuck when it was first reported. Goal (issue 3): within T + 200 ms.

USAGE: hang_latency.py [--runs N] [--threshold MS]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from blocksnoop_bench.procs import REPO

from harness import TARGETS
from otel_blocksnoop.cli import positive_int

STUCK_MS = 600


def first_report_ms(threshold_ms: int) -> float | None:
    result = subprocess.run(
        [sys.executable, "-m", "otel_blocksnoop", "--json", "-q", "-t", str(threshold_ms), "--",
         sys.executable, str(TARGETS / "blocker.py"), "deadlock",
         "--ms", str(STUCK_MS), "--out", "/dev/null"],
        capture_output=True, text=True, check=False, timeout=120, cwd=REPO,
    )  # fmt: skip
    hangs = [
        record["duration_ms"]
        for record in map(json.loads, result.stdout.splitlines())
        if record["type"] == "hang"
    ]
    return hangs[0] if hangs else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/hang_latency.py", description=__doc__)
    parser.add_argument("--runs", type=positive_int, default=6)
    parser.add_argument("--threshold", type=positive_int, default=100, metavar="MS")
    args = parser.parse_args(argv)
    firsts = [first_report_ms(args.threshold) for _ in range(args.runs)]
    seen = [ms for ms in firsts if ms is not None]
    print(f"threshold {args.threshold} ms, {args.runs} runs, loop stuck {STUCK_MS} ms")
    print(f"first hang report at (ms): {', '.join(f'{ms:.0f}' for ms in seen)}")
    if seen:
        print(
            f"median {statistics.median(seen):.0f} ms, max {max(seen):.0f} ms; "
            f"goal: within {args.threshold + 200} ms; runs with no report: {firsts.count(None)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
