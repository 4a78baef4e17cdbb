"""OTLP export settings: the standard ``OTEL_*`` environment variables, flags on top.

OTLP is on when an endpoint is given (``--otlp-endpoint`` or any
``OTEL_EXPORTER_OTLP_*ENDPOINT``) and the SDK is not disabled. Everything
the SDK's exporters read themselves (headers such as a Honeycomb key,
certificates, compression, timeouts, per-signal endpoints) is left to them;
this module decides only what they cannot: whether to export at all, which
protocol, and the batching of the sidecar's own queue.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry.environment_variables import (
    OTEL_LOGS_EXPORTER,
    OTEL_METRICS_EXPORTER,
    OTEL_TRACES_EXPORTER,
)
from opentelemetry.sdk.environment_variables import (
    OTEL_BSP_EXPORT_TIMEOUT,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_SCHEDULE_DELAY,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_LOGS_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_METRIC_EXPORT_INTERVAL,
    OTEL_SDK_DISABLED,
    OTEL_SERVICE_NAME,
)

from otel_blocksnoop.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

GRPC = "grpc"
HTTP = "http/protobuf"
PROTOCOLS = (GRPC, HTTP)
DEFAULT_PROTOCOL = HTTP
"""The OpenTelemetry specification's default transport."""
DEFAULT_SCHEDULE_DELAY_MS = 200
"""Delay between exports of queued spans (the SDK's 5 s would miss the 1 s delivery goal)."""
DEFAULT_MAX_QUEUE = 4096
"""Spans (and, separately, hang records) kept while the collector is slow or away."""
DEFAULT_BATCH = 512
DEFAULT_SHUTDOWN_S = 5.0
"""How long a stopping sidecar keeps trying to deliver what is queued."""
DEFAULT_METRIC_INTERVAL_MS = 10_000
"""Metric export interval unless OTEL_METRIC_EXPORT_INTERVAL says otherwise (SDK: 60 s)."""
MAX_COUNT = 2**31 - 1
"""The largest queue or batch size taken from the environment."""
MAX_WAIT_MS = threading.TIMEOUT_MAX * 1000
"""The longest delay or timeout a wait can be given (a longer one raises OverflowError)."""
GRPC_PORT = 4317
CONNECT_TIMEOUT_S = 0.5
MAX_SERVICE_NAME = 255
"""Characters of ``service.name`` kept: enough for any real name. The spec sets no limit, but
the name rides on every span and metric, and an app's environment could make it megabytes."""


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """What the sidecar exports, where to and how; None endpoint means "from the env"."""

    protocol: str
    endpoint: str | None  # from --otlp-endpoint; the exporters read the env otherwise
    traces: bool
    metrics: bool
    logs: bool
    schedule_delay_s: float
    max_queue: int
    batch_size: int
    shutdown_timeout_s: float
    metric_interval_ms: int
    fallback_service: str | None  # --service, else the sidecar's own OTEL_SERVICE_NAME
    follow_app_sampling: bool = True  # a block in an unsampled request is not exported

    @property
    def enabled(self) -> bool:
        return self.traces or self.metrics or self.logs


def _positive(
    env: Mapping[str, str], name: str, default: float, least: float = 0, most: float = MAX_WAIT_MS
) -> float:
    """A finite number above 0, from ``least`` to ``most``.

    "inf", "nan" or "1e400" would overflow a wait or a queue, and a count or a
    millisecond value below 1 would become 0 (no queue, a metric reader refused).
    """
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0 and least <= value <= most):
        limits = f"from {least:g}" if least else "above 0"
        msg = f"{name} must be a positive number ({limits} to {most:g}), not {text!r}"
        raise ConfigError(msg)
    return value


def _service_name(flag: str | None, env: Mapping[str, str]) -> str | None:
    """``--service``, else the sidecar's own OTEL_SERVICE_NAME; ConfigError past the cap."""
    source, name = ("--service", flag) if flag else (OTEL_SERVICE_NAME, env.get(OTEL_SERVICE_NAME))
    name = (name or "").strip()
    if len(name) > MAX_SERVICE_NAME:
        msg = f"{source} must be at most {MAX_SERVICE_NAME} characters, not {len(name)}"
        raise ConfigError(msg)
    return name or None


def _signal_on(env: Mapping[str, str], selector: str) -> bool:
    """OTEL_{TRACES,METRICS,LOGS}_EXPORTER: ``none`` turns that signal off."""
    return env.get(selector, "otlp").strip().lower() != "none"


def settings_from(
    env: Mapping[str, str],
    endpoint: str | None = None,
    protocol: str | None = None,
    service: str | None = None,
    follow_app_sampling: bool = True,
) -> OtlpSettings:
    """Settings from the environment with the flags' values on top (flag > env > default)."""
    chosen = (protocol or env.get(OTEL_EXPORTER_OTLP_PROTOCOL, "") or DEFAULT_PROTOCOL).strip()
    if chosen not in PROTOCOLS:
        source = "--otlp-protocol" if protocol else OTEL_EXPORTER_OTLP_PROTOCOL
        msg = f"{source} must be {GRPC} or {HTTP}, not {chosen!r}"
        raise ConfigError(msg)
    endpoints = (
        OTEL_EXPORTER_OTLP_ENDPOINT,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT,
    )
    wanted = bool(endpoint) or any(env.get(name, "").strip() for name in endpoints)
    if env.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        wanted = False
    return OtlpSettings(
        protocol=chosen,
        endpoint=endpoint or None,
        traces=wanted and _signal_on(env, OTEL_TRACES_EXPORTER),
        metrics=wanted and _signal_on(env, OTEL_METRICS_EXPORTER),
        logs=wanted and _signal_on(env, OTEL_LOGS_EXPORTER),
        schedule_delay_s=_positive(env, OTEL_BSP_SCHEDULE_DELAY, DEFAULT_SCHEDULE_DELAY_MS, 1)
        / 1000,
        max_queue=int(_positive(env, OTEL_BSP_MAX_QUEUE_SIZE, DEFAULT_MAX_QUEUE, 1, MAX_COUNT)),
        batch_size=int(_positive(env, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, DEFAULT_BATCH, 1, MAX_COUNT)),
        shutdown_timeout_s=_positive(env, OTEL_BSP_EXPORT_TIMEOUT, DEFAULT_SHUTDOWN_S * 1000, 1)
        / 1000,
        metric_interval_ms=int(
            _positive(env, OTEL_METRIC_EXPORT_INTERVAL, DEFAULT_METRIC_INTERVAL_MS, 1)
        ),
        fallback_service=_service_name(service, env),
        follow_app_sampling=follow_app_sampling,
    )


def _signal_url(base: str, path: str) -> str:
    return base.rstrip("/") + path


@dataclass(frozen=True, slots=True)
class Exporters:
    """The SDK exporters for each signal that is on (metrics: one per meter provider)."""

    spans: SpanExporter | None
    logs: LogRecordExporter | None
    metrics: Callable[[], MetricExporter] | None


def build_exporters(settings: OtlpSettings) -> Exporters:
    """The OTLP exporters the settings ask for; the SDK reads the rest of OTEL_* itself.

    The SDK's gRPC exporters raise on some values they read (a timeout of "abc",
    an unknown compression): that is a ConfigError, found here at start.
    """
    try:
        exporters = _exporters(settings)
        if exporters.metrics is not None:
            exporters.metrics().shutdown()  # made per meter provider later: try one now
    except Exception as exc:  # whatever the SDK raised, the user gets one line
        reason = " ".join(str(exc).split())  # it may quote a value with a newline in it
        msg = f"failed to set up OTLP export ({settings.protocol}): {reason}"
        raise ConfigError(msg) from exc
    return exporters


def _exporters(settings: OtlpSettings) -> Exporters:
    base = settings.endpoint
    if settings.protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (  # noqa: PLC0415
            OTLPLogExporter as GrpcLogs,
        )
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter as GrpcMetrics,
        )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as GrpcSpans,
        )

        return Exporters(
            spans=GrpcSpans(endpoint=base) if settings.traces else None,
            logs=GrpcLogs(endpoint=base) if settings.logs else None,
            metrics=(lambda: GrpcMetrics(endpoint=base)) if settings.metrics else None,
        )
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # noqa: PLC0415
        OTLPLogExporter as HttpLogs,
    )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
        OTLPMetricExporter as HttpMetrics,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter as HttpSpans,
    )

    traces = _signal_url(base, "/v1/traces") if base else None
    metrics = _signal_url(base, "/v1/metrics") if base else None
    logs = _signal_url(base, "/v1/logs") if base else None
    return Exporters(
        spans=HttpSpans(endpoint=traces) if settings.traces else None,
        logs=HttpLogs(endpoint=logs) if settings.logs else None,
        metrics=(lambda: HttpMetrics(endpoint=metrics)) if settings.metrics else None,
    )


def describe(settings: OtlpSettings, env: Mapping[str, str] | None = None) -> str:
    """Where OTLP goes, for the start-up line."""
    env = os.environ if env is None else env
    where = settings.endpoint or env.get(OTEL_EXPORTER_OTLP_ENDPOINT) or "per-signal endpoints"
    signals = [
        name
        for name, on in (
            ("spans", settings.traces),
            ("metrics", settings.metrics),
            ("logs", settings.logs),
        )
        if on
    ]
    return f"{', '.join(signals)} over OTLP ({settings.protocol}) to {where}"


def _address(settings: OtlpSettings, env: Mapping[str, str]) -> tuple[str, str, int] | str | None:
    """(endpoint, host, port) the spans go to; a reason if the endpoint is malformed; None: none."""
    endpoint = (
        settings.endpoint
        or env.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
        or env.get(OTEL_EXPORTER_OTLP_ENDPOINT)
    )
    if not endpoint:
        return None
    try:  # urlsplit raises too: "http://[" is an unfinished IPv6 address
        parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        port = parts.port or (
            443 if parts.scheme == "https" else GRPC_PORT if settings.protocol == GRPC else 4318
        )
    except ValueError:
        return f"bad endpoint {endpoint!r}"
    return endpoint, parts.hostname or "localhost", port


def reachable(settings: OtlpSettings, env: Mapping[str, str] | None = None) -> str | None:
    """None if the collector accepts a TCP connection, else why not (a warning, not an error).

    A collector that is down at start may come up later; blocks are queued
    meanwhile, so this only tells the user early.
    """
    address = _address(settings, os.environ if env is None else env)
    if address is None or isinstance(address, str):
        return address
    _, host, port = address
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
    except ValueError as exc:  # a name IDNA cannot encode, e.g. "collector..local"
        return f"bad endpoint host {host!r}: {exc}"


def collector_address(
    settings: OtlpSettings, env: Mapping[str, str]
) -> tuple[str, int] | str | None:
    """(host, port) the spans go to; None without an endpoint; why not, when it names none."""
    address = _address(settings, env)
    if address is None or isinstance(address, str):
        return address
    _, host, port = address
    return host, port


HTTP2_SETTINGS_FRAME = 0x04
"""Type of the frame an HTTP/2 server (every gRPC server) sends first, in byte 3 of its header."""
WRONG_PROTOCOL_HINT = (
    "set OTEL_EXPORTER_OTLP_PROTOCOL=grpc or --otlp-protocol grpc, "
    "or use the collector's OTLP/HTTP port, 4318 by default"
)


def not_http1(answer: bytes) -> str | None:
    """Why a server that answered an HTTP/1.1 request with ``answer`` is no OTLP/HTTP endpoint.

    None when it may be one: it answered in HTTP/1.x, or said nothing to judge by.
    """
    if b"HTTP/1.".startswith(answer[:7]):  # also nothing, or the start of a status line
        return None
    if len(answer) >= 4 and answer[3] == HTTP2_SETTINGS_FRAME:
        return "it answers in HTTP/2, as a gRPC port does"
    return "its answer is not HTTP"


def wrong_protocol(settings: OtlpSettings, env: Mapping[str, str] | None = None) -> str | None:
    """Why the endpoint cannot be OTLP/HTTP, when that is the protocol; else None.

    An HTTP/1.1 request for ``/`` (no OTLP data) is sent over plain TCP: an
    OTLP/HTTP collector answers it in HTTP/1.1 (404 or so), a gRPC port in
    HTTP/2 frames, which the HTTP exporter would only ever report as a
    ``BadStatusLine``. TLS endpoints are not probed.
    """
    if settings.protocol != HTTP:
        return None
    address = _address(settings, os.environ if env is None else env)
    if address is None or isinstance(address, str):
        return None
    endpoint, host, port = address
    if endpoint.startswith("https://"):
        return None
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as conn:
            conn.sendall(request)
            answer = conn.recv(16)
    except (OSError, ValueError):
        return None  # unreachable, silent or unnamable: reachable() and the exporter say so
    reason = not_http1(answer)
    if reason is None:
        return None
    return f"{endpoint} does not speak OTLP/HTTP: {reason} (hint: {WRONG_PROTOCOL_HINT})"


BAD_STATUS_HTTP2 = re.compile(r"BadStatusLine\(['\"]\\x00\\x00(?:\\x[0-9a-f]{2}|.)\\x04")
"""How the HTTP exporter reports an HTTP/2 answer: a status line of binary frame bytes."""


def explain_export_failure(text: str) -> str | None:
    """A plain reason for an exporter's message about a failure it cannot explain, if known."""
    if BAD_STATUS_HTTP2.search(text):
        return (
            "failed to export over OTLP/HTTP: the endpoint does not speak it, it answers in "
            f"HTTP/2, as a gRPC port does (hint: {WRONG_PROTOCOL_HINT})"
        )
    return None
