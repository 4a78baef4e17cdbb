"""A real OTLP receiver for tests and benchmarks: gRPC and HTTP/protobuf on 127.0.0.1, no mocks.

It stores every export request it is sent and lets a test wait, on a condition
variable, until what it expects has arrived::

    with OtlpReceiver() as receiver:
        exporter = OTLPSpanExporter(endpoint=receiver.grpc_endpoint, insecure=True)
        ...
        (got,) = receiver.wait_for_spans(1)
        assert got.span.name == "eventloop.block"

``stop()`` closes both listeners and every open connection; ``start()`` opens
them again on the same ports, so a test can have the collector down at first
or make it go away mid-run.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
from google.protobuf.message import (  # type: ignore[import-untyped]  # no stubs installed
    DecodeError,
)
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from harness import HarnessError

HOST = "127.0.0.1"
WAIT_S = 30.0
"""Default bound of every ``wait_for_*``."""
GRPC_STOP_GRACE_S = 1.0
PROTOBUF = "application/x-protobuf"

ExportTraceServiceRequest = trace_service_pb2.ExportTraceServiceRequest
ExportMetricsServiceRequest = metrics_service_pb2.ExportMetricsServiceRequest
ExportLogsServiceRequest = logs_service_pb2.ExportLogsServiceRequest
Request = ExportTraceServiceRequest | ExportMetricsServiceRequest | ExportLogsServiceRequest

T = TypeVar("T")


class ReceivedSpan(NamedTuple):
    resource: dict[str, Any]
    scope: str
    span: Span


class ReceivedMetric(NamedTuple):
    resource: dict[str, Any]
    scope: str
    metric: Metric


class ReceivedLog(NamedTuple):
    resource: dict[str, Any]
    scope: str
    record: LogRecord


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def value(any_value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as the Python value it carries (``None`` when empty)."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes(any_value.kvlist_value.values)
    return getattr(any_value, kind)


def attributes(kv_list: Sequence[KeyValue]) -> dict[str, Any]:
    """OTLP attributes as a dict: strings, ints, floats, bools, bytes, lists, dicts."""
    return {kv.key: value(kv.value) for kv in kv_list}


class OtlpReceiver:
    """Receives OTLP traces, metrics and logs over gRPC and HTTP/protobuf.

    Ports default to 0 (the OS chooses); once started, ``grpc_port`` and
    ``http_port`` hold the real ones and stay fixed across ``stop()``/``start()``.
    ``host`` is the address to listen on: 127.0.0.1, or e.g. the Docker bridge's
    gateway for senders in containers.
    """

    def __init__(self, grpc_port: int = 0, http_port: int = 0, host: str = HOST) -> None:
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self._condition = threading.Condition()
        self.trace_requests: list[ExportTraceServiceRequest] = []
        self.metrics_requests: list[ExportMetricsServiceRequest] = []
        self.logs_requests: list[ExportLogsServiceRequest] = []
        self._grpc: Any = None
        self._http: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None

    # Endpoints, in the forms the SDK exporters take them.

    @property
    def grpc_endpoint(self) -> str:
        """``host:port`` for the gRPC exporters (with ``insecure=True``)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """Base URL; the HTTP exporters want ``f"{http_endpoint}/v1/traces"`` etc."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def running(self) -> bool:
        return self._grpc is not None

    # Lifecycle.

    def start(self) -> Self:
        """Listen on both ports; a port already taken raises ``OSError``."""
        if self.running:
            return self
        self._start_grpc()
        try:
            self._start_http()
        except BaseException:
            self._grpc.stop(None)
            self._grpc = None
            raise
        return self

    def stop(self) -> None:
        """Close both listeners and every open connection; what was received is kept."""
        if self._http is not None:
            self._http.shutdown()
            self._http.close_connections()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=WAIT_S)
            self._http_thread = None
        if self._grpc is not None:
            self._grpc.stop(GRPC_STOP_GRACE_S).wait(WAIT_S)
            self._grpc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_grpc(self) -> None:
        # SO_REUSEPORT (grpc's default on Linux) would let a second server share
        # the port silently; without it a taken port is an error, as it should be.
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc"),
            options=[("grpc.so_reuseport", 0)],
        )
        service = _ExportService(self)
        adders: list[Callable[[Any, Any], None]] = [
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server,
            metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server,
            logs_service_pb2_grpc.add_LogsServiceServicer_to_server,
        ]
        for add_to_server in adders:  # the generated functions are untyped
            add_to_server(service, server)
        try:
            port = server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        except RuntimeError as error:  # grpcio >= 1.60 raises, older ones return 0
            raise OSError(f"failed to bind OTLP gRPC port {self.grpc_port}: {error}") from error
        if port == 0:
            raise OSError(f"failed to bind OTLP gRPC port {self.grpc_port}")
        server.start()
        self.grpc_port = port
        self._grpc = server

    def _start_http(self) -> None:
        server = _HttpServer((self.host, self.http_port), self)
        self.http_port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"otlp-http-{self.http_port}",
            daemon=True,
        )
        thread.start()
        self._http = server
        self._http_thread = thread

    # Storage.

    def store(self, request: Request) -> None:
        with self._condition:
            if isinstance(request, ExportTraceServiceRequest):
                self.trace_requests.append(request)
            elif isinstance(request, ExportMetricsServiceRequest):
                self.metrics_requests.append(request)
            else:
                self.logs_requests.append(request)
            self._condition.notify_all()

    def clear(self) -> None:
        """Forget everything received so far."""
        with self._condition:
            self.trace_requests.clear()
            self.metrics_requests.clear()
            self.logs_requests.clear()

    def _spans(self) -> list[ReceivedSpan]:
        return [
            ReceivedSpan(attributes(rs.resource.attributes), ss.scope.name, span)
            for request in self.trace_requests
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def _metrics(self) -> list[ReceivedMetric]:
        return [
            ReceivedMetric(attributes(rm.resource.attributes), sm.scope.name, metric)
            for request in self.metrics_requests
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]

    def _logs(self) -> list[ReceivedLog]:
        return [
            ReceivedLog(attributes(rl.resource.attributes), sl.scope.name, record)
            for request in self.logs_requests
            for rl in request.resource_logs
            for sl in rl.scope_logs
            for record in sl.log_records
        ]

    def spans(self) -> list[ReceivedSpan]:
        """Every span received, flattened, in order of arrival."""
        with self._condition:
            return self._spans()

    def metrics(self) -> list[ReceivedMetric]:
        """Every metric received (one entry per metric per export), in order of arrival."""
        with self._condition:
            return self._metrics()

    def logs(self) -> list[ReceivedLog]:
        """Every log record received, flattened, in order of arrival."""
        with self._condition:
            return self._logs()

    # Waiting, on the condition variable: no polling.

    def _wait(
        self,
        what: str,
        items: Callable[[], list[T]],
        until: int | Callable[[list[T]], bool],
        timeout: float,
    ) -> list[T]:
        done: Callable[[list[T]], bool]
        if isinstance(until, int):
            count = until
            done = lambda got: len(got) >= count  # noqa: E731
        else:
            done = until
        with self._condition:
            if self._condition.wait_for(lambda: done(items()), timeout):
                return items()
            seen = items()
        shown = repr(seen)[:4000]
        raise HarnessError(
            f"the {what} awaited did not arrive within {timeout} s; got {len(seen)}: {shown}"
        )

    def wait_for_spans(
        self, until: int | Callable[[list[ReceivedSpan]], bool] = 1, timeout: float = WAIT_S
    ) -> list[ReceivedSpan]:
        """All spans, once there are ``until`` of them or ``until(spans)`` holds.

        Raises ``HarnessError`` after ``timeout`` seconds.
        """
        return self._wait("spans", self._spans, until, timeout)

    def wait_for_metrics(
        self, until: int | Callable[[list[ReceivedMetric]], bool] = 1, timeout: float = WAIT_S
    ) -> list[ReceivedMetric]:
        """All metrics, once there are ``until`` of them or ``until(metrics)`` holds."""
        return self._wait("metrics", self._metrics, until, timeout)

    def wait_for_logs(
        self, until: int | Callable[[list[ReceivedLog]], bool] = 1, timeout: float = WAIT_S
    ) -> list[ReceivedLog]:
        """All log records, once there are ``until`` of them or ``until(logs)`` holds."""
        return self._wait("log records", self._logs, until, timeout)


# What each request is answered with, over HTTP (by path) and gRPC (by type).
_HTTP_ROUTES: dict[str, tuple[type[Request], type[Any]]] = {
    "/v1/traces": (ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse),
    "/v1/metrics": (ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse),
    "/v1/logs": (ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse),
}
_RESPONSES: dict[type[Request], type[Any]] = dict(_HTTP_ROUTES.values())


# gRPC services. The generated servicer bases are untyped; each service's
# Export differs only in the response type, so one servicer serves all three.


class _ExportService(
    trace_service_pb2_grpc.TraceServiceServicer,
    metrics_service_pb2_grpc.MetricsServiceServicer,
    logs_service_pb2_grpc.LogsServiceServicer,
):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(  # noqa: N802  # the name is fixed by the generated servicers
        self,
        request: Request,
        context: Any,  # noqa: ARG002
    ) -> Any:  # one of the three Export*ServiceResponse types
        self._receiver.store(request)
        return _RESPONSES[type(request)]()


class _HttpServer(ThreadingHTTPServer):
    """Tracks its connections so ``stop()`` can cut kept-alive ones too."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], receiver: OtlpReceiver) -> None:
        self.receiver = receiver
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _HttpHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def do_POST(self) -> None:  # the name is fixed by http.server
        route = _HTTP_ROUTES.get(self.path.split("?", 1)[0])
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if route is None:
            self._reply(HTTPStatus.NOT_FOUND, b"", "text/plain")
            return
        content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip()
        if content_type != PROTOBUF:
            self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, b"", "text/plain")
            return
        request_type, response_type = route
        try:
            if self.headers.get("Content-Encoding", "").strip().lower() == "gzip":
                body = gzip.decompress(body)
            request = request_type.FromString(body)
        except (OSError, EOFError, DecodeError):
            self._reply(HTTPStatus.BAD_REQUEST, b"", "text/plain")
            return
        self.server.receiver.store(request)
        self._reply(HTTPStatus.OK, response_type().SerializeToString(), PROTOBUF)

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # stdlib's name
        """Quiet: a test reads what was received, not an access log."""
