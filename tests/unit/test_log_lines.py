"""Whatever reaches stderr through logging is one line: ours, other libraries', Python warnings."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest

from otel_blocksnoop.cli import _configure_logging, one_line, parse_arguments

EXPORTER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
BAD_STATUS = (
    "Transient error ('Connection aborted.', BadStatusLine('\\x00\\x00\\x18\\x04\\x00\\x00"
    "\\x00\\x00\\x00\\x00\\x04\\x00@\\x00\\x00\\x00\\x05\\x00@\\x00\\x00\\x00\\x06\\x00\\x00@"
    "\\x00þ\\x03\\x00\\x00\\x00\\x01')) encountered while exporting spans batch, retrying in %ss."
)
"""What opentelemetry-exporter-otlp-proto-http 1.x logged against a gRPC port (seen here)."""


@pytest.fixture
def logging_as_configured() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, warnings.showwarning)
    yield
    logging.captureWarnings(capture=False)
    root.handlers[:], root.level, warnings.showwarning = saved


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


@pytest.mark.usefixtures("logging_as_configured")
def test_another_librarys_warning_with_a_traceback_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the sidecar's logging
    _configure_logging(parse_arguments(["1"]))

    # WHEN urllib3 logs a warning with its exception, as it does for headers it cannot parse
    try:
        raise ValueError("bad header\nsecond line")  # noqa: TRY301 - a real exception, with a traceback
    except ValueError:
        logging.getLogger("urllib3.connectionpool").warning(
            "Failed to parse headers (url=%s):\n  detail", "http://c:4318", exc_info=True
        )

    # THEN one line, the first of its message and of its exception, no traceback
    assert lines(capsys) == [
        "otel-blocksnoop: Failed to parse headers (url=http://c:4318): ValueError: bad header"
    ]


@pytest.mark.usefixtures("logging_as_configured")
def test_a_python_warning_is_one_line_through_logging(capsys: pytest.CaptureFixture[str]) -> None:
    _configure_logging(parse_arguments(["1"]))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("Unverified HTTPS request is being made", UserWarning, stacklevel=1)
    (line,) = lines(capsys)
    assert line.startswith("otel-blocksnoop: ")
    assert line.endswith("UserWarning: Unverified HTTPS request is being made")


@pytest.mark.usefixtures("logging_as_configured")
def test_an_http2_answer_to_the_http_exporter_is_said_plainly_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the sidecar's logging
    _configure_logging(parse_arguments(["1"]))

    # WHEN the OTLP/HTTP exporter reports a gRPC port's answer on three retries
    for delay in ("0.91", "1.77", "3.2"):
        logging.getLogger(EXPORTER).warning(BAD_STATUS, delay)

    # THEN one line says the endpoint does not speak OTLP/HTTP, and what to do
    assert lines(capsys) == [
        (
            "otel-blocksnoop: failed to export over OTLP/HTTP: the endpoint does not speak it, "
            "it answers in HTTP/2, as a gRPC port does (hint: set OTEL_EXPORTER_OTLP_PROTOCOL="
            "grpc or --otlp-protocol grpc, or use the collector's OTLP/HTTP port, 4318 by default)"
        )
    ]


@pytest.mark.usefixtures("logging_as_configured")
def test_repeats_of_another_librarys_message_are_dropped_but_ours_never(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _configure_logging(parse_arguments(["1"]))
    for delay in ("1", "2"):
        logging.getLogger(EXPORTER).warning("Transient error, retrying in %ss.", delay)
        logging.getLogger("otel_blocksnoop.session").warning("lost %s blocks", delay)
    assert lines(capsys) == [
        "otel-blocksnoop: Transient error, retrying in 1s.",
        "otel-blocksnoop: lost 1 blocks",
        "otel-blocksnoop: lost 2 blocks",
    ]


@pytest.mark.usefixtures("logging_as_configured")
def test_verbose_keeps_tracebacks_and_repeats(capsys: pytest.CaptureFixture[str]) -> None:
    _configure_logging(parse_arguments(["-v", "1"]))
    try:
        raise RuntimeError("boom")  # noqa: TRY301 - a real exception, with a traceback
    except RuntimeError:
        logging.getLogger("otel_blocksnoop.export.otel.queue").exception("failed to export spans")
    logging.getLogger(EXPORTER).warning("Transient error, retrying in 1s.")
    logging.getLogger(EXPORTER).warning("Transient error, retrying in 2s.")
    err = "\n".join(lines(capsys))
    assert "Traceback (most recent call last)" in err
    assert err.count("Transient error") == 2


def test_one_line_escapes_what_a_terminal_would_act_on_and_caps_the_length() -> None:
    assert one_line("\n  a\x1b[31mred\x00 \n b") == "a\\x1b[31mred\\x00"
    assert one_line("é" * 400) == "é" * 297 + "..."
