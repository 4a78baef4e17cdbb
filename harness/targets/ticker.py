"""Target app: an asyncio loop that wakes every ``--every`` seconds and does nothing else.

Usage: ticker.py [--every S] [--ready FIFO]

Its loop leaves epoll at each tick, so a watcher that attaches while it runs
sees the loop start (and starts what it keeps per loop) within one tick.
With --ready, "ready <pid>" is written to the FIFO once the loop runs. Runs
until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import os


async def tick(every_s: float, ready: str | None) -> None:
    if ready:
        with open(ready, "w") as fifo:  # noqa: PTH123, ASYNC230 - once, before the ticks
            fifo.write(f"ready {os.getpid()}\n")
    while True:
        await asyncio.sleep(every_s)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=float, default=0.2)
    parser.add_argument("--ready")
    args = parser.parse_args()
    asyncio.run(tick(args.every, args.ready))


if __name__ == "__main__":
    main()
