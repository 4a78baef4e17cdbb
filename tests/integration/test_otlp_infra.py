"""The OTLP test infrastructure itself: the in-test receiver and rotel in front of it.

The SDK's own OTLP exporters (gRPC and HTTP/protobuf) send a span, a histogram
and a log record, to the receiver directly and through rotel; the receiver
must hold them with their names, attributes, scope and resource.

Rotel's forwarding delay (rotel 0.0.1-alpha10, measured on this machine from the
SDK exporter's return to ``wait_for_*`` returning, gRPC or HTTP either side):
- default batching (``--batch-timeout`` 200ms): 0.18 to 0.40 s per signal, i.e.
  up to two batch timeouts, whatever the signal;
- ``--batch-timeout 10ms``: 7 to 19 ms;
- ``--disable-batching``: 0.5 to 1.3 ms.
So a test that holds a 1 s export budget through rotel should pass
``--disable-batching`` (or a short ``--batch-timeout``). No test here asserts
timing: timing lives in ``bench/``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetrics,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetrics,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AttributeValue

from harness.otlp import OtlpReceiver, attributes, free_port
from harness.rotel import Protocol, Rotel

pytestmark = pytest.mark.integration

SERVICE = "otlp-infra-test"
SCOPE = "tests.otlp_infra"
SPAN_ATTRIBUTES: dict[str, AttributeValue] = {
    "process.pid": 4242,
    "thread.name": "MainThread",
    "blocksnoop.cause": "cpu",
    "ratio": 0.25,
    "flag": True,
    "ids": [1, 2, 3],
    "names": ["a", "b"],
}
EXPORT_TIMEOUT_S = 5
"""Bound on one SDK export; the exporters' own default is 10 s."""
ACROSS_RESTART_S = 3.0
"""Bound on an export across a receiver restart: the first SDK retry comes after about 1 s
(the gRPC exporter reopens its channel then), the second after 2 s more, so a down receiver
fails an export in about 1 s and a restarted one is reached within it."""
EXPORT_NEVER_MS = 3_600_000
"""The periodic metric reader's interval: never, within a test; shutdown flushes."""


@dataclass(frozen=True)
class Exporters:
    spans: SpanExporter
    metrics: MetricExporter
    logs: LogRecordExporter


def exporters(
    protocol: Protocol, grpc_endpoint: str, http_endpoint: str, timeout: float = EXPORT_TIMEOUT_S
) -> Exporters:
    """The SDK's OTLP exporters, with explicit endpoints; HTTP ones compress with gzip."""
    if protocol == "grpc":
        return Exporters(
            GrpcSpans(endpoint=grpc_endpoint, insecure=True, timeout=timeout),
            GrpcMetrics(endpoint=grpc_endpoint, insecure=True, timeout=timeout),
            GrpcLogs(endpoint=grpc_endpoint, insecure=True, timeout=timeout),
        )
    gzip = Compression.Gzip
    return Exporters(
        HttpSpans(f"{http_endpoint}/v1/traces", timeout=timeout, compression=gzip),
        HttpMetrics(f"{http_endpoint}/v1/metrics", timeout=timeout, compression=gzip),
        HttpLogs(f"{http_endpoint}/v1/logs", timeout=timeout, compression=gzip),
    )


def send_one_of_each(to: Exporters) -> None:
    """A span, a histogram point and a log record, each exported before this returns."""
    resource = Resource.create({"service.name": SERVICE, "host.name": "test-host"})

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(to.spans))
    with tracer_provider.get_tracer(SCOPE).start_as_current_span(
        "eventloop.block", attributes=SPAN_ATTRIBUTES
    ):
        pass
    tracer_provider.shutdown()

    reader = PeriodicExportingMetricReader(to.metrics, export_interval_millis=EXPORT_NEVER_MS)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    histogram = meter_provider.get_meter(SCOPE).create_histogram(
        "blocksnoop.eventloop.block.duration", unit="s"
    )
    histogram.record(0.125, {"blocksnoop.cause": "cpu"})
    histogram.record(0.375, {"blocksnoop.cause": "cpu"})
    meter_provider.shutdown()

    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(to.logs))
    logger_provider.get_logger(SCOPE).emit(
        severity_number=SeverityNumber.WARN,
        severity_text="WARN",
        body="event loop hung",
        attributes={"thread.id": 17, "blocksnoop.cause": "syscall"},
    )
    logger_provider.shutdown()


def assert_received_one_of_each(receiver: OtlpReceiver) -> None:
    (span,) = receiver.wait_for_spans(1)
    assert span.resource["service.name"] == SERVICE
    assert span.resource["host.name"] == "test-host"
    assert span.scope == SCOPE
    assert span.span.name == "eventloop.block"
    assert attributes(span.span.attributes) == SPAN_ATTRIBUTES

    (metric,) = receiver.wait_for_metrics(1)
    assert metric.resource["service.name"] == SERVICE
    assert metric.scope == SCOPE
    assert metric.metric.name == "blocksnoop.eventloop.block.duration"
    assert metric.metric.unit == "s"
    (point,) = metric.metric.histogram.data_points
    assert point.count == 2
    assert point.sum == pytest.approx(0.5)
    assert attributes(point.attributes) == {"blocksnoop.cause": "cpu"}

    (log,) = receiver.wait_for_logs(1)
    assert log.resource["service.name"] == SERVICE
    assert log.scope == SCOPE
    assert log.record.body.string_value == "event loop hung"
    assert log.record.severity_text == "WARN"
    assert log.record.severity_number == SeverityNumber.WARN.value
    assert attributes(log.record.attributes) == {
        "thread.id": 17,
        "blocksnoop.cause": "syscall",
    }


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_exporters_reach_the_receiver(receiver: OtlpReceiver, protocol: Protocol) -> None:
    # GIVEN the SDK's exporters pointed at the receiver
    to = exporters(protocol, receiver.grpc_endpoint, receiver.http_endpoint)
    # WHEN a span, a histogram and a log record are exported
    send_one_of_each(to)
    # THEN the receiver holds each, with names, attributes, scope and resource
    assert_received_one_of_each(receiver)


@pytest.mark.parametrize("rotel_protocol", ["grpc", "http"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_exporters_reach_the_receiver_through_rotel(
    receiver: OtlpReceiver, protocol: Protocol, rotel_protocol: Protocol
) -> None:
    # GIVEN rotel, forwarding over rotel_protocol to the receiver
    with Rotel(receiver, protocol=rotel_protocol) as collector:
        # WHEN the SDK's exporters send to rotel over protocol
        send_one_of_each(exporters(protocol, collector.grpc_endpoint, collector.http_endpoint))
        # THEN everything reaches the receiver unchanged
        assert_received_one_of_each(receiver)


def some_spans(name: str) -> Sequence[ReadableSpan]:
    """Finished spans, made without exporting them."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer(SCOPE).start_as_current_span(name):
        pass
    provider.shutdown()
    return memory.get_finished_spans()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_receiver_restarts_on_the_same_ports(protocol: Protocol) -> None:
    # GIVEN a receiver on fixed ports, and an exporter that reached it once
    receiver = OtlpReceiver(grpc_port=free_port(), http_port=free_port())
    with receiver:
        spans = exporters(
            protocol, receiver.grpc_endpoint, receiver.http_endpoint, timeout=ACROSS_RESTART_S
        ).spans
        assert spans.export(some_spans("before")) == SpanExportResult.SUCCESS
        receiver.wait_for_spans(1)
        ports = (receiver.grpc_port, receiver.http_port)
        # WHEN the receiver stops
        receiver.stop()
        # THEN the same exporter fails, kept-alive connections included
        assert spans.export(some_spans("while down")) == SpanExportResult.FAILURE
        # WHEN it starts again
        receiver.start()
        # THEN it is on the same ports and the same exporter reaches it
        assert (receiver.grpc_port, receiver.http_port) == ports
        assert spans.export(some_spans("after")) == SpanExportResult.SUCCESS
        got = receiver.wait_for_spans(2)
        assert [s.span.name for s in got] == ["before", "after"]
        spans.shutdown()


def test_receiver_that_comes_up_late_gets_what_rotel_held() -> None:
    # GIVEN rotel, retrying often, forwarding to a receiver that is not up yet
    receiver = OtlpReceiver(grpc_port=free_port(), http_port=free_port())
    retry_fast = (
        "--otlp-exporter-retry-initial-backoff",
        "50ms",
        "--otlp-exporter-retry-max-backoff",
        "100ms",
    )
    with Rotel(receiver, args=("--disable-batching", *retry_fast)) as collector:
        spans = exporters("grpc", collector.grpc_endpoint, collector.http_endpoint).spans
        assert spans.export(some_spans("early")) == SpanExportResult.SUCCESS
        collector.wait_for_log("Exporting failed")
        # WHEN the receiver comes up
        with receiver:
            # THEN rotel's retry delivers the span
            (got,) = receiver.wait_for_spans(1)
            assert got.span.name == "early"
        spans.shutdown()


def test_rotel_restarts_on_the_same_ports(receiver: OtlpReceiver) -> None:
    # GIVEN rotel, and an exporter that reached the receiver through it once
    with Rotel(receiver, args=("--disable-batching",)) as collector:
        spans = exporters(
            "grpc", collector.grpc_endpoint, collector.http_endpoint, timeout=ACROSS_RESTART_S
        ).spans
        assert spans.export(some_spans("before")) == SpanExportResult.SUCCESS
        receiver.wait_for_spans(1)
        # WHEN rotel goes away
        assert collector.stop() == 0
        # THEN the exporter fails
        assert spans.export(some_spans("while down")) == SpanExportResult.FAILURE
        # WHEN rotel starts again
        collector.start()
        # THEN the same exporter reaches the receiver through it
        assert spans.export(some_spans("after")) == SpanExportResult.SUCCESS
        got = receiver.wait_for_spans(2)
        assert [s.span.name for s in got] == ["before", "after"]
        spans.shutdown()
