# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Target for bench/stack_sources.py: blocks its loop and says so, as the kernel will.

The kernel trigger (a loop thread out of epoll for half the threshold) is not
there yet, so the app announces each block on a pipe instead: ``B TID
NOW_NS`` just before it blocks, ``E END_NS KIND START_NS`` just after
(CLOCK_MONOTONIC; START_NS is taken after the first line was written, so the
block's window holds the blocking call only, not the announcement).
The driver turns the first into ``begin`` at START + half the threshold and
the second into ``end``, like the kernel's two events would.

Modes:
  blocks  ``--count`` blocks of each kind of apps/kinds_app.py (sleep, cpu,
          hashlib, read, subprocess, lock, gil), ``--duration-ms`` each,
          shuffled, 20-40 ms idle awaits between; then writes the true call
          sites (kinds_app's) as JSON to ``--out``.
  idle    awaits asyncio.sleep(0.5) until killed.
  busy    a work loop (20 tasks, ~30 us of JSON work per step, sleep(0)
          between) plus a pure-Python block of ``--duration-ms`` every
          1/``--rate`` s, for ``--seconds``; then writes steps, wall and CPU
          seconds as JSON to ``--out``.

It prints its native thread id (one line) on stdout once its loop runs.

USAGE: announced_app.py MODE --announce FIFO [--out FILE] [--duration-ms D]
                        [--count N] [--rate R] [--seconds S] [--seed S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from kinds_app import KINDS, Blocker, call_sites

IDLE_MS = (20.0, 40.0)
WORKERS = 20
PAYLOAD = {"id": 1, "name": "x" * 40, "tags": ["a", "b", "c"], "values": list(range(20))}


def _announce(stream: IO[str], text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def spin(seconds: float) -> None:
    """The busy mode's block: pure Python, so every stack source can see it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


async def _blocks(args: argparse.Namespace, announce: IO[str]) -> None:
    rng = random.Random(args.seed)
    blocker = Blocker()
    schedule = [kind for kind in KINDS for _ in range(args.count)]
    rng.shuffle(schedule)
    tid = threading.get_native_id()
    seconds = args.duration_ms / 1000
    try:
        for _ in range(10):
            await asyncio.sleep(0.01)
        for kind in schedule:
            block = blocker.method(kind)
            _announce(announce, f"B {tid} {time.monotonic_ns()}")
            # The block itself starts after the announcement is written.
            start = time.monotonic_ns()
            block(seconds)
            _announce(announce, f"E {time.monotonic_ns()} {kind} {start}")
            await asyncio.sleep(rng.uniform(*IDLE_MS) / 1000)
    finally:
        blocker.close()
    args.out.write_text(json.dumps({"call_sites": call_sites()}))


async def _busy(args: argparse.Namespace, announce: IO[str]) -> None:
    steps = [0]
    running = [True]

    async def worker() -> None:
        while running[0]:
            json.loads(json.dumps(PAYLOAD))
            steps[0] += 1
            await asyncio.sleep(0)

    async def blocker() -> None:
        tid = threading.get_native_id()
        period = 1 / args.rate
        while running[0]:
            await asyncio.sleep(period)
            _announce(announce, f"B {tid} {time.monotonic_ns()}")
            start = time.monotonic_ns()
            spin(args.duration_ms / 1000)
            _announce(announce, f"E {time.monotonic_ns()} spin {start}")

    tasks = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    if args.rate > 0:
        tasks.append(asyncio.create_task(blocker()))
    wall, cpu = time.monotonic(), time.process_time()
    await asyncio.sleep(args.seconds)
    record: dict[str, Any] = {
        "steps": steps[0],
        "wall_s": time.monotonic() - wall,
        "cpu_s": time.process_time() - cpu,
    }
    running[0] = False
    await asyncio.gather(*tasks)
    args.out.write_text(json.dumps(record))


async def _idle() -> None:
    while True:  # noqa: ASYNC110 - an idle loop that still iterates
        await asyncio.sleep(0.5)


async def _main(args: argparse.Namespace) -> None:
    sys.stdout.write(f"{threading.get_native_id()}\n")
    sys.stdout.flush()
    # Opens once the driver reads the FIFO: the app waits for its stack source.
    with Path(args.announce).open("w") as announce:  # noqa: ASYNC230
        if args.mode == "blocks":
            await _blocks(args, announce)
        elif args.mode == "busy":
            await _busy(args, announce)
        else:
            await _idle()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", choices=("blocks", "idle", "busy"))
    parser.add_argument("--announce", required=True, help="FIFO for the block announcements")
    parser.add_argument("--out", type=Path, default=Path(os.devnull))
    parser.add_argument("--duration-ms", type=float, default=10.0)
    parser.add_argument("--count", type=int, default=10, help="blocks of each kind")
    parser.add_argument("--rate", type=float, default=2.0, help="blocks per second (busy)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long (busy)")
    parser.add_argument("--seed", type=int, default=0)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
