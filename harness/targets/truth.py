"""What the test apps write about each block they make: the truth the sidecar is held to.

Imported by the apps beside it (they run as scripts, on CPython 3.9-3.13).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, TextIO


def timed(scenario: str, start_ns: int, end_ns: int) -> dict[str, Any]:
    """The block's thread and times, on the monotonic clock and the app's own wall clock."""
    # The wall clock read back to back with the monotonic one.
    wall_offset_ns = time.time_ns() - time.monotonic_ns()
    return {
        "scenario": scenario,
        "tid": threading.get_native_id(),
        "start_ns": start_ns,
        "end_ns": end_ns,
        "start_unix_ns": start_ns + wall_offset_ns,
        "end_unix_ns": end_ns + wall_offset_ns,
    }


def emit(out: TextIO, record: dict[str, Any]) -> None:
    out.write(json.dumps(record) + "\n")
    out.flush()


def in_context() -> dict[str, Any]:
    """The active span (ids as ints, null outside a span) and the running asyncio task.

    Asked after a block, not before: 3.13 names a task when asked, and the
    span does not change while the block lasts."""
    from opentelemetry import trace  # noqa: PLC0415 (only the traced apps have it)

    span = trace.get_current_span().get_span_context()
    task = asyncio.current_task()
    return {
        "trace_id": span.trace_id if span.is_valid else None,
        "span_id": span.span_id if span.is_valid else None,
        "sampled": span.trace_flags.sampled if span.is_valid else None,
        "task": task.get_name() if task else None,
        "coroutine": getattr(task.get_coro(), "__qualname__", None) if task else None,
    }


def sleep_in_context(out: TextIO, scenario: str, seconds: float) -> None:
    """Block the loop in time.sleep, and say when, where, in which span and which task."""
    start_ns = time.monotonic_ns()
    time.sleep(seconds)
    end_ns = time.monotonic_ns()
    emit(out, {**timed(scenario, start_ns, end_ns), **in_context()})
