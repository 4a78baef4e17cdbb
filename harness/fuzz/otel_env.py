"""The ``OTEL_*`` environment, fuzzed: a bad value is a ConfigError, never a traceback.

Environments are drawn from the variables the sidecar and the SDK exporters
read, each with a value from numbers written every way (``inf``, ``nan``,
``1e400``, ``0.5``, ``-0``), the documented words and any text. Whatever is
drawn, settings are either refused with ``ConfigError`` or usable as they
are: counts of at least 1, waits that a thread can be given.

The unit tests (``tests/unit/test_fuzz_*.py``) run these properties on a
small fixed budget with their seed corpus; ``bench/fuzz.py`` for minutes.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from unittest import mock

from hypothesis import strategies as st

from harness.fuzz import Target
from otel_blocksnoop.errors import ConfigError
from otel_blocksnoop.export import otlp

NUMERIC = (
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_METRIC_EXPORT_INTERVAL",
)
WORDS = (
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)

numbers_as_text = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "1e400", "0.5", "0.0001", "-0", "0", " 7 ", "1_000"]),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
words = st.one_of(
    st.sampled_from(["grpc", "http/protobuf", "http/json", "none", "otlp", "true", "TRUE "]),
    st.sampled_from(["http://collector:4318", "collector:4317", "http://[", "//x..y:1"]),
    st.text(max_size=30),
)


SDK_READS = (
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_INSECURE",
)
"""What the SDK's exporters read themselves (certificates aside: those are files)."""


@st.composite
def environments(draw: st.DrawFn) -> dict[str, str]:
    env = {name: draw(numbers_as_text) for name in draw(st.sets(st.sampled_from(NUMERIC)))}
    env.update({name: draw(words) for name in draw(st.sets(st.sampled_from(WORDS)))})
    return env


def check_settings(env: dict[str, str]) -> None:
    """Refused with ConfigError, or values every consumer takes as they are."""
    try:
        settings = otlp.settings_from(env)
    except ConfigError as error:
        problem = str(error)
    else:
        problem = ""
    assert "\n" not in problem  # one line
    if problem:
        return
    assert 1 <= settings.max_queue <= otlp.MAX_COUNT
    assert 1 <= settings.batch_size <= otlp.MAX_COUNT
    assert settings.metric_interval_ms >= 1  # the SDK's metric reader refuses 0
    for wait_s in (settings.schedule_delay_s, settings.shutdown_timeout_s):
        assert math.isfinite(wait_s)
        assert 0 < wait_s <= threading.TIMEOUT_MAX
    assert settings.shutdown_timeout_s * 1000 >= 1  # handed on in whole milliseconds
    assert settings.protocol in otlp.PROTOCOLS


@st.composite
def exporter_environments(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    values = st.one_of(numbers_as_text, words, st.sampled_from(["gzip", "deflate", "a=b,c"]))
    values = values.map(lambda value: value.replace("\0", ""))  # no environment holds a NUL
    env = {name: draw(values) for name in draw(st.sets(st.sampled_from(SDK_READS)))}
    return draw(st.sampled_from(otlp.PROTOCOLS)), env


def check_exporters(drawn: tuple[str, dict[str, str]]) -> None:
    """The SDK's exporters made under any environment: made, or one ConfigError."""
    protocol, env = drawn
    settings = otlp.settings_from({}, endpoint="http://127.0.0.1:9", protocol=protocol)
    clean = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        try:
            exporters = otlp.build_exporters(settings)
        except ConfigError as error:
            problem = str(error)
        else:
            problem = ""
    assert "\n" not in problem
    if problem:
        return
    assert exporters.spans is not None
    exporters.spans.shutdown()
    if exporters.logs is not None:
        exporters.logs.shutdown()  # type: ignore[no-untyped-call]


endpoints = st.one_of(
    words,
    st.builds(
        "{}://{}:{}".format,
        st.sampled_from(["http", "https", "grpc", ""]),
        st.text(max_size=20),
        st.one_of(st.integers(-5, 70000).map(str), st.text(max_size=5)),
    ),
)


def refused_connection(address: tuple[str, int], timeout: float) -> socket.socket:
    """socket.create_connection without a network: the host is encoded as getaddrinfo does."""
    host, port = address
    host.encode("idna")
    assert 0 <= port <= 65535
    assert timeout > 0
    raise ConnectionRefusedError(111, "Connection refused")


def check_endpoint(drawn: tuple[str, str]) -> None:
    """Any endpoint: an address to try, or the reason it is none; reachable() never raises."""
    protocol, endpoint = drawn
    settings = otlp.settings_from({}, protocol=protocol)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    address = otlp.collector_address(settings, env)
    if isinstance(address, tuple):
        host, port = address
        assert host
        assert 0 <= port <= 65535
    with mock.patch.object(socket, "create_connection", refused_connection):
        problem = otlp.reachable(settings, env)
    assert problem is None if address is None else isinstance(problem, str)


TARGETS: dict[str, Target] = {
    "OTEL_* settings": Target(environments(), check_settings),
    "OTLP exporters": Target(exporter_environments(), check_exporters),
    "OTLP endpoint": Target(st.tuples(st.sampled_from(otlp.PROTOCOLS), endpoints), check_endpoint),
}
