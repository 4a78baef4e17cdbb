"""Target app for trace links through real instrumentation: an aiohttp server and its client.

Usage: web_app.py [--ms N] [--out FILE] [--uvloop] [--burst N ...]

The server is traced by opentelemetry-instrumentation-aiohttp-server, so each
request runs inside the SERVER span the instrumentation opened for it; the
app's own tracer provider (ParentBased sampler) exports those spans over
OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set. The same process then
plays the client (aiohttp's client, not instrumented) on a free localhost
port, and the handlers block the loop with time.sleep:

- request-a, request-b: two concurrent requests whose handlers block in turn
  (A, B, A, B), each suspended while the other blocks; B carries a sampled
  ``traceparent``, A none (a new trace);
- no-request: the client itself blocks, between requests;
- unsampled: a request whose ``traceparent`` has flags 00, so the server span
  is not sampled.

Each block is written as a JSON line {"scenario", "tid", "start_ns",
"end_ns", "start_unix_ns", "end_unix_ns", "trace_id", "span_id", "sampled",
"task", "coroutine"}: the span as the handler saw it (ids as ints, null
outside a span) and the asyncio task it ran in (its name, and its
coroutine's qualified name). The app flushes its exporter, then exits.

With ``--burst N`` (repeatable) the client makes bursts instead: N
concurrent requests whose handlers all wait for one shared asyncio.Event. Set
from a timer once all N wait, it wakes them in ONE loop iteration, where
each blocks in turn and yields at once, so the N blocks run back to back:
even ones in time.sleep, odd ones spinning on the thread's CPU time, request
i for ``--ms`` times 1, 1.5 or 2 (i mod 3), so that no two neighbours last
the same. Their records carry "burst" (N), "request" (i), "kind", and
"iteration": the app's own count of loop iterations, the same for all N when
they ran in one (see ``Iterations``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from aiohttp import ClientSession, web  # type: ignore[import-not-found, unused-ignore]
from opentelemetry.instrumentation.aiohttp_server import (  # type: ignore[import-not-found, unused-ignore]
    AioHttpServerInstrumentor,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from truth import emit, in_context, sleep_in_context, timed

OUT: TextIO = sys.stdout
PAUSE_S = 0.05
WARM_UP_S = 0.5
"""Idle time between the server's start and the first burst."""
"""The loop idles this long between blocks, so that each is a loop iteration of its own."""
SAMPLED_PARENT = "00-0000000000000000000000000000b0b0-00000000000000b1-01"
UNSAMPLED_PARENT = "00-0000000000000000000000000005eed1-0000000000c0ffee-00"


def block(scenario: str, seconds: float) -> None:
    sleep_in_context(OUT, scenario, seconds)


def spin(seconds: float) -> None:
    """Spin for ``seconds`` of this thread's CPU time: its own work, however busy the machine."""
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass


BURST_BLOCKS: dict[str, Callable[[float], None]] = {"sleep": time.sleep, "cpu": spin}
BURST_KINDS = ("sleep", "cpu")


class Iterations:
    """Counts the loop's iterations while on: one callback that puts itself back with call_soon.

    Both loops run, in one iteration, only the callbacks that were ready when
    the iteration began (asyncio's ``_run_once``, uvloop's idle pass), each
    between two epoll calls: the callback runs once per iteration, so two
    reads of ``count`` are equal only within one iteration. While on, the loop
    never idles in epoll: it is on only around a burst.
    """

    def __init__(self) -> None:
        self.count = 0
        self._next: asyncio.Handle | None = None

    def start(self) -> None:
        self._next = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None

    def _tick(self) -> None:
        self.count += 1
        self._next = asyncio.get_running_loop().call_soon(self._tick)


@dataclass
class Burst:
    """N requests released together; each blocks for its own length, in one iteration."""

    size: int
    seconds: float
    iterations: Iterations
    go: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: int = 0
    finished: int = 0

    def release(self) -> None:
        self.iterations.start()  # before the wake-ups: it counts this iteration too
        self.go.set()  # each waiter's wake-up is a call_soon: all run in the next iteration

    def length(self, index: int) -> float:
        return self.seconds * (1 + (index % 3) / 2)


def make_app(seconds: float, bursts: list[Burst] | None = None) -> Any:
    # turns[i] lets block i happen; A takes the even ones, B the odd ones; the
    # last lets both answer, so that neither request ends before the other's blocks.
    turns = [asyncio.Event() for _ in range(5)]

    async def take_turns(request: web.Request) -> web.Response:
        name = request.query["name"]
        if name == "b":  # both are in flight now (A waits for turn 0)
            turns[0].set()
        for turn in range("ab".index(name), 4, 2):
            await turns[turn].wait()
            block(f"request-{name}", seconds)
            await asyncio.sleep(PAUSE_S)
            turns[turn + 1].set()
        await turns[4].wait()
        return web.Response(text=name)

    async def block_once(request: web.Request) -> web.Response:
        block(request.query["scenario"], seconds)
        return web.Response(text="done")

    async def block_in_burst(_: web.Request) -> web.Response:
        assert bursts  # the client makes one before sending its requests
        burst = bursts[-1]
        index = burst.arrived
        burst.arrived += 1
        loop = asyncio.get_running_loop()
        if burst.arrived == burst.size:  # all wait (this one is about to): go in a while
            loop.call_later(PAUSE_S, burst.release)
        await burst.go.wait()
        kind = BURST_KINDS[index % len(BURST_KINDS)]
        iteration = burst.iterations.count
        start_ns = time.monotonic_ns()
        BURST_BLOCKS[kind](burst.length(index))
        end_ns = time.monotonic_ns()
        line = {
            **timed(f"burst-{burst.size}", start_ns, end_ns),
            **in_context(),
            "burst": burst.size,
            "request": index,
            "kind": kind,
            "iteration": iteration,
        }
        loop.call_soon(emit, OUT, line)  # written after the iteration, not inside it
        await asyncio.sleep(0)  # leave the iteration now: the next request blocks at once
        burst.finished += 1
        if burst.finished == burst.size:
            burst.iterations.stop()
        return web.Response(text=str(index))

    app = web.Application()  # instrumented: the instrumentor replaced the class
    app.router.add_get("/turns", take_turns)
    app.router.add_get("/block", block_once)
    app.router.add_get("/burst", block_in_burst)
    return app


async def client(base: str, seconds: float, bursts: list[Burst], sizes: list[int]) -> None:
    async with ClientSession(base) as session:

        async def get(path: str, traceparent: str | None = None) -> str:
            headers = {"traceparent": traceparent} if traceparent else {}
            async with session.get(path, headers=headers) as response:
                response.raise_for_status()
                text: str = await response.text()
                return text

        if sizes:
            # A service's first requests come a while after its start; a watcher
            # finds its loop when it first leaves epoll, and needs a moment then.
            await asyncio.sleep(WARM_UP_S)
            iterations = Iterations()
            for size in sizes:
                bursts.append(Burst(size, seconds, iterations))
                await asyncio.gather(*(get("/burst") for _ in range(size)))
                await asyncio.sleep(PAUSE_S)
            return
        await asyncio.gather(get("/turns?name=a"), get("/turns?name=b", traceparent=SAMPLED_PARENT))
        await asyncio.sleep(PAUSE_S)
        block("no-request", seconds)
        await asyncio.sleep(PAUSE_S)
        await get("/block?scenario=unsampled", traceparent=UNSAMPLED_PARENT)
        await asyncio.sleep(PAUSE_S)


async def main(seconds: float, sizes: list[int]) -> None:
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,  # only when exporting: the import takes half a second
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    AioHttpServerInstrumentor().instrument(tracer_provider=provider)
    bursts: list[Burst] = []
    runner = web.AppRunner(make_app(seconds, bursts))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        await client(f"http://{host}:{port}", seconds, bursts, sizes)
    finally:
        await runner.cleanup()
        provider.shutdown()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ms", type=float, default=80.0, help="length of each block")
    parser.add_argument("--out", help="write the block records here instead of stdout")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--burst",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="instead of the scenarios above, N requests blocking back to back in one iteration",
    )
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    if args.out:
        OUT = open(args.out, "a")  # noqa: PTH123, SIM115 - lives as long as the process
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.ms / 1000, args.burst))
    else:
        asyncio.run(main(args.ms / 1000, args.burst))
