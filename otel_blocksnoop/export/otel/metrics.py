"""Meters: one provider per watched process (under its resource), one for the sidecar's health."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from otel_blocksnoop import __version__
from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.export import names
from otel_blocksnoop.export.formatting import seconds
from otel_blocksnoop.export.otel.resource import MAX_RESOURCES, sidecar_resource

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.util.types import Attributes

    from otel_blocksnoop.events import Block, LoopTimes
    from otel_blocksnoop.losses import Losses


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


class Meters:
    """Every meter provider of the sink: the watched processes' and the sidecar's."""

    def __init__(
        self, exporter: Callable[[], MetricExporter], interval_ms: int, timeout_ms: int
    ) -> None:
        self._exporter = exporter
        self._interval_ms = interval_ms
        self._timeout_ms = timeout_ms
        self._times: LoopTimes | None = None
        self._processes: BoundedDict[int, ProcessMeters] = BoundedDict(
            MAX_RESOURCES, on_drop=lambda _pid, meters: self._close(meters.provider)
        )
        self._sidecar: SidecarMeters | None = None

    def _provider(self, resource: Resource) -> MeterProvider:
        reader = PeriodicExportingMetricReader(
            self._exporter(), export_interval_millis=self._interval_ms
        )
        return MeterProvider(metric_readers=[reader], resource=resource)

    def _close(self, provider: MeterProvider) -> None:
        provider.shutdown(timeout_millis=self._timeout_ms)

    def _last_times(self) -> LoopTimes | None:
        return self._times

    def of(self, pid: int, resource: Resource) -> ProcessMeters:
        """The meters of a watched process, made on first use."""
        meters = self._processes.get(pid)
        if meters is None:
            provider = self._provider(resource)
            meters = self._processes[pid] = ProcessMeters(provider, pid, self._last_times)
        return meters

    def loop_times(self, times: LoopTimes) -> None:
        """The newest loop times, read when the counters are next collected."""
        self._times = times

    def add_sidecar(self, dropped: Callable[[], Iterable[tuple[str, int]]], losses: Losses) -> None:
        """Report the sidecar's own health under its own resource."""
        provider = self._provider(sidecar_resource())
        self._sidecar = SidecarMeters(provider, self._last_times, dropped, losses)

    def shutdown(self) -> None:
        """Export a last time and stop every provider."""
        for meters in list(self._processes.values()):
            self._close(meters.provider)
        if self._sidecar is not None:
            self._close(self._sidecar.provider)
