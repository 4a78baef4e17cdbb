# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Worst-case target: a loop doing nothing but ``await asyncio.sleep(0)``.

Every iteration is one epoll call, so this shows the most the epoll
tracepoints can cost. Prints ``MONOTONIC_NS ITERATIONS`` about every
REPORT_MS; the runner turns any window of those lines into iterations/s.
SIGTERM/SIGINT stop it.

USAGE: spin_app.py
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

REPORT_MS = 100
CHECK_EVERY = 256
"""Iterations between clock reads, so reporting stays a small, fixed cost."""


async def _spin() -> None:
    loop = asyncio.get_running_loop()
    running = [True]

    def stop() -> None:
        running[0] = False

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    interval_ns = REPORT_MS * 1_000_000
    count = 0
    next_report = time.monotonic_ns()
    while running[0]:
        await asyncio.sleep(0)
        count += 1
        if count % CHECK_EVERY == 0:
            now = time.monotonic_ns()
            if now >= next_report:
                sys.stdout.write(f"{now} {count}\n")
                sys.stdout.flush()
                next_report = now + interval_ns


def main() -> None:
    """Run until signalled; the runner decides the windows, not the app."""
    asyncio.run(_spin())


if __name__ == "__main__":
    main()
