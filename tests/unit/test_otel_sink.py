"""The OpenTelemetry sink with the SDK's in-memory exporters and a scripted collector."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_blocksnoop.bounded import MAX_WATCHED_PROCESSES
from otel_blocksnoop.events import (
    Activity,
    Block,
    CallSite,
    Cause,
    EndReason,
    Frame,
    Iteration,
    LoopTimes,
    Loss,
    ProcessExited,
    ProcessIdentity,
    Sleep,
    SpanRef,
    ThreadKind,
    ThreadTimes,
    Throttling,
)
from otel_blocksnoop.export.otel import OtelSink
from otel_blocksnoop.export.otel.queue import DeliveryQueue
from otel_blocksnoop.export.otlp import MAX_SERVICE_NAME, Exporters, settings_from
from otel_blocksnoop.losses import Losses

APP = ProcessIdentity(
    pid=42,
    service_name="checkout",
    resource_attributes=(("deployment.environment", "prod"), ("service.name", "ignored")),
    executable_path="/usr/bin/python3.11",
    runtime_version="3.11",
    instance_id="0c7d1f4e-0000-5000-8000-000000000001",
    host_name="checkout-5d8f",
    container_id="c0" * 32,
)
BLOCK = Block(
    pid=42,
    tid=43,
    thread_name="loop",
    start_ns=5_000_000_000,
    end_ns=5_250_000_000,
    start_unix_ns=1_700_000_000_000_000_000,
    end_unix_ns=1_700_000_000_250_000_000,
    threshold_ns=100_000_000,
    thread_kind=ThreadKind.LOOP,
    stack=(Frame("main", "/srv/app.py", 3), Frame("handler", "/srv/app.py", 12)),
    source_lines=("main()", "subprocess.run(cmd)"),
    call_site=Frame("handler", "/srv/app.py", 12),
    samples=40,
    samples_busy=48,
    cause=Cause.SYSCALL,
    syscall="wait4",
    activity=Activity(
        on_cpu_ns=2_000_000,
        runq_ns=0,
        sleep_ns=248_000_000,
        sleeps=(Sleep("wait4", 248_000_000, 1),),
        other_sleep_ns=0,
        sibling_cpu_ns=0,
    ),
    process=APP,
)
SETTINGS = settings_from(
    {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_BSP_SCHEDULE_DELAY": "10",
        "OTEL_METRIC_EXPORT_INTERVAL": "60000",
        "OTEL_BSP_EXPORT_TIMEOUT": "2000",
    }
)


class CollectingMetrics(MetricExporter):
    """Keeps every MetricsData it is given."""

    def __init__(self) -> None:
        super().__init__(preferred_temporality={})
        self.batches: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        _ = timeout_millis, kwargs
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        _ = timeout_millis
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        _ = timeout_millis, kwargs

    def points(self, service: str) -> dict[str, list[Any]]:
        """Data points per metric name, for the resource of ``service``."""
        found: dict[str, list[Any]] = {}
        for batch in self.batches:
            for resource_metrics in batch.resource_metrics:
                if resource_metrics.resource.attributes.get("service.name") != service:
                    continue
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


class Harness:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]  # SDK
        self.metrics: list[CollectingMetrics] = []
        self.losses = Losses()
        self.sink = OtelSink(Exporters(self.spans, self.logs, self._metrics), SETTINGS, self.losses)

    def _metrics(self) -> MetricExporter:
        exporter = CollectingMetrics()
        self.metrics.append(exporter)
        return exporter

    def points(self, service: str) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        for exporter in self.metrics:
            for name, points in exporter.points(service).items():
                found.setdefault(name, []).extend(points)
        return found


def test_a_block_is_one_internal_span_with_the_contract_names_times_and_resource() -> None:
    harness = Harness()
    harness.sink.export(BLOCK)
    harness.sink.shutdown()
    (span,) = harness.spans.get_finished_spans()
    assert span.name == "eventloop.block"
    assert span.kind.name == "INTERNAL"
    assert (span.start_time, span.end_time) == (BLOCK.start_unix_ns, BLOCK.end_unix_ns)
    assert span.parent is None
    attributes = dict(span.attributes or {})
    assert attributes["process.pid"] == 42
    assert attributes["thread.id"] == 43
    assert attributes["thread.name"] == "loop"
    assert attributes["code.function.name"] == "handler"
    assert attributes["code.file.path"] == "/srv/app.py"
    assert attributes["code.line.number"] == 12
    assert str(attributes["code.stacktrace"]).endswith(
        "line 12, in handler\n    subprocess.run(cmd)"
    )
    assert (attributes["blocksnoop.cause"], attributes["blocksnoop.syscall"]) == (
        "syscall",
        "wait4",
    )
    assert attributes["blocksnoop.end_reason"] == "returned"
    resource = dict(span.resource.attributes)
    # the app's own service name wins over the service.name in its resource attributes
    assert resource["service.name"] == "checkout"
    assert resource["deployment.environment"] == "prod"
    assert resource["process.pid"] == 42
    assert resource["process.runtime.version"] == "3.11"
    assert resource["service.instance.id"] == APP.instance_id
    assert resource["host.name"] == "checkout-5d8f"
    assert resource["container.id"] == "c0" * 32


def test_an_app_with_no_name_gets_the_fallback_then_the_unknown_service() -> None:
    harness = Harness()
    nameless = replace(BLOCK, process=replace(APP, service_name=None, resource_attributes=()))
    harness.sink.export(replace(nameless, pid=7))
    harness.sink.shutdown()
    (span,) = harness.spans.get_finished_spans()
    assert span.resource.attributes["service.name"] == "unknown_service:python"


def test_an_apps_overlong_service_name_is_cut_to_the_cap_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN an app whose environment sets a service name of 10,000 characters
    harness = Harness()
    huge = replace(BLOCK, process=replace(APP, service_name="s" * 10_000))

    # WHEN two of its blocks are exported
    with caplog.at_level(logging.WARNING):
        harness.sink.export(replace(huge, pid=8))
        harness.sink.export(replace(huge, pid=8))
    harness.sink.shutdown()

    # THEN its spans carry the first MAX_SERVICE_NAME characters, and one warning says so
    spans = harness.spans.get_finished_spans()
    assert [span.resource.attributes["service.name"] for span in spans] == [
        "s" * MAX_SERVICE_NAME
    ] * 2
    warnings = [r.getMessage() for r in caplog.records if "service.name" in r.getMessage()]
    assert warnings == [
        f"service.name of PID 8 is 10000 characters long: kept to its first {MAX_SERVICE_NAME}"
    ]


def test_a_cpu_block_has_no_syscall_and_a_block_without_stack_no_code_attributes() -> None:
    harness = Harness()
    harness.sink.export(replace(BLOCK, cause=Cause.CPU, syscall=None, stack=(), call_site=None))
    harness.sink.shutdown()
    attributes = dict(harness.spans.get_finished_spans()[0].attributes or {})
    assert "blocksnoop.syscall" not in attributes
    assert not {"code.stacktrace", "code.function.name"} & attributes.keys()


def test_a_block_links_to_the_first_sixteen_requests_it_delayed_and_counts_them_all() -> None:
    # GIVEN a block that 20 ready callbacks of 18 other requests waited on
    delayed = tuple(
        SpanRef(trace_id=0x100 + i, span_id=0x200 + i, trace_flags=1) for i in range(18)
    )
    harness = Harness()
    harness.sink.export(replace(BLOCK, delayed_tasks=20, delayed=delayed))
    harness.sink.shutdown()
    (span,) = harness.spans.get_finished_spans()
    # THEN it links to the first 16 of them, in order, and counts all
    assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [
        (0x100 + i, 0x200 + i) for i in range(16)
    ]
    attributes = dict(span.attributes or {})
    assert (attributes["blocksnoop.delayed.tasks"], attributes["blocksnoop.delayed.requests"]) == (
        20,
        18,
    )


def test_a_block_whose_waiting_callbacks_are_not_known_says_nothing_of_them() -> None:
    harness = Harness()
    harness.sink.export(BLOCK)
    harness.sink.shutdown()
    (span,) = harness.spans.get_finished_spans()
    assert not span.links
    assert not {"blocksnoop.delayed.tasks", "blocksnoop.delayed.requests"} & set(
        dict(span.attributes or {})
    )


def test_each_call_site_is_a_span_event_in_order_and_code_attributes_stay_the_dominant() -> None:
    # GIVEN a block held by a 60 ms query, then 150 ms of key derivation
    query = CallSite(
        Frame("query", "/srv/db.py", 7), BLOCK.start_ns, BLOCK.start_unix_ns, 60_000_000, 60,
        Cause.SYSCALL, "recvfrom",
    )  # fmt: skip
    derive = CallSite(
        Frame("derive", "/srv/auth.py", 3), BLOCK.start_ns + 60_000_000,
        BLOCK.start_unix_ns + 60_000_000, 150_000_000, 150, Cause.CPU,
    )  # fmt: skip
    harness = Harness()
    # WHEN it is exported with its call sites, one left out
    harness.sink.export(replace(BLOCK, call_sites=(query, derive), call_sites_left_out=1))
    harness.sink.shutdown()
    (span,) = harness.spans.get_finished_spans()
    # THEN each call site is an eventloop.block.call event at its start, in order
    assert [event.name for event in span.events] == ["eventloop.block.call"] * 2
    assert [event.timestamp for event in span.events] == [
        BLOCK.start_unix_ns,
        BLOCK.start_unix_ns + 60_000_000,
    ]
    first, second = (dict(event.attributes or {}) for event in span.events)
    assert first["code.function.name"] == "query"
    assert (first["code.file.path"], first["code.line.number"]) == ("/srv/db.py", 7)
    assert first["blocksnoop.call.share"] == 0.06
    assert (first["blocksnoop.cause"], first["blocksnoop.syscall"]) == ("syscall", "recvfrom")
    assert second["blocksnoop.cause"] == "cpu"
    assert "blocksnoop.syscall" not in second
    attributes = dict(span.attributes or {})
    assert attributes["blocksnoop.call_sites"] == "query 60.0 ms recvfrom(); derive 150.0 ms cpu"
    assert attributes["blocksnoop.call_sites.left_out"] == 1
    # AND the span's own code.* attributes are still the dominant stack's call site
    assert attributes["code.function.name"] == "handler"


def test_hang_reports_are_log_records_that_share_the_final_spans_trace_and_span_id() -> None:
    # GIVEN a hang reported twice while it lasted, then its final block
    harness = Harness()
    so_far = replace(BLOCK, in_progress=True, end_unix_ns=BLOCK.start_unix_ns + 150_000_000)
    harness.sink.export(so_far)
    harness.sink.export(replace(so_far, end_unix_ns=BLOCK.start_unix_ns + 1_200_000_000))
    harness.sink.export(replace(BLOCK, end_reason=EndReason.THREAD_EXITED))
    harness.sink.shutdown()
    # THEN both records point at the span the block got
    (span,) = harness.spans.get_finished_spans()
    records = [readable.log_record for readable in harness.logs.get_finished_logs()]
    assert len(records) == 2
    assert {(r.trace_id, r.span_id) for r in records} == {
        (span.context.trace_id, span.context.span_id)
    }
    assert all(r.event_name == "eventloop.block.in_progress" for r in records)
    assert "blocksnoop.end_reason" not in (records[0].attributes or {})
    assert (span.attributes or {})["blocksnoop.end_reason"] == "thread_exited"


def test_a_hang_reported_before_its_request_was_known_ends_as_a_span_in_that_request() -> None:
    # GIVEN a hang reported with no parent yet, whose block then ends with one
    harness = Harness()
    request = SpanRef(trace_id=0xABC, span_id=0xDEF, trace_flags=1)
    harness.sink.export(replace(BLOCK, parent=None, in_progress=True))
    harness.sink.export(replace(BLOCK, parent=request))
    harness.sink.shutdown()
    # THEN the final span is in the request's trace, not the trace the report was in
    (span,) = harness.spans.get_finished_spans()
    assert span.context.trace_id == 0xABC
    assert span.parent is not None
    assert span.parent.span_id == 0xDEF
    (record,) = [readable.log_record for readable in harness.logs.get_finished_logs()]
    assert record.trace_id != 0xABC


def test_durations_go_to_a_histogram_in_seconds_and_loop_time_to_counters() -> None:
    harness = Harness()
    harness.sink.export(BLOCK)
    times = ThreadTimes(pid=42, tid=43, iterations=1000, busy_ns=3 * 10**9, idle_ns=7 * 10**9)
    harness.sink.export(LoopTimes(threads=(times,), lost_events=0, identities=(APP,)))
    harness.sink.shutdown()
    points = harness.points("checkout")
    (histogram,) = points["blocksnoop.eventloop.block.duration"]
    assert histogram.count == 1
    assert histogram.sum == 0.25
    assert histogram.attributes == {"thread.id": 43, "blocksnoop.cause": "syscall"}
    # the point's exemplar leads to the block's span
    (span,) = harness.spans.get_finished_spans()
    (exemplar,) = histogram.exemplars
    assert (exemplar.trace_id, exemplar.span_id) == (span.context.trace_id, span.context.span_id)
    loop_time = {
        p.attributes["blocksnoop.eventloop.state"]: p.value
        for p in points["blocksnoop.eventloop.time"]
    }
    assert loop_time == {"busy": 3.0, "idle": 7.0}
    assert points["blocksnoop.eventloop.iterations"][0].value == 1000


class Outage(SpanExporter):
    """A collector that refuses everything until ``up`` is set."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.received: list[ReadableSpan] = []
        self.refused = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.up.is_set():
            self.refused += 1
            return SpanExportResult.FAILURE
        self.received.extend(spans)
        return SpanExportResult.SUCCESS


def test_records_wait_in_the_queue_while_the_collector_is_away_then_all_arrive() -> None:
    # GIVEN a collector that is down
    collector = Outage()
    queue: DeliveryQueue[ReadableSpan] = DeliveryQueue(
        "spans",
        lambda batch: collector.export(batch) == SpanExportResult.SUCCESS,
        10,
        4,
        losses=Losses(),
        pause_s=1.0,
    )
    spans = [ReadableSpan(name=f"s{i}") for i in range(6)]
    for span in spans:
        queue.put(span)
    # WHEN delivery fails, then the collector comes back
    assert not queue.deliver(now=0.0)
    assert not queue.deliver(now=0.1)  # the next round has not come: not even tried
    assert collector.refused == 1
    collector.up.set()
    assert queue.deliver(now=10.0)
    # THEN every span arrives, in order, and nothing was dropped
    assert [s.name for s in collector.received] == [s.name for s in spans]
    assert (queue.dropped, len(queue)) == (0, 0)


def test_a_full_queue_drops_the_oldest_and_counts_them() -> None:
    collector = Outage()
    losses = Losses()
    queue: DeliveryQueue[ReadableSpan] = DeliveryQueue(
        "spans",
        lambda batch: collector.export(batch) == SpanExportResult.SUCCESS,
        3,
        2,
        losses=losses,
        pause_s=1.0,
    )
    for index in range(5):
        queue.put(ReadableSpan(name=f"s{index}"))
    collector.up.set()
    queue.deliver(now=0.0)
    assert queue.dropped == 2
    assert [s.name for s in collector.received] == ["s2", "s3", "s4"]
    assert losses.total(Loss.EXPORT_QUEUE) == 2


class Stuck(SpanExporter):
    """A collector that takes an export and never answers, until the exporter is shut down."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.threads: list[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        _ = spans
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        self.released.wait()
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.released.set()


def test_what_the_collector_never_took_is_counted_undelivered_at_shutdown() -> None:
    # GIVEN a collector that refuses everything
    collector = Outage()
    losses = Losses()
    sink = OtelSink(Exporters(collector, None, None), SETTINGS, losses)
    # WHEN three blocks are exported and the sidecar stops
    for index in range(3):
        sink.export(replace(BLOCK, start_ns=BLOCK.start_ns + index))
    sink.shutdown()
    # THEN the three are counted as undelivered, none as dropped from a full queue
    assert collector.received == []
    assert losses.total(Loss.EXPORT_UNDELIVERED) == 3
    assert losses.total(Loss.EXPORT_QUEUE) == 0


def test_one_thread_exports_and_shutdown_keeps_its_deadline_with_an_export_under_way() -> None:
    # GIVEN an export under way that would never end by itself
    collector = Stuck()
    losses = Losses()
    settings = replace(SETTINGS, shutdown_timeout_s=0.05)
    sink = OtelSink(Exporters(collector, None, None), settings, losses)
    sink.export(BLOCK)
    assert collector.entered.wait(5)
    # WHEN the sidecar stops
    sink.shutdown()
    # THEN the export ran on the export thread, and the span in flight is counted undelivered
    assert collector.threads == ["otlp-export"]
    assert losses.total(Loss.EXPORT_UNDELIVERED) == 1


def test_every_kind_of_loss_is_one_counter_family_under_the_sidecars_resource() -> None:
    # GIVEN losses counted by several stages, and blocks the kernel could not hand over
    harness = Harness()
    harness.losses.add(Loss.KERNEL_THREADS, 2)
    harness.losses.add(Loss.CONTEXT_LATE)
    harness.sink.export(LoopTimes(threads=(), lost_events=5, identities=()))
    # WHEN the sidecar stops (the meters export a last time)
    harness.sink.shutdown()
    # THEN blocksnoop.lost has one series per kind, and the older counters keep their meaning
    points = harness.points("otel-blocksnoop")
    lost = {p.attributes["blocksnoop.lost.what"]: p.value for p in points["blocksnoop.lost"]}
    assert lost == {**dict.fromkeys(map(str, Loss), 0), "kernel.threads": 2, "context.late": 1}
    assert [p.value for p in points["blocksnoop.events.lost"]] == [5]
    dropped = {
        p.attributes["blocksnoop.signal"]: p.value for p in points["blocksnoop.export.dropped"]
    }
    assert dropped == {"spans": 0, "hang records": 0}


def test_an_iteration_split_by_request_is_one_span_per_segment_and_one_histogram_point() -> None:
    # GIVEN one 250 ms iteration that ran two requests' callbacks back to back
    iteration = Iteration(
        start_ns=BLOCK.start_ns,
        end_ns=BLOCK.end_ns,
        start_unix_ns=BLOCK.start_unix_ns,
        end_unix_ns=BLOCK.end_unix_ns,
        segments=2,
    )
    first = replace(
        BLOCK,
        end_ns=BLOCK.start_ns + 100_000_000,
        end_unix_ns=BLOCK.start_unix_ns + 100_000_000,
        parent=SpanRef(trace_id=0xA1, span_id=0xA2, trace_flags=1),
        iteration=iteration,
        segment=0,
    )
    second = replace(
        BLOCK,
        start_ns=first.end_ns,
        start_unix_ns=first.end_unix_ns,
        parent=SpanRef(trace_id=0xB1, span_id=0xB2, trace_flags=1),
        iteration=iteration,
        segment=1,
    )
    harness = Harness()

    # WHEN both segments are exported
    harness.sink.export(first)
    harness.sink.export(second)
    harness.sink.shutdown()

    # THEN each is a span in its own request's trace, naming the iteration they share
    spans = sorted(harness.spans.get_finished_spans(), key=lambda span: span.start_time or 0)
    assert [span.context.trace_id for span in spans] == [0xA1, 0xB1]
    assert [span.parent.span_id for span in spans if span.parent] == [0xA2, 0xB2]
    assert [(span.end_time or 0) - (span.start_time or 0) for span in spans] == [
        100_000_000,
        150_000_000,
    ]
    for index, span in enumerate(spans):
        attributes = span.attributes or {}
        assert attributes["blocksnoop.iteration.id"] == first.iteration_id
        assert attributes["blocksnoop.iteration.duration"] == 0.25
        assert attributes["blocksnoop.iteration.segments"] == 2
        assert attributes["blocksnoop.iteration.segment"] == index
    # AND the histogram counts the iteration once, with its whole duration
    (histogram,) = harness.points("checkout")["blocksnoop.eventloop.block.duration"]
    assert (histogram.count, histogram.sum) == (1, 0.25)


def test_a_block_carries_its_run_queue_and_throttled_time_when_its_cgroup_was_read() -> None:
    harness = Harness()
    books = Activity(
        on_cpu_ns=12_000_000,
        runq_ns=91_000_000,
        sleep_ns=0,
        sleeps=(),
        other_sleep_ns=0,
        sibling_cpu_ns=0,
    )
    harness.sink.export(
        replace(BLOCK, cause=Cause.SCHED, activity=books, throttling=Throttling(88_000_000, 1))
    )
    harness.sink.export(replace(BLOCK, activity=books, throttling=None))
    harness.sink.shutdown()
    read, unread = (dict(span.attributes or {}) for span in harness.spans.get_finished_spans())
    assert read["blocksnoop.cause"] == "sched"
    assert read["blocksnoop.cpu.runq_time"] == 0.091
    assert read["blocksnoop.cpu.throttled_time"] == 0.088
    assert read["blocksnoop.cpu.throttled_periods"] == 1
    # a cgroup that could not be read gives no figure, not a zero
    assert "blocksnoop.cpu.throttled_time" not in unread


class StuckMetrics(CollectingMetrics):
    """A collector that takes a metric export and never answers, until shut down."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.released = threading.Event()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        _ = metrics_data, timeout_millis, kwargs
        self.entered.set()
        self.released.wait()
        return MetricExportResult.FAILURE

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        _ = timeout_millis, kwargs
        self.released.set()


def test_spans_and_every_meter_provider_share_one_deadline_and_count_what_did_not_go() -> None:
    # GIVEN a collector that never answers, for spans and metrics alike
    spans = Stuck()
    metrics: list[StuckMetrics] = []

    def metric_exporter() -> MetricExporter:
        metrics.append(StuckMetrics())
        return metrics[-1]

    losses = Losses()
    sink = OtelSink(Exporters(spans, None, metric_exporter), SETTINGS, losses)
    sink.export(BLOCK)  # a span, and the app's meter provider beside the sidecar's
    assert spans.entered.wait(5)
    assert sink.pending() == {"spans": 1}
    # WHEN the sidecar stops with a deadline
    sink.shutdown(time.monotonic() + 0.2)
    # THEN every provider's last export was under way at once (not one after the other),
    # and the span and both providers' last metrics are counted undelivered
    assert len(metrics) == 2
    assert all(exporter.entered.is_set() for exporter in metrics)
    assert losses.total(Loss.EXPORT_UNDELIVERED) == 3


def test_a_collector_that_takes_everything_leaves_nothing_undelivered() -> None:
    harness = Harness()
    harness.sink.export(BLOCK)
    harness.sink.shutdown()
    assert len(harness.spans.get_finished_spans()) == 1
    assert harness.losses.total(Loss.EXPORT_UNDELIVERED) == 0


def test_as_many_processes_as_node_mode_watches_keep_their_meters_until_they_exit() -> None:
    # GIVEN one block of each of as many apps as node mode may watch at once
    harness = Harness()
    apps = [
        replace(APP, pid=1000 + n, service_name=f"app-{n}", instance_id=f"instance-{n}")
        for n in range(MAX_WATCHED_PROCESSES)
    ]
    for app in apps:
        harness.sink.export(replace(BLOCK, pid=app.pid, process=app))
    # WHEN each blocks once more, and the sidecar stops
    for app in apps:
        harness.sink.export(replace(BLOCK, pid=app.pid, process=app))
    harness.sink.shutdown()
    # THEN each app had one meter provider (and the sidecar its own): none was dropped
    # and made again, so each app's histogram holds both of its blocks
    assert len(harness.metrics) == MAX_WATCHED_PROCESSES + 1
    for app in apps[:: MAX_WATCHED_PROCESSES // 8]:
        (point,) = harness.points(app.service_name or "")["blocksnoop.eventloop.block.duration"]
        assert point.count == 2


def test_an_exited_process_gives_its_pid_back_its_meters_export_a_last_time_and_go() -> None:
    # GIVEN a block of one app exported, then the app's exit
    harness = Harness()
    harness.sink.export(BLOCK)
    harness.sink.export(ProcessExited(pid=BLOCK.pid))
    # THEN its meters' last export carries its block's histogram point
    deadline = time.monotonic() + 5.0
    while not harness.points("checkout") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "blocksnoop.eventloop.block.duration" in harness.points("checkout")
    # WHEN another app gets its PID and blocks
    other = replace(APP, service_name="billing", instance_id="0c7d1f4e-0000-5000-8000-000000000002")
    harness.sink.export(replace(BLOCK, process=other))
    harness.sink.shutdown()
    # THEN that block's span carries the new app's resource, not the old one's
    first, second = harness.spans.get_finished_spans()
    assert first.resource.attributes["service.name"] == "checkout"
    assert second.resource.attributes["service.name"] == "billing"
    assert second.resource.attributes["service.instance.id"] == other.instance_id
