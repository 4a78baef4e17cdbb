#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""How soon the kernel says to look at a blocked loop, and whether the block still goes on.

Loads the detector in this process, compiled as the sidecar compiles it with
trace links on (trigger at half the threshold), and starts an asyncio app
that blocks its loop COUNT times each way (a CPU-bound spin, ``time.sleep``)
for each of the given lengths, in turn, with idle awaits between. Each block
event is paired with the trigger of the same thread and start. Per kind and
length: how many blocks were triggered, the block's age when the kernel
raised it (a tick or a switch: ``look_ns``; for a sleep, the moment it went
to sleep), the delay until this process had it, and how many arrived while
the block still went on (evidence can be gathered only then).

USAGE: trigger_latency.py [--threshold MS] [--ms MS ...] [--count N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

from otel_blocksnoop.cli import positive_int, threshold_ms
from otel_blocksnoop.events import NS_PER_MS, BlockEvent, Trigger, TriggerReason
from otel_blocksnoop.kernel.detector import Detector
from otel_blocksnoop.kernel.program import DetectorConfig

APP = """
import asyncio, sys, time
count, lengths = int(sys.argv[1]), [float(ms) / 1000 for ms in sys.argv[2:]]
def spin(s):
    end = time.monotonic() + s
    while time.monotonic() < end:
        pass
async def main():
    await asyncio.sleep(0.5)
    for _ in range(count):
        for s in lengths:
            for block in (spin, time.sleep):
                block(s)
                await asyncio.sleep(0.02)
asyncio.run(main())
"""


@dataclass(frozen=True)
class Seen:
    """One block of the app, and its trigger if there was one."""

    block: BlockEvent
    trigger: Trigger | None
    arrived_ns: int  # when this process had the trigger


def run(threshold_ns: int, lengths_ms: list[float], count: int) -> list[tuple[str, float, Seen]]:
    """(kind, length, what the kernel said about it) for each block the app made."""
    detector = Detector(DetectorConfig(threshold_ns=threshold_ns, trigger_ns=threshold_ns // 2))
    detector.load()
    app = subprocess.Popen(
        [sys.executable, "-c", APP, str(count), *(f"{ms:g}" for ms in lengths_ms)]
    )
    detector.watch(app.pid)
    triggers: dict[tuple[int, int], tuple[Trigger, int]] = {}
    blocks: list[BlockEvent] = []
    try:
        while app.poll() is None:
            events = detector.poll(100)
            arrived = time.monotonic_ns()
            for event in events:
                if isinstance(event, BlockEvent):
                    blocks.append(event)
                elif event.reason != TriggerReason.NEW_THREAD:
                    triggers[(event.tid, event.start_ns)] = (event, arrived)
    finally:
        app.kill()
        app.wait()
        detector.close()
    # Each block is placed by what the kernel saw: on CPU or asleep (cause
    # tracking), and the nearest length; start-up and shutdown ones are left out.
    results = []
    for block in blocks:
        ms = min(lengths_ms, key=lambda length: abs(block.duration_ns / NS_PER_MS - length))
        if not ms * NS_PER_MS <= block.duration_ns <= 1.5 * ms * NS_PER_MS + NS_PER_MS:
            continue
        activity = block.activity
        kind = "cpu" if activity is None or activity.on_cpu_ns > activity.sleep_ns else "sleep"
        trigger, arrived = triggers.get((block.tid, block.start_ns), (None, 0))
        results.append((kind, ms, Seen(block, trigger, arrived)))
    return results


def summary(results: list[tuple[str, float, Seen]]) -> list[str]:
    rows: dict[tuple[str, float], list[Seen]] = defaultdict(list)
    for kind, ms, found in results:
        rows[(kind, ms)].append(found)
    header = (
        "| block | triggered | age raised (ms), median / max "
        "| delay to user space (ms), median / max | arrived during the block |"
    )
    lines = [header, "| --- | ---: | ---: | ---: | ---: |"]
    for (kind, ms), items in sorted(rows.items()):
        told = [item for item in items if item.trigger is not None]
        ages, delays = [], []
        during = 0
        for item in told:
            block, trigger = item.block, item.trigger
            assert trigger is not None  # noqa: S101 - told
            # An off-CPU trigger is raised as the thread goes to sleep, right at the
            # start of these sleeps: its look_ns is the age to look at, not the moment.
            raised = trigger.look_ns if trigger.reason == TriggerReason.DUE else block.start_ns
            ages.append((raised - block.start_ns) / NS_PER_MS)
            delays.append((item.arrived_ns - raised) / NS_PER_MS)
            during += item.arrived_ns < block.end_ns
        cells = [
            f"{kind} {ms:g} ms",
            f"{len(told)}/{len(items)}",
            _median_max(ages),
            _median_max(delays),
            f"{during}/{len(told)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _median_max(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} / {max(values):.2f}" if values else "-"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/trigger_latency.py", description=__doc__)
    parser.add_argument("--threshold", type=threshold_ms, default=2.0, metavar="MS")
    parser.add_argument("--ms", type=float, nargs="+", default=[2.0, 3.0, 5.0])
    parser.add_argument("--count", type=positive_int, default=20)
    args = parser.parse_args(argv)
    threshold_ns = round(args.threshold * NS_PER_MS)
    results = run(threshold_ns, args.ms, args.count)
    print(
        f"threshold {args.threshold:g} ms, trigger at {threshold_ns / 2 / NS_PER_MS:g} ms, "
        f"{args.count} blocks of each kind and length"
    )
    print("\n".join(summary(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
