"""Target app for delayed requests: one request blocks the loop while others wait, ready to run.

Usage: waiting_app.py [--ms N] [--waiters N] [--out FILE] [--uvloop] [--hold]

N waiting requests, each in its own span, yield to the loop at every turn
(``await asyncio.sleep(0)``), so each always has its next step in the loop's
ready queue. Once all are in, one more request blocks the loop in its own
span ("blocker"): every waiter is delayed by it. Then the waiters finish and
a last request blocks with nothing else ready ("alone"). Each block is
written as a JSON line (truth.py's fields) with "delayed": the [trace_id,
span_id] of each request that waited, in the order they were made.

With ``--hold`` the blocker never lets go: it writes {"holding": TID} and
spins on the CPU until the process is killed, so that a reader can read the
blocked loop at leisure (bench/delayed_cost.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from typing import Any, TextIO

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from truth import emit, in_context, timed

OUT: TextIO = sys.stdout


def block(scenario: str, seconds: float, delayed: list[list[int]]) -> None:
    start_ns = time.monotonic_ns()
    time.sleep(seconds)
    end_ns = time.monotonic_ns()
    emit(OUT, {**timed(scenario, start_ns, end_ns), **in_context(), "delayed": delayed})


async def waiter(name: str, ids: list[list[int]], started: asyncio.Semaphore) -> Any:
    """A request that is always ready: it yields at every turn until told to stop."""
    with trace.get_tracer("waiting_app").start_as_current_span(f"request {name}") as span:
        context = span.get_span_context()
        ids.append([context.trace_id, context.span_id])
        started.release()
        while not STOP.is_set():
            await asyncio.sleep(0)


async def blocker(seconds: float, waiters: int, ids: list[list[int]], started: Any) -> None:
    for _ in range(waiters):
        await started.acquire()
    with trace.get_tracer("waiting_app").start_as_current_span("request blocker"):
        await asyncio.sleep(0)  # one turn: every waiter has queued its next step since
        if HOLD:
            emit(OUT, {"holding": threading.get_native_id()})
            while True:
                pass
        block("blocker", seconds, list(ids))
    STOP.set()


STOP: asyncio.Event
HOLD = False


async def main(seconds: float, waiters: int) -> None:
    global STOP  # noqa: PLW0603 - made inside the running loop (3.9 binds it to the loop)
    STOP = asyncio.Event()
    trace.set_tracer_provider(TracerProvider())
    await asyncio.sleep(0.3)
    ids: list[list[int]] = []
    started = asyncio.Semaphore(0)
    tasks = [asyncio.ensure_future(waiter(f"w{i}", ids, started)) for i in range(waiters)]
    await blocker(seconds, waiters, ids, started)
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.05)
    with trace.get_tracer("waiting_app").start_as_current_span("request alone"):
        block("alone", seconds, [])
    await asyncio.sleep(0.05)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ms", type=float, default=120.0)
    parser.add_argument("--waiters", type=int, default=3)
    parser.add_argument("--out", help="write the block records here instead of stdout")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--hold", action="store_true", help="block for good, spinning")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    if args.out:
        OUT = open(args.out, "a")  # noqa: PTH123, SIM115 - lives as long as the process
    HOLD = args.hold
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.ms / 1000, args.waiters))
    else:
        asyncio.run(main(args.ms / 1000, args.waiters))
