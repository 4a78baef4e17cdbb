# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Trace-link target: concurrent requests, each in its own OpenTelemetry span, block the loop.

W worker tasks serve "requests": each opens a (sampled, root) span "request W.N"
and keeps it open over K blocks, so several requests are in flight at once
and the loop switches between their contexts. Half of the blocks inside a
request sit in a child span "query", whose id is then the right parent. A
dispatcher task hands the blocks out one at a time, to a random worker, and
awaits ``asyncio.sleep(idle)`` between blocks, so every block is a loop
iteration of its own; some blocks it makes itself, outside any span (its
context never holds one). A block is CPU (pure-Python loop to a deadline) or
``time.sleep``, alternately.

For each block the app records its thread, its kind, length and place
(request, query, outside), the span active while it ran (trace id and span
id as ints, null outside), and its start and end on CLOCK_MONOTONIC and on
the wall clock. At exit it writes ``{"python", "loop", "blocks": [...]}`` to
``--out``. It exports nothing: its spans are only the context the sidecar
reads. Runs on CPython 3.9+ with opentelemetry-sdk.

The first block comes ``--start-delay-ms`` after start (default 1 s), so a
launching sidecar's start-up (BPF compile, Austin, the reader's ELF lookup)
is over.

USAGE: linked_app.py --out FILE [--count N] [--outside N] [--durations-ms MS ...]
                     [--idle-ms LO HI] [--workers W] [--per-request K] [--seed S]
                     [--start-delay-ms MS] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

KINDS = ("cpu", "sleep")
NS_PER_S = 1_000_000_000


def _block(kind: str, duration_ms: float, where: str) -> dict[str, Any]:
    """Block the loop for ``duration_ms`` and say when, where and inside which span."""
    context = trace.get_current_span().get_span_context()
    wall_offset_ns = time.time_ns() - time.monotonic_ns()
    start_ns = time.monotonic_ns()
    if kind == "sleep":
        time.sleep(duration_ms / 1000)
    else:
        deadline = start_ns + int(duration_ms * 1_000_000)
        while time.monotonic_ns() < deadline:
            pass
    end_ns = time.monotonic_ns()
    return {
        "kind": kind,
        "duration_ms": duration_ms,
        "where": where,
        "tid": threading.get_native_id(),
        "start_ns": start_ns,
        "end_ns": end_ns,
        "start_unix_ns": start_ns + wall_offset_ns,
        "end_unix_ns": end_ns + wall_offset_ns,
        "trace_id": context.trace_id if context.is_valid else None,
        "span_id": context.span_id if context.is_valid else None,
    }


class Job:
    """One block handed to a worker; the dispatcher awaits its record."""

    def __init__(
        self, kind: str, duration_ms: float, nested: bool, done: asyncio.Future[dict[str, Any]]
    ) -> None:
        self.kind = kind
        self.duration_ms = duration_ms
        self.nested = nested
        self.done = done


async def _worker(name: int, jobs: asyncio.Queue[Job | None], per_request: int) -> None:
    tracer = trace.get_tracer("linked_app")
    request = 0
    while True:
        request += 1
        with tracer.start_as_current_span(f"request {name}.{request}"):
            for _ in range(per_request):
                job = await jobs.get()
                if job is None:
                    return
                if job.nested:
                    with tracer.start_as_current_span("query"):
                        record = _block(job.kind, job.duration_ms, "query")
                else:
                    record = _block(job.kind, job.duration_ms, "request")
                job.done.set_result(record)


async def _run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    loop = asyncio.get_running_loop()
    plan = [(ms, "inside") for ms in args.durations_ms for _ in range(args.count)]
    plan += [(ms, "outside") for ms in args.durations_ms for _ in range(args.outside)]
    rng.shuffle(plan)
    queues: list[asyncio.Queue[Job | None]] = [asyncio.Queue() for _ in range(args.workers)]
    workers = [
        loop.create_task(_worker(i, queue, args.per_request)) for i, queue in enumerate(queues)
    ]
    records: list[dict[str, Any]] = []
    await asyncio.sleep(args.start_delay_ms / 1000)
    for index, (duration_ms, place) in enumerate(plan):
        await asyncio.sleep(rng.uniform(*args.idle_ms) / 1000)
        kind = KINDS[index % len(KINDS)]
        if place == "outside":
            records.append(_block(kind, duration_ms, "outside"))
            continue
        done: asyncio.Future[dict[str, Any]] = loop.create_future()
        job = Job(kind, duration_ms, rng.random() < 0.5, done)
        queues[rng.randrange(args.workers)].put_nowait(job)
        records.append(await done)
    for queue in queues:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    await asyncio.sleep(0.1)  # the last block's epoll return, before the loop closes
    return records


def main() -> None:
    """Parse, run on asyncio or uvloop, and write the records once at the end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=100, help="blocks in requests per length")
    parser.add_argument("--outside", type=int, default=20, help="blocks outside spans per length")
    parser.add_argument("--durations-ms", type=float, nargs="+", default=[10.0, 20.0, 50.0])
    parser.add_argument("--idle-ms", type=float, nargs=2, default=[15.0, 40.0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--per-request", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--start-delay-ms",
        type=float,
        default=1000.0,
        help="idle time before the first block (a launched sidecar's start-up settles)",
    )
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    trace.set_tracer_provider(TracerProvider())
    if args.uvloop:
        import uvloop  # noqa: PLC0415 - only when asked for

        records = uvloop.run(_run(args))
    else:
        records = asyncio.run(_run(args))
    result = {
        "python": sys.version.split()[0],
        "loop": "uvloop" if args.uvloop else "asyncio",
        "blocks": records,
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
