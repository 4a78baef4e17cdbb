"""Target app for the context reader: threads blocked inside known OpenTelemetry spans.

Usage: otel_target.py --ready FIFO [--no-otel] [--uvloop] [--churn] [--odd-span]

Runs an asyncio loop on the main thread whose task blocks the loop (in
``threading.Event.wait``) inside a span "request", with 40 other context
variables set so the context's HAMT has several levels. Alongside, blocked
threads: "worker" inside another span, "unsampled" inside a span its
ALWAYS_OFF provider did not sample (both with their __dict__ materialized),
"ended" after its span ended, "plain" that never touched OpenTelemetry.
The loop's task is left unnamed (3.13 then holds its number, not a str).

When all are blocked, one JSON line goes to the FIFO: {"pid", "python",
"threads": {name: {"tid", "trace_id", "span_id", "trace_flags"}}} (ids only
for threads inside a span; "loop" also has "task", "coroutine" and, from 3.14,
"awaited_by": the names of the tasks awaiting its task, else null). A line on stdin ends everything.

With --no-otel, opentelemetry is never imported (only "loop" and "plain" run,
without spans). With --uvloop, the loop is uvloop's. With --churn, one more
thread, "churn", enters and leaves 8 known spans (trace id 0x1000+i, span id
0x2000+i) as fast as it can, so that its context changes under the reader
all the time. With --odd-span, the loop's span is one of a class of its own
that keeps its SpanContext under another name than the SDK's ``_context``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import sys
import threading
from typing import Any

STOP = threading.Event()
LOCK = threading.Lock()
THREADS: dict[str, dict[str, Any]] = {}
EXTRA_VARS: list[contextvars.ContextVar[int]] = [
    contextvars.ContextVar(f"extra_{i}") for i in range(40)
]


TASK_NAME: list[str] = []
"""The name the loop's task will be given, known without asking it (which names it)."""
AWAITED_BY: list[list[str] | None] = []
"""Who awaits the loop's task: the main task (3.14+ keep it; before, None)."""


def note(name: str, span: Any = None) -> None:
    entry: dict[str, Any] = {"tid": threading.get_native_id()}
    if name == "loop":
        entry.update(task=TASK_NAME[0], coroutine="handler", awaited_by=AWAITED_BY[0])
    if span is not None:
        context = span.get_span_context()
        entry.update(
            trace_id=context.trace_id, span_id=context.span_id, trace_flags=context.trace_flags
        )
    with LOCK:
        THREADS[name] = entry


def tracer(*, sampled: bool) -> Any:
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON  # noqa: PLC0415

    return TracerProvider(sampler=ALWAYS_ON if sampled else ALWAYS_OFF).get_tracer("otel_target")


def in_span(name: str, sampled: bool, started: threading.Event) -> None:
    with tracer(sampled=sampled).start_as_current_span(name) as span:
        # Its __dict__ made real (3.11+ keep attributes outside any dict until then),
        # while the loop's span keeps them inline: both ways are read.
        assert "_context" in vars(span)
        note(name, span)
        started.set()
        STOP.wait()


def after_span(started: threading.Event) -> None:
    with tracer(sampled=True).start_as_current_span("finished"):
        pass
    note("ended")
    started.set()
    STOP.wait()


CHURN_SPANS = 8


def churn(started: threading.Event) -> None:
    from opentelemetry import trace  # noqa: PLC0415

    spans = [
        trace.NonRecordingSpan(
            trace.SpanContext(
                0x1000 + i, 0x2000 + i, is_remote=False, trace_flags=trace.TraceFlags(1)
            )
        )
        for i in range(CHURN_SPANS)
    ]
    note("churn")
    started.set()
    while not STOP.is_set():
        for span in spans:
            with trace.use_span(span):
                pass


def plain(started: threading.Event) -> None:
    note("plain")
    started.set()
    STOP.wait()


def odd_span(sampled: bool) -> Any:
    """A span that is not laid out as OpenTelemetry's: no ``_context`` attribute."""
    from opentelemetry.trace import NonRecordingSpan  # noqa: PLC0415

    class OddSpan(NonRecordingSpan):
        def __init__(self, context: Any) -> None:
            self.odd_context = context  # deliberately not NonRecordingSpan's _context

        def get_span_context(self) -> Any:
            return self.odd_context

    real = tracer(sampled=sampled).start_span("real")
    return OddSpan(real.get_span_context())


async def handler(
    use_otel: bool, others_started: list[threading.Event], fifo: str, odd: bool = False
) -> None:
    for i, var in enumerate(EXTRA_VARS):
        var.set(i)

    def block() -> None:
        for event in others_started:
            event.wait()
        with LOCK:
            ready = {"pid": _pid(), "python": sys.version.split()[0], "threads": THREADS}
        with open(fifo, "w") as out:  # noqa: PTH123
            out.write(json.dumps(ready) + "\n")
        STOP.wait()  # the loop is blocked here, inside the span

    if use_otel and odd:
        from opentelemetry import trace  # noqa: PLC0415

        span = odd_span(sampled=True)
        with trace.use_span(span):
            note("loop", span)
            block()
    elif use_otel:
        with tracer(sampled=True).start_as_current_span("request") as span:
            note("loop", span)
            block()
    else:
        note("loop")
        block()


def _pid() -> int:
    import os  # noqa: PLC0415

    return os.getpid()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready", required=True)
    parser.add_argument("--no-otel", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--churn", action="store_true")
    parser.add_argument("--odd-span", action="store_true")
    args = parser.parse_args()
    use_otel = not args.no_otel
    targets: list[tuple[Any, tuple[Any, ...]]] = [(plain, ())]
    if use_otel:
        targets += [
            (in_span, ("worker", True)),
            (in_span, ("unsampled", False)),
            (after_span, ()),
        ]
    if use_otel and args.churn:
        targets.append((churn, ()))
    started = []
    for function, function_args in targets:
        event = threading.Event()
        started.append(event)
        threading.Thread(target=function, args=(*function_args, event), daemon=True).start()

    def stop_on_stdin() -> None:
        sys.stdin.readline()
        STOP.set()

    threading.Thread(target=stop_on_stdin, daemon=True).start()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        # Unnamed tasks are numbered in turn: the one made next is this one's number plus one.
        probe = loop.create_task(asyncio.sleep(0))
        TASK_NAME.append(f"Task-{int(probe.get_name().removeprefix('Task-')) + 1}")
        main_task = asyncio.current_task()
        assert main_task is not None
        AWAITED_BY.append([main_task.get_name()] if sys.version_info >= (3, 14) else None)
        await loop.create_task(handler(use_otel, started, args.ready, args.odd_span))
        await probe

    if args.uvloop:
        import uvloop  # noqa: PLC0415

        uvloop.run(run())
    else:
        asyncio.run(run())


if __name__ == "__main__":
    main()
