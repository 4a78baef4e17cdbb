"""OTLP settings from the standard environment variables, flags on top."""

from __future__ import annotations

import pytest

from otel_blocksnoop.errors import ConfigError
from otel_blocksnoop.export.otlp import (
    DEFAULT_SCHEDULE_DELAY_MS,
    GRPC,
    HTTP,
    MAX_SERVICE_NAME,
    not_http1,
    settings_from,
)


def test_without_an_endpoint_otlp_is_off() -> None:
    settings = settings_from({})
    assert not settings.enabled
    assert settings.protocol == HTTP


def test_the_standard_endpoint_turns_every_signal_on_with_the_spec_default_protocol() -> None:
    settings = settings_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert (settings.traces, settings.metrics, settings.logs) == (True, True, True)
    assert settings.protocol == HTTP
    assert settings.endpoint is None  # the SDK exporters read it themselves
    assert settings.schedule_delay_s == DEFAULT_SCHEDULE_DELAY_MS / 1000


def test_flags_override_the_environment() -> None:
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": HTTP, "OTEL_SERVICE_NAME": "from-env"}
    settings = settings_from(env, endpoint="127.0.0.1:4317", protocol=GRPC, service="from-flag")
    assert settings.enabled
    assert (settings.endpoint, settings.protocol) == ("127.0.0.1:4317", GRPC)
    assert settings.fallback_service == "from-flag"
    assert settings_from(env).fallback_service == "from-env"


def test_a_signal_exporter_set_to_none_turns_that_signal_off() -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}
    settings = settings_from({**env, "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"})
    assert (settings.traces, settings.metrics, settings.logs) == (True, False, False)


def test_the_sdk_disabled_switch_wins_over_an_endpoint() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert not settings_from(env).enabled


def test_batching_variables_are_honoured() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_BSP_MAX_QUEUE_SIZE": "100",
        "OTEL_BSP_EXPORT_TIMEOUT": "2000",
        "OTEL_METRIC_EXPORT_INTERVAL": "1500",
    }
    settings = settings_from(env)
    assert settings.schedule_delay_s == 0.05
    assert settings.max_queue == 100
    assert settings.shutdown_timeout_s == 2.0
    assert settings.metric_interval_ms == 1500


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL must be"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "lots"}, "OTEL_BSP_MAX_QUEUE_SIZE must be a positive"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "-5"}, "OTEL_METRIC_EXPORT_INTERVAL must be a positive"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_variable(
    env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        settings_from(env)


@pytest.mark.parametrize(
    ("env", "flag", "said"),
    [
        ({}, "x" * 256, "--service must be at most 255 characters, not 256"),
        ({"OTEL_SERVICE_NAME": "x" * 1000}, None, "OTEL_SERVICE_NAME must be at most 255"),
    ],
)
def test_a_service_name_over_the_cap_from_the_sidecars_settings_is_refused(
    env: dict[str, str], flag: str | None, said: str
) -> None:
    with pytest.raises(ConfigError, match=said):
        settings_from(env, service=flag)


def test_a_service_name_at_the_cap_is_kept_whole() -> None:
    assert settings_from({}, service="y" * MAX_SERVICE_NAME).fallback_service == "y" * 255


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 404 Not Found\r\n", None),
        (b"HTTP/1.0 501 ", None),
        (b"HTT", None),  # the start of a status line: nothing to judge by
        (b"", None),
        (b"\x00\x00\x18\x04\x00\x00\x00\x00\x00\x00\x04\x00@", "it answers in HTTP/2"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "its answer is not HTTP"),
    ],
)
def test_an_answer_to_an_http1_request_tells_a_grpc_port_from_an_otlp_http_one(
    answer: bytes, reason: str | None
) -> None:
    found = not_http1(answer)
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(reason)
