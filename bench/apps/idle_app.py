# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Idle target: an asyncio loop that only awaits ``asyncio.sleep(0.5)``, forever.

What a watcher costs when nothing happens: one loop iteration every half
second, no block. Runs until killed.

USAGE: idle_app.py
"""

from __future__ import annotations

import asyncio

PERIOD_S = 0.5


async def _idle() -> None:
    while True:  # noqa: ASYNC110 - a loop iteration every PERIOD_S is the point
        await asyncio.sleep(PERIOD_S)


def main() -> None:
    """Idle until killed."""
    asyncio.run(_idle())


if __name__ == "__main__":
    main()
