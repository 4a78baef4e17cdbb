"""The ``OTEL_*`` environment, fuzzed: a bad value is a ConfigError, never a traceback.

Environments are drawn from the variables the sidecar and the SDK exporters
read, each with a value from numbers written every way (``inf``, ``nan``,
``1e400``, ``0.5``, ``-0``), the documented words and any text. Whatever is
drawn, settings are either refused with ``ConfigError`` or usable as they
are: counts of at least 1, waits that a thread can be given.
``bench/fuzz.py`` runs the same properties for minutes.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from unittest import mock

from hypothesis import example, given
from hypothesis import strategies as st

from otel_blocksnoop.errors import ConfigError
from otel_blocksnoop.export import otlp
from tests.unit.fuzzing import Target

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


@given(environments())
@example({"OTEL_BSP_MAX_QUEUE_SIZE": "inf"})  # OverflowError from int()
@example({"OTEL_BSP_SCHEDULE_DELAY": "nan"})
@example({"OTEL_METRIC_EXPORT_INTERVAL": "0.5"})  # 0 ms: the SDK's reader raised ValueError
@example({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "0.5"})  # a batch of 0
@example({"OTEL_BSP_EXPORT_TIMEOUT": "1e300"})  # past what a thread can wait
def test_any_environment_gives_usable_settings_or_a_config_error(env: dict[str, str]) -> None:
    check_settings(env)


@given(exporter_environments())
@example(("grpc", {"OTEL_EXPORTER_OTLP_TIMEOUT": "abc"}))  # ValueError from the SDK's float()
@example(("grpc", {"OTEL_EXPORTER_OTLP_COMPRESSION": "zzz"}))  # InvalidCompressionValueException
def test_the_sdk_exporters_refuse_a_value_with_a_config_error_only(
    drawn: tuple[str, dict[str, str]],
) -> None:
    check_exporters(drawn)


@given(st.tuples(st.sampled_from(otlp.PROTOCOLS), endpoints))
@example(("grpc", "http://["))  # urlsplit's ValueError ended the start in a traceback
@example(("http/protobuf", "http://collector..local:4318"))  # and so did IDNA's UnicodeError
def test_any_endpoint_is_tried_or_explained_never_raised(drawn: tuple[str, str]) -> None:
    check_endpoint(drawn)
