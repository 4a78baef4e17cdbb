"""A block as a span, a hang as a log record: ids, parent, attributes (DESIGN.md, "Contracts").

A block still going on is reported as log records that point at the span
the block will get when it ends; ``SpanIds`` keeps those ids until then.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import AttributeValue

from otel_blocksnoop import __version__
from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import Block, CallSite, Cause, SpanRef, TaskRef
from otel_blocksnoop.export import names
from otel_blocksnoop.export.formatting import call_sites_text, format_traceback, seconds

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource

MAX_ONGOING = 1024
"""Blocks still going on whose span ids are kept for their final span; the oldest go."""
SCOPE = InstrumentationScope(names.SCOPE_NAME, __version__)
BlockKey = tuple[int, int, int]  # pid, tid, start
Ids = tuple[int, int, int]  # trace id, span id, trace flags


def _span_context(trace_id: int, span_id: int, flags: int = TraceFlags.SAMPLED) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags))


def in_span(ids: Ids) -> Context:
    """A context whose current span is this one: for log records and exemplars."""
    return trace.set_span_in_context(trace.NonRecordingSpan(_span_context(*ids)))


def sampled(ids: Ids) -> bool:
    return bool(ids[2] & TraceFlags.SAMPLED)


class SpanIds:
    """Trace and span ids of blocks: new ones, or those given to a block while it lasted."""

    def __init__(self) -> None:
        self._generator = RandomIdGenerator()
        # By block: its ids, and the parent they were made for.
        self._ongoing: BoundedDict[BlockKey, tuple[Ids, SpanRef | None]] = BoundedDict(MAX_ONGOING)

    def _new(self, block: Block) -> Ids:
        """A new span in the app's trace (with its sampling decision), or in a trace of its own."""
        trace_id = self._generator.generate_trace_id()
        span_id = self._generator.generate_span_id()
        if block.parent is not None:
            return block.parent.trace_id, span_id, block.parent.trace_flags
        return trace_id, span_id, TraceFlags.SAMPLED

    def ongoing(self, block: Block) -> Ids:
        """The ids of a block still going on, kept for its next reports and its end."""
        key = (block.pid, block.tid, block.start_ns)
        kept = self._ongoing.get(key)
        if kept is None or kept[1] != block.parent:
            kept = self._ongoing[key] = (self._new(block), block.parent)
        return kept[0]

    def ended(self, block: Block) -> Ids:
        """The ids of a block that has ended: those it had while it lasted, else new ones.

        Only if its parent is still the one they were made for: a hang report
        may have had none yet (or a share of the iteration may belong to
        another request), and a span is never left in the wrong trace.
        """
        kept = self._ongoing.pop((block.pid, block.tid, block.start_ns), None)
        if kept is None or kept[1] != block.parent:
            return self._new(block)
        return kept[0]


def _how_it_ended(block: Block) -> dict[str, AttributeValue]:
    """How the block ended (not said of a hang), and whether it began before watching."""
    attributes: dict[str, AttributeValue] = {}
    if not block.in_progress:
        attributes[names.END_REASON] = str(block.end_reason)
    if block.started_before_watch:
        attributes[names.STARTED_BEFORE_WATCH] = True
    return attributes


def _call_sites(block: Block) -> dict[str, AttributeValue]:
    """Every call site in one line, how many were left out, and the time not sampled."""
    attributes: dict[str, AttributeValue] = {}
    if block.call_sites:
        attributes[names.CALL_SITES] = call_sites_text(block.call_sites)
    if block.call_sites or block.call_sites_left_out:
        attributes[names.CALL_SITES_LEFT_OUT] = block.call_sites_left_out
        attributes[names.UNSAMPLED] = seconds(block.unsampled_ns)
    return attributes


def block_attributes(block: Block) -> dict[str, AttributeValue]:
    """The span attributes of a block (DESIGN.md, "Contracts")."""
    attributes: dict[str, AttributeValue] = {
        names.PROCESS_PID: block.app_pid,
        names.THREAD_ID: block.app_tid,
        names.CAUSE: str(block.cause),
        names.THRESHOLD: seconds(block.threshold_ns),
        names.THREAD_KIND: str(block.thread_kind),
        names.ITERATION_ID: block.iteration_id,
        names.ITERATION_DURATION: seconds(block.iteration_ns),
        names.ITERATION_SEGMENTS: block.segments,
        names.ITERATION_SEGMENT: block.segment,
    }
    attributes.update(_how_it_ended(block))
    if (host := block.host_ids) is not None:
        attributes[names.PROCESS_HOST_PID], attributes[names.THREAD_HOST_ID] = host
    if block.thread_name:
        attributes[names.THREAD_NAME] = block.thread_name
    if block.cause == Cause.SYSCALL and block.syscall:
        attributes[names.SYSCALL] = block.syscall
    if block.stack:
        attributes[names.CODE_STACKTRACE] = format_traceback(block.stack, block.source_lines)
        attributes[names.SAMPLES] = block.samples
        attributes[names.SAMPLES_BUSY] = block.samples_busy
    if block.call_site is not None:
        attributes[names.CODE_FUNCTION_NAME] = block.call_site.function
        attributes[names.CODE_FILE_PATH] = block.call_site.file
        attributes[names.CODE_LINE_NUMBER] = block.call_site.line
    attributes.update(_call_sites(block))
    attributes.update(_tasks(block))
    if block.activity is not None:
        attributes[names.ON_CPU] = seconds(block.activity.on_cpu_ns)
        attributes[names.OFF_CPU] = seconds(block.activity.off_cpu_ns)
        attributes[names.RUNQ] = seconds(block.activity.runq_ns)
        attributes[names.SIBLING_CPU] = seconds(block.activity.sibling_cpu_ns)
    if block.throttling is not None:
        attributes[names.THROTTLED] = seconds(block.throttling.throttled_ns)
        attributes[names.THROTTLED_PERIODS] = block.throttling.periods
    return attributes


def _tasks(block: Block) -> dict[str, AttributeValue]:
    """The task that ran in the block and the callbacks that waited on it, where known."""
    attributes: dict[str, AttributeValue] = {}
    if block.task is not None:
        attributes.update(_task_attributes(block.task))
    if block.delayed_tasks is not None:
        attributes[names.DELAYED_TASKS] = block.delayed_tasks
        attributes[names.DELAYED_REQUESTS] = len(block.delayed)
        if block.delayed_unread:
            attributes[names.DELAYED_UNREAD] = block.delayed_unread
    return attributes


def _task_attributes(task: TaskRef) -> dict[str, AttributeValue]:
    """The running task's name and coroutine, and (3.14+) the tasks awaiting it."""
    attributes: dict[str, AttributeValue] = {names.TASK_NAME: task.name}
    if task.coroutine:
        attributes[names.TASK_COROUTINE] = task.coroutine
    if task.awaited_by:
        attributes[names.TASK_AWAITED_BY] = list(task.awaited_by)
    if task.awaited_by_more:
        attributes[names.TASK_AWAITED_BY_MORE] = task.awaited_by_more
    return attributes


def call_event(site: CallSite) -> Event:
    """One call site of a block as a span event, at the time it was first seen."""
    attributes: dict[str, str | int | float] = {
        names.CODE_FUNCTION_NAME: site.frame.function,
        names.CODE_FILE_PATH: site.frame.file,
        names.CODE_LINE_NUMBER: site.frame.line,
        names.CALL_SHARE: seconds(site.share_ns),
        names.CALL_SAMPLES: site.samples,
        names.CAUSE: str(site.cause),
    }
    if site.cause == Cause.SYSCALL and site.syscall:
        attributes[names.SYSCALL] = site.syscall
    return Event(names.CALL_EVENT, attributes, timestamp=site.start_unix_ns)


def _parent_context(block: Block, trace_id: int) -> SpanContext | None:
    parent = block.parent
    if parent is None or parent.trace_id != trace_id:
        return None
    return SpanContext(
        parent.trace_id,
        parent.span_id,
        is_remote=True,
        trace_flags=TraceFlags(parent.trace_flags),
    )


def delayed_links(block: Block) -> list[Link]:
    """A link to each request the block delayed (the first ``MAX_DELAYED_LINKS``)."""
    return [
        Link(
            SpanContext(
                span.trace_id,
                span.span_id,
                is_remote=True,
                trace_flags=TraceFlags(span.trace_flags),
            )
        )
        for span in block.delayed[: names.MAX_DELAYED_LINKS]
    ]


def block_span(block: Block, ids: Ids, resource: Resource) -> ReadableSpan:
    """The ``eventloop.block`` span of a block that has ended."""
    trace_id, span_id, flags = ids
    return ReadableSpan(
        name=names.BLOCK_SPAN,
        context=_span_context(trace_id, span_id, flags),
        parent=_parent_context(block, trace_id),
        resource=resource,
        attributes=block_attributes(block),
        events=[call_event(site) for site in block.call_sites],
        kind=SpanKind.INTERNAL,
        links=delayed_links(block),
        start_time=block.start_unix_ns,
        end_time=block.end_unix_ns,
        instrumentation_scope=SCOPE,
    )


def hang_record(block: Block, ids: Ids, resource: Resource) -> ReadableLogRecord:
    """A log record about a block still going on, tied to the span it will get."""
    where = f" in {block.call_site.function}" if block.call_site else ""
    record = LogRecord(
        timestamp=block.end_unix_ns,
        observed_timestamp=time.time_ns(),
        context=in_span(ids),
        severity_text="WARN",
        severity_number=SeverityNumber.WARN,
        body=(
            f"event loop of thread {block.app_tid} blocked for "
            f"{seconds(block.duration_ns):.3f} s so far{where}"
        ),
        attributes={**block_attributes(block), names.DURATION: seconds(block.duration_ns)},
        event_name=names.HANG_EVENT,
    )
    return ReadableLogRecord(log_record=record, resource=resource, instrumentation_scope=SCOPE)
