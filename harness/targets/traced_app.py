"""Target app for trace links: requests in OpenTelemetry spans block the loop, in turn.

Usage: traced_app.py [--ms N] [--out FILE] [--uvloop]

Two requests run at once, each in its own span, and block the loop
alternately (A, B, A, B), so the sidecar must tell which request each block
belongs to. Then one block outside any span, and one inside a request the
app did not sample (its parent came in unsampled). Each block is written as
a JSON line {"scenario", "tid", "start_ns", "end_ns", "start_unix_ns",
"end_unix_ns", "trace_id", "span_id", "sampled"} (ids as ints, null outside
a span). With OTEL_EXPORTER_OTLP_ENDPOINT set, the app exports its own spans
over OTLP/HTTP, as an instrumented service would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TextIO

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from truth import sleep_in_context

OUT: TextIO = sys.stdout


def block(scenario: str, seconds: float) -> None:
    sleep_in_context(OUT, scenario, seconds)


async def request(name: str, seconds: float, turns: list[asyncio.Event], mine: int) -> None:
    """Block twice inside the request's span, taking turns with the other request."""
    tracer = trace.get_tracer("traced_app")
    with tracer.start_as_current_span(f"request {name}"):
        for turn in range(mine, len(turns), 2):
            await turns[turn].wait()
            block(f"request-{name}", seconds)
            await asyncio.sleep(0.05)
            if turn + 1 < len(turns):
                turns[turn + 1].set()


def tracer_provider() -> TracerProvider:
    """The app's own tracing; its spans go to OTLP too when an endpoint is set."""
    provider = TracerProvider()
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,  # only when exporting: the import takes half a second
        )
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


async def main(seconds: float) -> None:
    provider = tracer_provider()
    trace.set_tracer_provider(provider)
    await asyncio.sleep(0.3)
    turns = [asyncio.Event() for _ in range(4)]
    both = asyncio.gather(request("a", seconds, turns, 0), request("b", seconds, turns, 1))
    turns[0].set()
    await both
    await asyncio.sleep(0.05)
    block("no-span", seconds)
    await asyncio.sleep(0.05)
    remote = SpanContext(
        trace_id=0x5EED << 64 | 1, span_id=0xC0FFEE, is_remote=True, trace_flags=TraceFlags(0)
    )
    unsampled = trace.set_span_in_context(NonRecordingSpan(remote))
    tracer = trace.get_tracer("traced_app")
    with tracer.start_as_current_span("unsampled request", context=unsampled):
        block("unsampled", seconds)
    await asyncio.sleep(0.05)
    provider.shutdown()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ms", type=float, default=120.0)
    parser.add_argument("--out", help="write the block records here instead of stdout")
    parser.add_argument("--uvloop", action="store_true")
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
