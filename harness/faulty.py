"""Collectors that misbehave, on real sockets on 127.0.0.1: for tests of a bounded stop.

- ``RefusingHttpCollector(503)``: every OTLP/HTTP export is answered 503 (or 429, with
  ``Retry-After``), the statuses the SDK's exporter retries with back-off;
- ``UnavailableGrpcCollector``: a gRPC collector whose ``Export`` always fails UNAVAILABLE
  (retried by the gRPC exporter);
- ``SilentCollector``: accepts TCP connections and never says a word (a hung collector, or
  a proxy with nothing behind it), for gRPC and HTTP alike.

Each counts the exports (or connections) it got, and is a context manager::

    with SilentCollector() as collector:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, ...}
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from concurrent import futures
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

HOST = "127.0.0.1"


class _Collector:
    """Start on enter, stop on exit; ``endpoint`` is the URL the sidecar is given."""

    endpoint: str

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        """Exports (or connections) received so far."""
        with self._lock:
            return self._count

    def _received(self) -> None:
        with self._lock:
            self._count += 1

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class RefusingHttpCollector(_Collector):
    """Answers every POST with ``status`` (and ``Retry-After: retry_after`` if given)."""

    def __init__(self, status: HTTPStatus, retry_after: int | None = None) -> None:
        super().__init__()
        self.status = status
        self.retry_after = retry_after
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # the name is fixed by http.server
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                collector._received()
                self.send_response(collector.status)
                if collector.retry_after is not None:
                    self.send_header("Retry-After", str(collector.retry_after))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # stdlib's name
                _ = format, args

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Unavailable(
    trace_service_pb2_grpc.TraceServiceServicer,
    metrics_service_pb2_grpc.MetricsServiceServicer,
    logs_service_pb2_grpc.LogsServiceServicer,
):
    def __init__(self, collector: UnavailableGrpcCollector) -> None:
        self._collector = collector

    def Export(  # noqa: N802  # the name is fixed by the generated servicers
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        _ = request
        self._collector._received()  # noqa: SLF001 - its own servicer
        context.abort(grpc.StatusCode.UNAVAILABLE, "collector overloaded")


class UnavailableGrpcCollector(_Collector):
    """A gRPC collector whose every ``Export`` fails UNAVAILABLE."""

    def __init__(self) -> None:
        super().__init__()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        servicer = _Unavailable(self)
        adders: list[Callable[[Any, Any], None]] = [
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server,
            metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server,
            logs_service_pb2_grpc.add_LogsServiceServicer_to_server,
        ]
        for add_to_server in adders:  # the generated functions are untyped
            add_to_server(servicer, self._server)
        port = self._server.add_insecure_port(f"{HOST}:0")
        self.endpoint = f"http://{HOST}:{port}"

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)


class SilentCollector(_Collector):
    """Accepts every connection, reads what comes, answers nothing, never closes first."""

    def __init__(self) -> None:
        super().__init__()
        self._listener = socket.create_server((HOST, 0), backlog=128)
        self.endpoint = f"http://{HOST}:{self._listener.getsockname()[1]}"
        self._connections: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed by stop()
            self._received()
            with self._lock:
                self._connections.append(connection)
            # Read and drop, so the client's writes never block: it waits for an answer.
            threading.Thread(target=self._swallow, args=(connection,), daemon=True).start()

    @staticmethod
    def _swallow(connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while connection.recv(65536):
                pass

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
