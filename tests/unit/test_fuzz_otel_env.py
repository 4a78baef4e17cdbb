"""The fuzz properties of ``harness/fuzz/otel_env.py``: a small fixed budget, a seed corpus.

Each ``@example`` is an input that once found a bug (its comment says which) or
sits at a bound; ``bench/fuzz.py`` runs the same properties for minutes.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from harness.fuzz.otel_env import (
    check_endpoint,
    check_exporters,
    check_settings,
    endpoints,
    environments,
    exporter_environments,
)
from otel_blocksnoop.export import otlp


@given(environments())
@example({"OTEL_BSP_MAX_QUEUE_SIZE": "inf"})  # OverflowError from int()
@example({"OTEL_BSP_SCHEDULE_DELAY": "nan"})
@example({"OTEL_METRIC_EXPORT_INTERVAL": "0.5"})  # 0 ms: the SDK's reader raised ValueError
@example({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "0.5"})  # a batch of 0
@example({"OTEL_BSP_EXPORT_TIMEOUT": "1e300"})  # past what a thread can wait
@example({"OTEL_BSP_SCHEDULE_DELAY": "5e-324"})  # bench/fuzz.py: 0 s between exports
def test_any_environment_gives_usable_settings_or_a_config_error(env: dict[str, str]) -> None:
    check_settings(env)


@given(exporter_environments())
@example(("grpc", {"OTEL_EXPORTER_OTLP_TIMEOUT": "abc"}))  # ValueError from the SDK's float()
@example(("grpc", {"OTEL_EXPORTER_OTLP_COMPRESSION": "zzz"}))  # InvalidCompressionValueException
@example(("grpc", {"OTEL_EXPORTER_OTLP_COMPRESSION": "0\n0"}))  # bench/fuzz.py: a 2-line error
def test_the_sdk_exporters_refuse_a_value_with_a_config_error_only(
    drawn: tuple[str, dict[str, str]],
) -> None:
    check_exporters(drawn)


@given(st.tuples(st.sampled_from(otlp.PROTOCOLS), endpoints))
@example(("grpc", "http://["))  # urlsplit's ValueError ended the start in a traceback
@example(("http/protobuf", "http://collector..local:4318"))  # and so did IDNA's UnicodeError
def test_any_endpoint_is_tried_or_explained_never_raised(drawn: tuple[str, str]) -> None:
    check_endpoint(drawn)
