"""Meters: one provider per watched process (under its resource), one for the sidecar's health."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from otel_blocksnoop import __version__
from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.export import names
from otel_blocksnoop.export.formatting import seconds
from otel_blocksnoop.export.otel.resource import MAX_RESOURCES, sidecar_resource

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.util.types import Attributes

    from otel_blocksnoop.events import Block, LoopTimes
    from otel_blocksnoop.losses import Losses


log = logging.getLogger(__name__)

Callback = Callable[[CallbackOptions], Iterable[Observation]]
Times = Callable[[], "LoopTimes | None"]  # the newest loop times, if any yet
Dropped = Callable[[], Iterable[tuple[str, int]]]  # records dropped so far, per queue


def _observable_counters(meter: Meter, *counters: tuple[str, str, str, Callback]) -> None:
    """Counters read when metrics are collected; each is (name, unit, description, callback)."""
    for name, unit, description, callback in counters:
        meter.create_observable_counter(
            name, callbacks=[callback], unit=unit, description=description
        )


class ProcessMeters:
    """The meters of one watched process, under its resource."""

    def __init__(self, provider: MeterProvider, pid: int, times: Times) -> None:
        self.provider = provider
        self.pid = pid
        self._times = times
        meter = provider.get_meter(names.SCOPE_NAME, __version__)
        self._duration = meter.create_histogram(
            names.BLOCK_DURATION,
            unit="s",
            description="Duration of event-loop blocks (iterations at or over the threshold)",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS_S),
        )
        self._blocks = meter.create_counter(
            names.BLOCKS, unit="{block}", description="Event-loop blocks reported"
        )
        _observable_counters(
            meter,
            (
                names.LOOP_TIME,
                "s",
                "Time each loop thread spent busy (out of epoll) and idle (in epoll)",
                self._loop_time,
            ),
            (
                names.LOOP_ITERATIONS,
                "{iteration}",
                "Event-loop iterations of each loop thread",
                self._iterations,
            ),
        )

    def record(self, block: Block, context: Context) -> None:
        """One blocked iteration; ``context`` holds its span, for the point's exemplar.

        An iteration split into requests' segments is one point, for its first
        segment, with the whole iteration's duration: the histogram says how
        long the loop was blocked, whoever it was blocked for.
        """
        if block.segment != 0:
            return
        labels: Attributes = {names.THREAD_ID: block.app_tid, names.CAUSE: str(block.cause)}
        self._duration.record(seconds(block.iteration_ns), labels, context=context)
        self._blocks.add(1, labels)

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


class SidecarMeters:
    """The sidecar's own health, under its own resource."""

    def __init__(
        self, provider: MeterProvider, times: Times, dropped: Dropped, losses: Losses
    ) -> None:
        self.provider = provider
        self._times = times
        self._dropped = dropped
        self._losses = losses
        _observable_counters(
            provider.get_meter(names.SCOPE_NAME, __version__),
            (
                names.LOST,
                "{item}",
                "Everything dropped or lost on the way, by what and where",
                self._observe_losses,
            ),
            (
                names.LOST_EVENTS,
                "{block}",
                "Blocks the kernel could not hand over (ring buffer full)",
                self._observe_lost_events,
            ),
            (
                names.DROPPED,
                "{record}",
                "Spans and hang records dropped because the collector was away",
                self._observe_dropped,
            ),
        )

    def _observe_losses(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(count, {names.LOST_WHAT: str(what)})
            for what, count in self._losses.snapshot()
        ]

    def _observe_lost_events(self, _options: CallbackOptions) -> Iterable[Observation]:
        times = self._times()
        return [Observation(times.lost_events if times else 0)]

    def _observe_dropped(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(count, {names.SIGNAL: what}) for what, count in self._dropped()]


class LastExport(MetricExporter):
    """The SDK's exporter, and whether its last export went through (for the last one, at stop)."""

    def __init__(self, exporter: MetricExporter) -> None:
        super().__init__(
            preferred_temporality=exporter._preferred_temporality,  # noqa: SLF001 - passed on as is
            preferred_aggregation=exporter._preferred_aggregation,  # noqa: SLF001
        )
        self._exporter = exporter
        self.busy = False
        self.failed = False

    @property
    def delivered(self) -> bool:
        """The last export went through and none is under way."""
        return not self.busy and not self.failed

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object
    ) -> MetricExportResult:
        self.busy = True
        try:
            result = self._exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            self.failed = True
            raise
        finally:
            self.busy = False
        self.failed = result != MetricExportResult.SUCCESS
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._exporter.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self._exporter.shutdown(timeout_millis=timeout_millis, **kwargs)


class Meters:
    """Every meter provider of the sink: the watched processes' and the sidecar's.

    A provider's shutdown exports a last time and waits for it: each runs in a
    thread of its own (a daemon), so that all of them, and the records' worker,
    share one deadline instead of taking one each in turn, and a provider
    dropped to make room never holds up the pipeline.
    """

    def __init__(
        self, exporter: Callable[[], MetricExporter], interval_ms: int, timeout_ms: int
    ) -> None:
        self._exporter = exporter
        self._interval_ms = interval_ms
        self._timeout_ms = timeout_ms
        self._times: LoopTimes | None = None
        self._processes: BoundedDict[int, ProcessMeters] = BoundedDict(
            MAX_RESOURCES, on_drop=lambda _pid, meters: self._drop(meters.provider)
        )
        self._sidecar: SidecarMeters | None = None
        self._exports: dict[int, LastExport] = {}  # id(provider) -> its exporter
        self._closing: list[tuple[threading.Thread, LastExport]] = []

    def _provider(self, resource: Resource) -> MeterProvider:
        exporter = LastExport(self._exporter())
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=self._interval_ms)
        # No exit hook: shutdown is the sink's, within its deadline.
        provider = MeterProvider(metric_readers=[reader], resource=resource, shutdown_on_exit=False)
        self._exports[id(provider)] = exporter
        return provider

    def _drop(self, provider: MeterProvider) -> None:
        """A provider dropped to make room: closed in the background."""
        self._exports.pop(id(provider), None)
        self._close_in_thread(provider, time.monotonic() + self._timeout_ms / 1000)

    @staticmethod
    def _close_in_thread(provider: MeterProvider, deadline: float) -> threading.Thread:
        def close() -> None:
            remaining_ms = max(0.0, deadline - time.monotonic()) * 1000
            try:
                provider.shutdown(timeout_millis=remaining_ms)
            except Exception:  # the SDK raises what its readers raised: logged, not fatal
                log.debug("failed to shut a meter provider down", exc_info=True)

        thread = threading.Thread(target=close, name="otlp-metrics-close", daemon=True)
        thread.start()
        return thread

    def _last_times(self) -> LoopTimes | None:
        return self._times

    def of(self, pid: int, resource: Resource) -> ProcessMeters:
        """The meters of a watched process, made on first use."""
        meters = self._processes.get(pid)
        if meters is None:
            provider = self._provider(resource)
            meters = self._processes[pid] = ProcessMeters(provider, pid, self._last_times)
        return meters

    def forget(self, pid: int) -> None:
        """``pid`` exited: its provider exports a last time and closes, in the background."""
        meters = self._processes.pop(pid, None)
        if meters is not None:
            self._drop(meters.provider)

    def __len__(self) -> int:
        """Watched processes with meters of their own."""
        return len(self._processes)

    def loop_times(self, times: LoopTimes) -> None:
        """The newest loop times, read when the counters are next collected."""
        self._times = times

    def add_sidecar(self, dropped: Callable[[], Iterable[tuple[str, int]]], losses: Losses) -> None:
        """Report the sidecar's own health under its own resource."""
        provider = self._provider(sidecar_resource())
        self._sidecar = SidecarMeters(provider, self._last_times, dropped, losses)

    def close(self, deadline: float) -> None:
        """Start every provider's last export and shutdown, side by side, due by ``deadline``."""
        providers = [meters.provider for meters in self._processes.values()]
        if self._sidecar is not None:
            providers.append(self._sidecar.provider)
        self._closing = [
            (self._close_in_thread(provider, deadline), self._exports[id(provider)])
            for provider in providers
        ]

    def wait_closed(self, deadline: float) -> int:
        """Wait for ``close`` until ``deadline``; how many last exports did not go through."""
        for thread, _ in self._closing:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(1 for _, exporter in self._closing if not exporter.delivered)

    def shutdown(self, deadline: float) -> int:
        """Export a last time and stop every provider by ``deadline``; the last exports missed."""
        self.close(deadline)
        return self.wait_closed(deadline)
