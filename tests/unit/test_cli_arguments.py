from __future__ import annotations

import pytest

from otel_blocksnoop.cli import parse_arguments
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
