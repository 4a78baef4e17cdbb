# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""A loop that waits for the GIL in every iteration: a busy thread of its own holds it.

The loop awaits ``asyncio.sleep(0.001)`` forever while a plain thread counts
in pure Python. Each time the loop comes back from epoll it must take the GIL
from that thread: it sleeps in ``futex`` outside epoll, about 130 times a
second, nearly always for less than the switch interval (5 ms). The worst case
for a detector told of every thread that goes to sleep out of epoll.

USAGE: gil_app.py
"""

from __future__ import annotations

import asyncio
import threading


def count() -> None:
    n = 0
    while True:
        n += 1


async def main() -> None:
    while True:  # noqa: ASYNC110 - the wake-ups are the point
        await asyncio.sleep(0.001)


if __name__ == "__main__":
    threading.Thread(target=count, daemon=True).start()
    asyncio.run(main())
