"""``OtelSink``: blocks as spans, hangs as log records, durations and loop time as metrics.

Spans and hang records wait in bounded queues in front of the SDK's OTLP
exporters (``queue``): ``export`` never blocks the pipeline; a record leaves
its queue only once delivered, so a collector that is down or restarting
loses nothing until the queue is full; then the oldest records are dropped,
counted, and reported once. A stopping sidecar keeps delivering until one
deadline (``shutdown_timeout_s`` by default), spans, hang records and every
meter provider's last export side by side; then the exporters are shut down,
which ends their own retries, and what did not go is counted
(``export.undelivered``). The SDK's batch processor is not used because it
drops failed batches and does not tell how many it dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_blocksnoop.events import Block, LoopTimes, Loss, ProcessExited, Record
from otel_blocksnoop.export.otel.metrics import Meters
from otel_blocksnoop.export.otel.queue import DeliveryQueue, DeliveryWorker
from otel_blocksnoop.export.otel.resource import Resources
from otel_blocksnoop.export.otel.spans import SpanIds, block_span, hang_record, in_span, sampled

if TYPE_CHECKING:
    from otel_blocksnoop.export.otlp import Exporters, OtlpSettings
    from otel_blocksnoop.losses import Losses

log = logging.getLogger(__name__)

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
SUCCESS = frozenset({SpanExportResult.SUCCESS, LogRecordExportResult.SUCCESS})


class _Exporter(Protocol[T_contra]):
    """The SDK's span and log record exporters, as far as a queue needs them."""

    def export(self, batch: Sequence[T_contra], /) -> SpanExportResult | LogRecordExportResult:
        """Send one batch (the exporter retries transient failures itself)."""


def _queue(
    what: str, exporter: _Exporter[T], settings: OtlpSettings, losses: Losses
) -> DeliveryQueue[T]:
    """A queue in front of ``exporter``; a batch is delivered when it reports success."""
    return DeliveryQueue(
        what,
        lambda batch: exporter.export(batch) in SUCCESS,
        settings.max_queue,
        settings.batch_size,
        losses=losses,
        pause_s=settings.schedule_delay_s,
    )


class OtelSink:
    """Blocks as spans, hangs as log records, durations and loop time as metrics."""

    def __init__(self, exporters: Exporters, settings: OtlpSettings, losses: Losses) -> None:
        self._settings = settings
        self._losses = losses
        self._ids = SpanIds()
        self._resources = Resources(settings.fallback_service)
        self._span_exporter = spans = exporters.spans
        self._log_exporter = logs = exporters.logs
        self._spans = None if spans is None else _queue("spans", spans, settings, losses)
        self._logs = None if logs is None else _queue("hang records", logs, settings, losses)
        self._meters: Meters | None = None
        if exporters.metrics is not None:
            self._meters = Meters(
                exporters.metrics, settings.metric_interval_ms, self._timeout_ms()
            )
            self._meters.add_sidecar(self._dropped, losses)
        self._worker = DeliveryWorker(self._queues(), settings.schedule_delay_s)
        self._drained = False

    def export(self, record: Record) -> None:
        match record:
            case Block(in_progress=True):
                self._hang(record)
            case Block():
                self._block(record)
            case LoopTimes():
                self._loop_times(record)
            case ProcessExited(pid=pid):
                # Its meters export a last time, in the background; a process that
                # gets its PID next has a resource and meters of its own.
                self._resources.forget(pid)
                if self._meters is not None:
                    self._meters.forget(pid)
            case _:
                pass  # stats mode has no OTLP form yet; the counters carry the totals

    def pending(self) -> dict[str, int]:
        return {queue.what: queue.pending for queue in self._queues()}

    def shutdown(self, deadline: float | None = None) -> None:
        """``drain`` (by the settings' timeout if no deadline is given), if not done yet."""
        if deadline is None:
            deadline = time.monotonic() + self._settings.shutdown_timeout_s
        if not self._drained:
            self.drain(deadline)

    def drain(self, deadline: float) -> None:
        """Deliver what is queued, and the metrics a last time, by ``deadline``; say what not."""
        self._drained = True
        pending = sum(queue.pending for queue in self._queues())
        if pending:
            log.info(
                "delivering %d queued records over OTLP (up to %.1f s)...",
                pending,
                max(0.0, deadline - time.monotonic()),
            )
        if self._meters is not None:
            self._meters.close(deadline)  # in threads of their own, beside the records' worker
        self._worker.stop(deadline)
        undelivered = [queue.close() for queue in self._queues()]
        for exporter in (self._span_exporter, self._log_exporter):
            if exporter is not None:
                exporter.shutdown()  # also ends a retry still under way
        if self._meters is not None and (missed := self._meters.wait_closed(deadline)):
            self._losses.add(Loss.EXPORT_UNDELIVERED, missed)
            log.warning(
                "failed to deliver the last metrics of %d resource%s over OTLP: the collector "
                "was away or too slow",
                missed,
                "" if missed == 1 else "s",
            )
        for queue, left in zip(self._queues(), undelivered, strict=True):
            lost = queue.dropped + left
            if lost:
                log.warning(
                    "failed to deliver %d %s over OTLP (%d delivered): the collector "
                    "was away or too slow",
                    lost,
                    queue.what,
                    queue.delivered,
                )

    def _block(self, block: Block) -> None:
        ids = self._ids.ended(block)
        resource = self._resources.of(block.pid, block.process)
        exported = sampled(ids) or not self._settings.follow_app_sampling
        if (
            self._spans is not None
            and exported
            and self._spans.put(block_span(block, ids, resource))
        ):
            self._worker.wake()
        if self._meters is not None:
            # In the span's context, so the point carries an exemplar pointing at it
            # (only when the span is exported: the SDK keeps exemplars of sampled spans).
            trace_id, span_id, flags = ids
            context = in_span((trace_id, span_id, flags if exported else 0))
            self._meters.of(block.pid, resource).record(block, context)

    def _hang(self, block: Block) -> None:
        """A log record now, tied to the span the block will get when it ends."""
        if self._logs is None:
            return
        ids = self._ids.ongoing(block)
        self._logs.put(hang_record(block, ids, self._resources.of(block.pid, block.process)))
        self._worker.wake()  # a hang is news: do not wait for a batch

    def _loop_times(self, times: LoopTimes) -> None:
        if self._meters is None:
            return
        self._meters.loop_times(times)
        for identity in times.identities:
            self._meters.of(identity.pid, self._resources.of(identity.pid, identity))

    def _queues(self) -> list[DeliveryQueue[ReadableSpan] | DeliveryQueue[ReadableLogRecord]]:
        return [queue for queue in (self._spans, self._logs) if queue is not None]

    def _dropped(self) -> list[tuple[str, int]]:
        return [(queue.what, queue.dropped) for queue in self._queues()]

    def _timeout_ms(self) -> int:
        return int(self._settings.shutdown_timeout_s * 1000)
