# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Export target: an asyncio app that blocks its loop and records when each block ended.

Every block is pure-Python CPU work timed by the app on CLOCK_MONOTONIC, with
its start and end also on the wall clock (an offset read back to back right
after the block, as harness/targets/blocker.py does), so the runner can tell
how long after a block's real end its span reached the collector.

Two schedules:

- ``latency``: ``--count`` blocks of ``--block-ms MIN MAX`` with idle awaits
  of ``--idle-ms MIN MAX`` between them. Writes nothing to stdout (in launch
  mode that stream is the sidecar's).
- ``storm``: blocks of ``--block-ms`` paced at ``--rate`` per second for
  ``--seconds``, sleeping on the loop for the rest of each slot. Prints
  ``ready`` and waits for SIGUSR1 before starting, then ``storm start`` and
  ``storm end``, so an attached sidecar and its meters can be set up first.

Timings go to ``--out`` as JSON once the schedule is over.

USAGE: export_app.py latency --count N --out FILE [--block-ms MIN MAX] [--idle-ms MIN MAX]
       export_app.py storm --seconds S --rate R --out FILE [--block-ms MIN MAX]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

WARMUP_AWAITS = 10
"""Idle awaits before the first block, so start-up iterations settle first."""
READY_TIMEOUT_S = 120.0
"""How long a storm waits for its go signal before giving up."""


def _block(duration_ns: int) -> dict[str, int]:
    start = time.monotonic_ns()
    deadline = start + duration_ns
    while time.monotonic_ns() < deadline:
        pass
    end = time.monotonic_ns()
    # The wall clock, read back to back with the monotonic one, right after the block.
    offset = time.time_ns() - time.monotonic_ns()
    return {
        "start_ns": start,
        "end_ns": end,
        "start_unix_ns": start + offset,
        "end_unix_ns": end + offset,
    }


async def _latency(args: argparse.Namespace, rng: random.Random) -> list[dict[str, int]]:
    blocks = []
    for _ in range(WARMUP_AWAITS):
        await asyncio.sleep(rng.uniform(*args.idle_ms) / 1000)
    for _ in range(args.count):
        blocks.append(_block(round(rng.uniform(*args.block_ms) * 1e6)))
        await asyncio.sleep(rng.uniform(*args.idle_ms) / 1000)
    return blocks


async def _storm(args: argparse.Namespace, rng: random.Random) -> list[dict[str, int]]:
    go = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
    print("ready", flush=True)
    await asyncio.wait_for(go.wait(), READY_TIMEOUT_S)
    print("storm start", flush=True)
    blocks = []
    period_ns = round(1e9 / args.rate)
    started = time.monotonic_ns()
    stop = started + round(args.seconds * 1e9)
    slot = started
    while slot < stop:
        blocks.append(_block(round(rng.uniform(*args.block_ms) * 1e6)))
        slot += period_ns
        # Sleeping to the next slot keeps the rate fixed; a late slot does not sleep.
        await asyncio.sleep(max(0, slot - time.monotonic_ns()) / 1e9)
    print("storm end", flush=True)
    return blocks


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("schedule", choices=("latency", "storm"))
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the app's timings")
    parser.add_argument("--block-ms", type=float, nargs=2, default=(20.0, 50.0))
    parser.add_argument("--idle-ms", type=float, nargs=2, default=(50.0, 150.0))
    parser.add_argument("--count", type=int, default=200, help="latency: blocks")
    parser.add_argument("--seconds", type=float, default=30.0, help="storm: length")
    parser.add_argument("--rate", type=float, default=100.0, help="storm: blocks per second")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    rng = random.Random(args.seed)
    schedule = _latency if args.schedule == "latency" else _storm
    try:
        blocks = asyncio.run(schedule(args, rng))
    except TimeoutError:
        sys.stderr.write("export_app: failed to start the storm: no SIGUSR1\n")
        return 1
    record: dict[str, Any] = {"pid": os.getpid(), "schedule": args.schedule, "blocks": blocks}
    args.out.write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
