# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Accuracy target: an asyncio app that blocks its own loop for known lengths of time.

The app times every block itself with ``time.monotonic_ns()``, the clock the
sidecar reports in, so the runner can pair the two by overlap. Blocks are
either pure-Python CPU work or ``time.sleep`` (the thread is off-CPU, which a
sampler would miss but an epoll-to-epoll timer must not). Random idle awaits
between blocks give the loop real epoll waits, which must never be reported.

It writes nothing to stdout: in launch mode that stream is the sidecar's.

USAGE: blocks_app.py --duration-ms D --count N --out FILE [--idle-ms MIN MAX] [--seed S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any

KINDS = ("cpu", "sleep")
WARMUP_AWAITS = 10
"""Idle awaits before the first block, so start-up iterations settle first."""


def _busy(duration_ns: int) -> tuple[int, int]:
    start = time.monotonic_ns()
    deadline = start + duration_ns
    while time.monotonic_ns() < deadline:
        pass
    return start, time.monotonic_ns()


def _sleep(duration_ns: int) -> tuple[int, int]:
    start = time.monotonic_ns()
    time.sleep(duration_ns / 1e9)
    return start, time.monotonic_ns()


async def _inject(
    duration_ns: int, schedule: list[str], idle_ms: tuple[float, float], rng: random.Random
) -> dict[str, list[dict[str, Any]]]:
    blocks: list[dict[str, Any]] = []
    idles: list[dict[str, Any]] = []

    async def idle() -> None:
        start = time.monotonic_ns()
        await asyncio.sleep(rng.uniform(*idle_ms) / 1000)
        idles.append({"start_ns": start, "end_ns": time.monotonic_ns()})

    for _ in range(WARMUP_AWAITS):
        await idle()
    for kind in schedule:
        start, end = _busy(duration_ns) if kind == "cpu" else _sleep(duration_ns)
        blocks.append({"kind": kind, "start_ns": start, "end_ns": end})
        await idle()
    return {"blocks": blocks, "idles": idles}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration-ms", type=float, required=True)
    parser.add_argument("--count", type=int, required=True, help="blocks of each kind")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the app's timings")
    parser.add_argument("--idle-ms", type=float, nargs=2, default=(20.0, 50.0))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    """Shuffle both kinds into one schedule, so neither always follows the other."""
    args = _parse_args()
    rng = random.Random(args.seed)
    schedule = [kind for kind in KINDS for _ in range(args.count)]
    rng.shuffle(schedule)
    duration_ns = round(args.duration_ms * 1e6)
    idle_ms = (args.idle_ms[0], args.idle_ms[1])
    timings = asyncio.run(_inject(duration_ns, schedule, idle_ms, rng))
    record = {"pid": os.getpid(), "duration_ms": args.duration_ms, **timings}
    args.out.write_text(json.dumps(record))


if __name__ == "__main__":
    main()
