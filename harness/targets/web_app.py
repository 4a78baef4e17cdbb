"""Target app for trace links through real instrumentation: an aiohttp server and its client.

Usage: web_app.py [--ms N] [--out FILE] [--uvloop]

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
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any, TextIO

from aiohttp import ClientSession, web  # type: ignore[import-not-found, unused-ignore]
from opentelemetry.instrumentation.aiohttp_server import (  # type: ignore[import-not-found, unused-ignore]
    AioHttpServerInstrumentor,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from truth import sleep_in_context

OUT: TextIO = sys.stdout
PAUSE_S = 0.05
"""The loop idles this long between blocks, so that each is a loop iteration of its own."""
SAMPLED_PARENT = "00-0000000000000000000000000000b0b0-00000000000000b1-01"
UNSAMPLED_PARENT = "00-0000000000000000000000000005eed1-0000000000c0ffee-00"


def block(scenario: str, seconds: float) -> None:
    sleep_in_context(OUT, scenario, seconds)


def make_app(seconds: float) -> Any:  # a web.Application, the instrumented subclass
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

    app = web.Application()  # instrumented: the instrumentor replaced the class
    app.router.add_get("/turns", take_turns)
    app.router.add_get("/block", block_once)
    return app


async def client(base: str, seconds: float) -> None:
    async with ClientSession(base) as session:

        async def get(path: str, traceparent: str | None = None) -> str:
            headers = {"traceparent": traceparent} if traceparent else {}
            async with session.get(path, headers=headers) as response:
                response.raise_for_status()
                text: str = await response.text()
                return text

        await asyncio.gather(get("/turns?name=a"), get("/turns?name=b", traceparent=SAMPLED_PARENT))
        await asyncio.sleep(PAUSE_S)
        block("no-request", seconds)
        await asyncio.sleep(PAUSE_S)
        await get("/block?scenario=unsampled", traceparent=UNSAMPLED_PARENT)
        await asyncio.sleep(PAUSE_S)


async def main(seconds: float) -> None:
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,  # only when exporting: the import takes half a second
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    AioHttpServerInstrumentor().instrument(tracer_provider=provider)
    runner = web.AppRunner(make_app(seconds))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        await client(f"http://{host}:{port}", seconds)
    finally:
        await runner.cleanup()
        provider.shutdown()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ms", type=float, default=80.0, help="length of each block")
    parser.add_argument("--out", help="write the block records here instead of stdout")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    if args.out:
        OUT = open(args.out, "a")  # noqa: PTH123, SIM115 - lives as long as the process
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.ms / 1000))
    else:
        asyncio.run(main(args.ms / 1000))
