from __future__ import annotations

import pytest

from otel_blocksnoop.cli import main, parse_arguments
from otel_blocksnoop.errors import ExitCode


def test_defaults_for_a_pid() -> None:
    args = parse_arguments(["1234"])
    assert args.pids == (1234,)
    assert args.command == []
    assert args.threshold_ns == 100_000_000
    assert not args.json
    assert not args.stats


def test_everything_after_the_double_dash_is_the_command_even_flags() -> None:
    args = parse_arguments(["-t", "2.5", "--json", "--", "python3", "app.py", "-t", "9"])
    assert args.pids == ()
    assert args.command == ["python3", "app.py", "-t", "9"]
    assert args.threshold_ns == 2_500_000
    assert args.json


def test_fractional_thresholds_are_kept_to_the_nanosecond() -> None:
    assert parse_arguments(["-t", "0.8", "1"]).threshold_ns == 800_000


@pytest.mark.parametrize(
    "argv", [["-t", "0", "1"], ["1", "--", "x"], [], ["--tid", "3", "--", "x"]]
)
def test_bad_arguments_exit_with_the_usage_code(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(argv)
    assert exit_info.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("otel-blocksnoop: error: ")


def test_several_pids_are_watched_once_each() -> None:
    assert parse_arguments(["5", "6", "5"]).pids == (5, 6)


def test_tid_needs_exactly_one_pid(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_arguments(["--tid", "7", "5", "6"])
    assert "--tid needs exactly one PID" in capsys.readouterr().err


def test_ebpf_needs_no_target() -> None:
    assert parse_arguments(["--ebpf"]).ebpf


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["-t", "1e14", "1"], "must be from 0.001 to 3.6e+06 milliseconds, not '1e14'"),
        (["-t", "0.0000001", "1"], "must be from 0.001 to 3.6e+06 milliseconds"),
        (["-t", "nan", "1"], "must be from"),
        (["--sample-interval", "0.0001", "1"], "must be from 0.001 to 1000 milliseconds"),
        (["--sample-interval", "1e12", "1"], "must be from 0.001 to 1000 milliseconds"),
        (["99999999999"], "not a process id: '99999999999' (ids go from 1 to 4194304)"),
        (["--tid", "4194305", "1"], "not a process id"),
    ],
)
def test_values_out_of_range_are_refused_up_front_with_the_range(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a value the kernel program, Austin or the kernel's ids cannot take
    # WHEN the command line is parsed
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(argv)

    # THEN one line says the range, with the usage exit code
    assert exit_info.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert said in err


def test_the_range_ends_are_accepted_as_given() -> None:
    low = parse_arguments(["-t", "0.001", "--sample-interval", "0.001", "1"])
    high = parse_arguments(["-t", "3600000", "--sample-interval", "1000", "4194304"])
    assert (low.threshold_ns, low.sample_interval_us) == (1_000, 1)
    assert (high.threshold_ns, high.sample_interval_us) == (3_600_000_000_000, 1_000_000)
    assert high.pids == (4_194_304,)


def test_a_sample_interval_is_rounded_to_the_microsecond_austin_takes() -> None:
    assert parse_arguments(["--sample-interval", "0.0015", "1"]).sample_interval_us == 2
    assert parse_arguments(["--sample-interval", "2.5", "1"]).sample_interval_us == 2_500


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "foo", "OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or"),
        ("OTEL_SERVICE_NAME", "x" * 300, "OTEL_SERVICE_NAME must be at most 255 characters"),
    ],
)
def test_a_bad_otel_variable_is_one_line_and_the_usage_code_not_a_traceback(
    variable: str,
    value: str,
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a sidecar environment with a value the exporters cannot use
    monkeypatch.setenv(variable, value)
    # WHEN the sidecar starts
    code = main(["1"])
    # THEN it stops there, in one line with the usage code
    assert code == ExitCode.USAGE
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"otel-blocksnoop: {said}")
