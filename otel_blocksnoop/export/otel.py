"""OpenTelemetry export: a span per block, a log record per hang report, metrics.

Everything is reported under the *watched app's* resource (its service
name, PID, runtime), one resource per watched process; the sidecar's own
health (blocks lost in the kernel, records dropped on the way out) goes
under a resource of its own.

Spans and hang records wait in bounded queues in front of the SDK's OTLP
exporters: ``export`` never blocks the pipeline; a record leaves its queue
only once delivered, so a collector that is down or restarting loses
nothing until the queue is full; then the oldest records are dropped,
counted, and reported once. A stopping sidecar keeps delivering for up to
``shutdown_timeout_s``. The SDK's batch processor is not used because it
drops failed batches and does not tell how many it dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from otel_blocksnoop import __version__
from otel_blocksnoop.events import (
    NS_PER_S,
    Block,
    Cause,
    LoopTimes,
    ProcessIdentity,
    Record,
)
from otel_blocksnoop.export import names
from otel_blocksnoop.export.formatting import format_traceback

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.util.types import Attributes

    from otel_blocksnoop.export.otlp import Exporters, OtlpSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
MAX_RESOURCES = 64
"""Watched processes whose resource and meters are kept; the oldest go past this."""
MAX_ONGOING = 1024
"""Blocks still going on whose span ids are kept for their final span; the oldest go."""
SCOPE = InstrumentationScope(names.SCOPE_NAME, __version__)
BlockKey = tuple[int, int, int]
SpanIds = tuple[int, int, int]  # trace id, span id, trace flags


def _span_context(trace_id: int, span_id: int, flags: int = TraceFlags.SAMPLED) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags))


def _in_span(trace_id: int, span_id: int, flags: int) -> Context:
    """A context whose current span is this one: for log records and exemplars."""
    return trace.set_span_in_context(
        trace.NonRecordingSpan(_span_context(trace_id, span_id, flags))
    )


def seconds(ns: int) -> float:
    return ns / NS_PER_S


class DeliveryQueue(Generic[T]):
    """A bounded queue in front of one exporter: records leave it only once delivered."""

    def __init__(
        self, what: str, export: Callable[[list[T]], bool], max_items: int, batch_size: int
    ) -> None:
        self.what = what
        self._export = export
        self._max = max_items
        self._batch = batch_size
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self.dropped = 0
        self.delivered = 0
        self.in_flight = 0  # records handed to the exporter, not yet known delivered
        self._failures = 0
        self._retry_at = 0.0
        self._warned_full = False

    def put(self, item: T) -> bool:
        """Queue ``item``; the oldest record is dropped when full. True when a batch is ready."""
        with self._lock:
            if len(self._items) >= self._max:
                self._items.popleft()
                self.dropped += 1
                if not self._warned_full:
                    self._warned_full = True
                    log.warning(
                        "OTLP export queue of %s is full (%d): dropping the oldest; "
                        "the collector is away or too slow",
                        self.what,
                        self._max,
                    )
            self._items.append(item)
            return len(self._items) >= self._batch

    def __len__(self) -> int:
        return len(self._items)

    def deliver(self, now: float, final: bool = False) -> bool:
        """Export what is queued, batch by batch; False if the collector refused or is away."""
        if not final and now < self._retry_at:
            return False
        while True:
            with self._lock:
                batch = [self._items.popleft() for _ in range(min(self._batch, len(self._items)))]
            if not batch:
                return True
            self.in_flight = len(batch)
            try:
                ok = self._export(batch)
            except Exception:
                log.exception("failed to export %s", self.what)
                ok = False
            self.in_flight = 0
            if not ok:
                self._requeue(batch, now)
                return False
            self.delivered += len(batch)
            if self._failures:
                log.info("OTLP export of %s works again", self.what)
            self._failures = 0
            self._warned_full = False

    def _requeue(self, batch: list[T], now: float) -> None:
        with self._lock:
            room = self._max - len(self._items)
            keep = batch[-room:] if room > 0 else []
            self.dropped += len(batch) - len(keep)
            self._items.extendleft(reversed(keep))
        delay = RETRY_BACKOFF_S[min(self._failures, len(RETRY_BACKOFF_S) - 1)]
        if self._failures == 0:
            log.warning(
                "failed to export %s over OTLP; keeping them (up to %d) and retrying",
                self.what,
                self._max,
            )
        self._failures += 1
        self._retry_at = now + delay


class _ProcessMeters:
    """The meters of one watched process, under its resource."""

    def __init__(
        self, provider: MeterProvider, pid: int, times: Callable[[], LoopTimes | None]
    ) -> None:
        self.provider = provider
        self.pid = pid
        self._times = times
        meter = provider.get_meter(names.SCOPE_NAME, __version__)
        self.duration = meter.create_histogram(
            names.BLOCK_DURATION,
            unit="s",
            description="Duration of event-loop blocks (iterations at or over the threshold)",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS_S),
        )
        self.blocks = meter.create_counter(
            names.BLOCKS, unit="{block}", description="Event-loop blocks reported"
        )
        meter.create_observable_counter(
            names.LOOP_TIME,
            callbacks=[self._loop_time],
            unit="s",
            description="Time each loop thread spent busy (out of epoll) and idle (in epoll)",
        )
        meter.create_observable_counter(
            names.LOOP_ITERATIONS,
            callbacks=[self._iterations],
            unit="{iteration}",
            description="Event-loop iterations of each loop thread",
        )

    def _threads(self) -> list[tuple[int, int, int, int]]:
        times = self._times()
        if times is None:
            return []
        return [
            (t.tid, t.iterations, t.busy_ns, t.idle_ns) for t in times.threads if t.pid == self.pid
        ]

    def _loop_time(self, _options: CallbackOptions) -> Iterable[Observation]:
        for tid, _, busy, idle in self._threads():
            yield Observation(seconds(busy), {names.THREAD_ID: tid, names.LOOP_STATE: "busy"})
            yield Observation(seconds(idle), {names.THREAD_ID: tid, names.LOOP_STATE: "idle"})

    def _iterations(self, _options: CallbackOptions) -> Iterable[Observation]:
        for tid, iterations, _, _ in self._threads():
            yield Observation(iterations, {names.THREAD_ID: tid})


def process_resource(
    identity: ProcessIdentity | None, pid: int, fallback_service: str | None
) -> Resource:
    """The watched app's resource: its own OTel settings first, then ours (DESIGN.md)."""
    attributes: dict[str, str | int] = {}
    if identity is not None:
        attributes.update(dict(identity.resource_attributes))
        if identity.executable_path:
            attributes[names.PROCESS_EXECUTABLE_PATH] = identity.executable_path
            attributes[names.PROCESS_EXECUTABLE_NAME] = Path(identity.executable_path).name
        if identity.runtime_version:
            attributes[names.PROCESS_RUNTIME_NAME] = "cpython"
            attributes[names.PROCESS_RUNTIME_VERSION] = identity.runtime_version
        attributes[names.SERVICE_INSTANCE_ID] = identity.instance_id
    service = (identity.service_name if identity else None) or fallback_service
    attributes[names.SERVICE_NAME] = service or names.UNKNOWN_SERVICE
    attributes[names.PROCESS_PID] = pid
    attributes.setdefault(names.HOST_NAME, socket.gethostname())
    # Resource.create adds telemetry.sdk.* and the sidecar's OTEL_RESOURCE_ATTRIBUTES,
    # under what is given here.
    return Resource.create(attributes)


def block_attributes(block: Block) -> dict[str, str | int | float]:
    """The span attributes of a block (DESIGN.md, "Contracts")."""
    attributes: dict[str, str | int | float] = {
        names.PROCESS_PID: block.pid,
        names.THREAD_ID: block.tid,
        names.CAUSE: str(block.cause),
        names.THRESHOLD: seconds(block.threshold_ns),
        names.THREAD_KIND: str(block.thread_kind),
    }
    if not block.in_progress:
        attributes[names.END_REASON] = str(block.end_reason)
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
    if block.task is not None:
        attributes[names.TASK_NAME] = block.task.name
        if block.task.coroutine:
            attributes[names.TASK_COROUTINE] = block.task.coroutine
    if block.activity is not None:
        attributes[names.ON_CPU] = seconds(block.activity.on_cpu_ns)
        attributes[names.OFF_CPU] = seconds(block.activity.off_cpu_ns)
        attributes[names.RUNQ] = seconds(block.activity.runq_ns)
        attributes[names.SIBLING_CPU] = seconds(block.activity.sibling_cpu_ns)
    return attributes


class OtelSink:
    """Blocks as spans, hangs as log records, durations and loop time as metrics."""

    def __init__(self, exporters: Exporters, settings: OtlpSettings) -> None:
        self._settings = settings
        self._ids = RandomIdGenerator()
        self._span_ids: dict[BlockKey, SpanIds] = {}
        self._resources: dict[int, Resource] = {}
        self._meters: dict[int, _ProcessMeters] = {}
        self._metric_exporter = exporters.metrics
        self._times: LoopTimes | None = None
        self._spans: DeliveryQueue[ReadableSpan] | None = None
        self._logs: DeliveryQueue[ReadableLogRecord] | None = None
        self._span_exporter = exporters.spans
        self._log_exporter = exporters.logs
        if exporters.spans is not None:
            spans = exporters.spans
            self._spans = DeliveryQueue(
                "spans",
                lambda batch: spans.export(batch) == SpanExportResult.SUCCESS,
                settings.max_queue,
                settings.batch_size,
            )
        if exporters.logs is not None:
            logs = exporters.logs
            self._logs = DeliveryQueue(
                "hang records",
                lambda batch: logs.export(batch) == LogRecordExportResult.SUCCESS,
                settings.max_queue,
                settings.batch_size,
            )
        self._self_meters = self._sidecar_meters()
        self._wake = threading.Event()
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="otlp-export", daemon=True)
        self._worker.start()

    def export(self, record: Record) -> None:
        match record:
            case Block(in_progress=True):
                self._hang(record)
            case Block():
                self._block(record)
            case LoopTimes():
                self._loop_times(record)
            case _:
                pass  # stats mode has no OTLP form yet; the counters carry the totals

    def shutdown(self) -> None:
        """Deliver what is queued within the deadline, then say what could not be."""
        pending = sum(len(queue) for queue in self._queues())
        if pending:
            log.info(
                "delivering %d queued records over OTLP (up to %g s)...",
                pending,
                self._settings.shutdown_timeout_s,
            )
        self._stopping = True
        self._wake.set()
        self._worker.join(self._settings.shutdown_timeout_s)
        for exporter in (self._span_exporter, self._log_exporter):
            if exporter is not None:
                exporter.shutdown()
        providers = [meters.provider for meters in self._meters.values()]
        if self._self_meters is not None:
            providers.append(self._self_meters.provider)
        for provider in providers:
            provider.shutdown(timeout_millis=self._timeout_ms())
        for queue in self._queues():
            lost = queue.dropped + len(queue) + queue.in_flight
            if lost:
                log.warning(
                    "failed to deliver %d %s over OTLP (%d delivered): the collector "
                    "was away or too slow",
                    lost,
                    queue.what,
                    queue.delivered,
                )

    # -- internals ------------------------------------------------------------

    def _block(self, block: Block) -> None:
        key = (block.pid, block.tid, block.start_ns)
        ids = self._span_ids.pop(key, None) or self._ids_for(block)
        trace_id, span_id, flags = ids
        resource = self._resource(block)
        sampled = bool(flags & TraceFlags.SAMPLED) or not self._settings.follow_app_sampling
        if self._spans is not None and sampled:
            span = ReadableSpan(
                name=names.BLOCK_SPAN,
                context=_span_context(trace_id, span_id, flags),
                parent=self._parent_context(block, trace_id),
                resource=resource,
                attributes=block_attributes(block),
                kind=SpanKind.INTERNAL,
                start_time=block.start_unix_ns,
                end_time=block.end_unix_ns,
                instrumentation_scope=SCOPE,
            )
            if self._spans.put(span):
                self._wake.set()
        meters = self._process_meters(block.pid, resource)
        if meters is not None:
            labels: Attributes = {names.THREAD_ID: block.tid, names.CAUSE: str(block.cause)}
            # In the span's context, so the point carries an exemplar pointing at it
            # (only when the span is exported: the SDK keeps exemplars of sampled spans).
            in_span = _in_span(trace_id, span_id, flags if sampled else 0)
            meters.duration.record(seconds(block.duration_ns), labels, context=in_span)
            meters.blocks.add(1, labels)

    def _ids_for(self, block: Block) -> SpanIds:
        """A new span in the app's trace (with its sampling decision), or in a trace of its own."""
        trace_id, span_id = self._new_ids()
        if block.parent is not None:
            return block.parent.trace_id, span_id, block.parent.trace_flags
        return trace_id, span_id, TraceFlags.SAMPLED

    @staticmethod
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

    def _hang(self, block: Block) -> None:
        """A log record now, tied to the span the block will get when it ends."""
        if self._logs is None:
            return
        key = (block.pid, block.tid, block.start_ns)
        if key not in self._span_ids:
            while len(self._span_ids) >= MAX_ONGOING:
                del self._span_ids[next(iter(self._span_ids))]
            self._span_ids[key] = self._ids_for(block)
        context = _in_span(*self._span_ids[key])
        attributes = {**block_attributes(block), names.DURATION: seconds(block.duration_ns)}
        where = f" in {block.call_site.function}" if block.call_site else ""
        record = LogRecord(
            timestamp=block.end_unix_ns,
            observed_timestamp=time.time_ns(),
            context=context,
            severity_text="WARN",
            severity_number=SeverityNumber.WARN,
            body=(
                f"event loop of thread {block.tid} blocked for "
                f"{seconds(block.duration_ns):.3f} s so far{where}"
            ),
            attributes=attributes,
            event_name=names.HANG_EVENT,
        )
        readable = ReadableLogRecord(
            log_record=record, resource=self._resource(block), instrumentation_scope=SCOPE
        )
        self._logs.put(readable)
        self._wake.set()  # a hang is news: do not wait for a batch

    def _loop_times(self, times: LoopTimes) -> None:
        self._times = times
        for identity in times.identities:
            self._process_meters(identity.pid, self._resource_of(identity.pid, identity))

    def _queues(self) -> list[DeliveryQueue[ReadableSpan] | DeliveryQueue[ReadableLogRecord]]:
        return [queue for queue in (self._spans, self._logs) if queue is not None]

    def _timeout_ms(self) -> int:
        return int(self._settings.shutdown_timeout_s * 1000)

    def _work(self) -> None:
        while not self._stopping:
            self._wake.wait(self._settings.schedule_delay_s)
            self._wake.clear()
            now = time.monotonic()
            for queue in self._queues():
                queue.deliver(now)
        deadline = time.monotonic() + self._settings.shutdown_timeout_s
        for queue in self._queues():
            while len(queue) and time.monotonic() < deadline:
                if not queue.deliver(time.monotonic(), final=True):
                    break

    def _new_ids(self) -> tuple[int, int]:
        """A new trace id and span id."""
        return self._ids.generate_trace_id(), self._ids.generate_span_id()

    def _resource(self, block: Block) -> Resource:
        return self._resource_of(block.pid, block.process)

    def _resource_of(self, pid: int, identity: ProcessIdentity | None) -> Resource:
        resource = self._resources.get(pid)
        if resource is None:
            while len(self._resources) >= MAX_RESOURCES:
                del self._resources[next(iter(self._resources))]
            resource = process_resource(identity, pid, self._settings.fallback_service)
            self._resources[pid] = resource
        return resource

    def _process_meters(self, pid: int, resource: Resource) -> _ProcessMeters | None:
        if self._metric_exporter is None:
            return None
        meters = self._meters.get(pid)
        if meters is None:
            while len(self._meters) >= MAX_RESOURCES:
                oldest = self._meters.pop(next(iter(self._meters)))
                oldest.provider.shutdown(timeout_millis=self._timeout_ms())
            meters = _ProcessMeters(self._meter_provider(resource), pid, lambda: self._times)
            self._meters[pid] = meters
        return meters

    def _meter_provider(self, resource: Resource) -> MeterProvider:
        assert self._metric_exporter is not None  # noqa: S101 - checked by the callers
        reader = PeriodicExportingMetricReader(
            self._metric_exporter(), export_interval_millis=self._settings.metric_interval_ms
        )
        return MeterProvider(metric_readers=[reader], resource=resource)

    def _sidecar_meters(self) -> _SidecarMeters | None:
        if self._metric_exporter is None:
            return None
        resource = Resource.create(
            {
                names.SERVICE_NAME: names.SCOPE_NAME,
                names.PROCESS_PID: os.getpid(),
                names.HOST_NAME: socket.gethostname(),
            }
        )
        return _SidecarMeters(self._meter_provider(resource), self)

    def health(self) -> tuple[int, list[tuple[str, int]]]:
        """Blocks lost in the kernel so far, and records dropped per queue."""
        lost = self._times.lost_events if self._times else 0
        return lost, [(queue.what, queue.dropped) for queue in self._queues()]


class _SidecarMeters:
    """The sidecar's own health, under its own resource."""

    def __init__(self, provider: MeterProvider, sink: OtelSink) -> None:
        self.provider = provider
        self._sink = sink
        meter = provider.get_meter(names.SCOPE_NAME, __version__)
        meter.create_observable_counter(
            names.LOST_EVENTS,
            callbacks=[self._lost],
            unit="{block}",
            description="Blocks the kernel could not hand over (ring buffer full)",
        )
        meter.create_observable_counter(
            names.DROPPED,
            callbacks=[self._dropped],
            unit="{record}",
            description="Spans and hang records dropped because the collector was away",
        )

    def _lost(self, _options: CallbackOptions) -> Sequence[Observation]:
        return [Observation(self._sink.health()[0])]

    def _dropped(self, _options: CallbackOptions) -> Sequence[Observation]:
        return [
            Observation(count, {"blocksnoop.signal": what})
            for what, count in self._sink.health()[1]
        ]
