"""A long-running asyncio service that blocks its own event loop, in known ways, every few seconds.

Made for the repo's docker-compose.yml, where the sidecar watches it and each block
becomes an ``eventloop.block`` span in Jaeger. Each round serves a few fake requests;
one of them holds the loop, each round in a different way:

    function        what holds the loop                    blocksnoop.cause
    sleepy_handler  time.sleep(0.2)                        syscall (clock_nanosleep)
    hash_password   hashlib.pbkdf2_hmac, 300k rounds       cpu
    render_report   a pure-Python loop, 120 ms of CPU      cpu
    read_config     a lock another thread holds for 0.5 s  syscall (futex)

When the OpenTelemetry SDK is installed and OTEL_EXPORTER_OTLP_ENDPOINT is set, each
request runs in its own ``GET /...`` server span, exported like any instrumented app,
so block spans can be tied to the request that blocked (once the sidecar links them).

    python3 examples/blocking_service.py            # forever, a round every 3 s
    BLOCK_EVERY_S=1 python3 examples/blocking_service.py
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

EVERY_S = float(os.environ.get("BLOCK_EVERY_S", "3"))

RequestSpan = Callable[[str], contextlib.AbstractContextManager[object]]


def sleepy_handler() -> None:
    time.sleep(0.2)


def hash_password() -> bytes:
    return hashlib.pbkdf2_hmac("sha256", b"hunter2", b"salt", 300_000)


def render_report() -> int:
    # 120 ms of this thread's CPU, however busy the machine: a fixed amount of work.
    deadline = time.thread_time() + 0.12
    rows = 0
    while time.thread_time() < deadline:
        rows += 1
    return rows


def read_config() -> None:
    lock = threading.Lock()
    lock.acquire()
    threading.Timer(0.5, lock.release).start()
    with lock:  # waits for the timer thread, on the loop
        pass


BLOCKERS: list[tuple[str, Callable[[], object]]] = [
    ("/sleep", sleepy_handler),
    ("/login", hash_password),
    ("/report", render_report),
    ("/config", read_config),
]


def _setup_tracing() -> RequestSpan:
    """A span per request when the SDK and an endpoint are there; a no-op otherwise."""

    @contextlib.contextmanager
    def no_span(_name: str) -> Iterator[None]:
        yield

    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return no_span
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional dependency
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            SpanExporter,
        )

        exporter: SpanExporter
        if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc import (  # noqa: PLC0415
                trace_exporter as grpc_exporter,
            )

            exporter = grpc_exporter.OTLPSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http import (  # noqa: PLC0415
                trace_exporter as http_exporter,
            )

            exporter = http_exporter.OTLPSpanExporter()
    except ImportError:
        print("blocking service: no OpenTelemetry SDK, requests are not traced", flush=True)
        return no_span
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("blocking_service")

    def request_span(name: str) -> contextlib.AbstractContextManager[object]:
        return tracer.start_as_current_span(name, kind=trace.SpanKind.SERVER)

    return request_span


async def serve(route: str, work: Callable[[], object] | None, span: RequestSpan) -> None:
    with span(f"GET {route}"):
        await asyncio.sleep(0.01)  # reading the request: an idle await, not a block
        if work is not None:
            print(f"blocking service: {route} blocks the loop in {work.__name__}()", flush=True)
            work()
        await asyncio.sleep(0.01)


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # as PID 1, SIGTERM is ignored without this
        loop.add_signal_handler(sig, stop.set)
    span = _setup_tracing()
    print(f"blocking service: PID {os.getpid()}, a blocking request every {EVERY_S} s", flush=True)
    round_no = 0
    while not stop.is_set():
        route, work = BLOCKERS[round_no % len(BLOCKERS)]
        await asyncio.gather(serve("/health", None, span), serve(route, work, span))
        round_no += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), EVERY_S)
    print("blocking service: stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
