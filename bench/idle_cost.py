#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""What the sidecar costs while the watched app idles, mode by mode.

Starts an asyncio app that only awaits ``asyncio.sleep(0.5)``, attaches the
sidecar with each mode's flags at the given threshold, lets it settle, then reads
the CPU time of the sidecar and of its Austin children over a window
(``procs.cpu_times``: /proc/PID/stat, live and reaped children). One line per mode, % of one core.

``--app`` watches another app instead (e.g. apps/gil_app.py, a loop that
waits for the GIL in every iteration).

USAGE: idle_cost.py [--seconds S] [--settle S] [--threshold MS] [--mode NAME ...] [--app PY]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from blocksnoop_bench.procs import REPO, cpu_times

from otel_blocksnoop.cli import positive_int

MODES = {
    "default": ("default (stacks, cause, trace links)", ()),
    "no-trace-link": ("--no-trace-link", ("--no-trace-link",)),
    "no-stacks": ("--no-stacks", ("--no-stacks",)),
    "bare": (
        "--no-stacks --no-cause --no-trace-link",
        ("--no-stacks", "--no-cause", "--no-trace-link"),
    ),
}
"""Modes by the name ``--mode`` takes: (what the table says, the sidecar's flags)."""
IDLE_APP = (
    "import asyncio\nasync def m():\n    while True: await asyncio.sleep(0.5)\nasyncio.run(m())"
)


def measure(
    flags: tuple[str, ...], threshold_ms: int, seconds: int, settle: int, app_path: str | None
) -> tuple[float, float]:
    """(sidecar, its children) CPU in % of one core while the app idles (or runs ``app_path``)."""
    app = subprocess.Popen([sys.executable, *([app_path] if app_path else ["-c", IDLE_APP])])
    sidecar = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otel_blocksnoop",
            "-q",
            "-t",
            str(threshold_ms),
            *flags,
            str(app.pid),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(settle)
        before = cpu_times(sidecar.pid)
        time.sleep(seconds)
        return cpu_times(sidecar.pid).percent_since(before)
    finally:
        sidecar.terminate()
        sidecar.wait()
        app.kill()
        app.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/idle_cost.py", description=__doc__)
    parser.add_argument("--seconds", type=positive_int, default=30)
    parser.add_argument("--settle", type=positive_int, default=6)
    parser.add_argument("--threshold", type=positive_int, default=100, metavar="MS")
    parser.add_argument(
        "--mode", choices=MODES, action="append", help="a mode to measure (default: all)"
    )
    parser.add_argument("--app", metavar="PY", help="watch this app instead of the idle one")
    args = parser.parse_args(argv)
    print(f"threshold {args.threshold} ms, app: {args.app or 'idle'}")
    print("| mode | sidecar (% of a core) | Austin (%) | total (%) |")
    print("| --- | ---: | ---: | ---: |")
    for mode in args.mode or MODES:
        name, flags = MODES[mode]
        own, austin = measure(flags, args.threshold, args.seconds, args.settle, args.app)
        print(f"| {name} | {own:.2f} | {austin:.2f} | {own + austin:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
