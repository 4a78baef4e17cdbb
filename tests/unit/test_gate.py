from __future__ import annotations

import io
from dataclasses import replace

import pytest

from otel_blocksnoop.cli import parse_arguments
from otel_blocksnoop.errors import ExitCode
from otel_blocksnoop.events import (
    NS_PER_MS,
    Block,
    Frame,
    Iteration,
    Loss,
    SessionSummary,
)
from otel_blocksnoop.export.gate import Gate

SITE = Frame("crunch", "/app/work.py", 12)


def block(ms: float, *, start_ms: float = 0, in_progress: bool = False, segment: int = 0) -> Block:
    start, end = int(start_ms * NS_PER_MS), int((start_ms + ms) * NS_PER_MS)
    return Block(
        pid=10,
        tid=10,
        thread_name="MainThread",
        start_ns=start,
        end_ns=end,
        start_unix_ns=start,
        end_unix_ns=end,
        threshold_ns=10 * NS_PER_MS,
        stack=(Frame("main", "/app/work.py", 30), SITE),
        source_lines=("crunch()", "zlib.compress(data)"),
        call_site=SITE,
        in_progress=in_progress,
        segment=segment,
    )


def summary(**losses: int) -> SessionSummary:
    return SessionSummary(
        blocks=0,
        blocked_ns=0,
        max_block_ns=0,
        lost_events=0,
        ignored_blocks=0,
        losses=tuple((Loss(what.replace("_", ".")), count) for what, count in losses.items()),
    )


def test_a_block_at_the_limit_fails_the_run_and_is_printed_with_its_stack() -> None:
    # GIVEN a gate at 50 ms that saw a 30 ms and a 50 ms block
    out = io.StringIO()
    gate = Gate(50 * NS_PER_MS, fail_on_loss=False, stream=out)
    gate.export(block(30))
    gate.export(block(50, start_ms=100))
    gate.export(summary())
    # WHEN the command exited 0
    code = gate.verdict(ExitCode.OK)
    # THEN the run fails with its own code, naming the one block, its call site and stack
    assert code == ExitCode.LOOP_BLOCKED
    text = out.getvalue()
    assert "1 blocked loop iteration of at least 50 ms" in text
    assert "at crunch (/app/work.py:12)" in text
    assert 'File "/app/work.py", line 12, in crunch' in text
    assert "zlib.compress(data)" in text


def test_no_block_at_the_limit_leaves_the_commands_code_and_prints_nothing() -> None:
    out = io.StringIO()
    gate = Gate(50 * NS_PER_MS, fail_on_loss=True, stream=out)
    gate.export(block(49.9))
    gate.export(summary(stacks_late=3, export_queue=2))
    assert gate.verdict(ExitCode.OK) == ExitCode.OK
    assert gate.verdict(7) == 7
    assert out.getvalue() == ""


def test_a_failing_command_keeps_its_own_code_and_the_blocks_are_still_printed() -> None:
    out = io.StringIO()
    gate = Gate(50 * NS_PER_MS, fail_on_loss=False, stream=out)
    gate.export(block(80))
    assert gate.verdict(1) == 1
    assert "the command's own exit code 1 wins" in out.getvalue()
    assert "at crunch (/app/work.py:12)" in out.getvalue()


def test_a_hang_report_is_judged_only_once_it_has_ended() -> None:
    gate = Gate(50 * NS_PER_MS, fail_on_loss=False, stream=io.StringIO())
    gate.export(block(200, in_progress=True))
    assert gate.verdict(ExitCode.OK) == ExitCode.OK


def test_an_iterations_request_segments_count_as_one_block_by_the_iterations_length() -> None:
    # GIVEN one 60 ms iteration cut into two 30 ms segments of two requests
    whole = Iteration(start_ns=0, end_ns=60 * NS_PER_MS, start_unix_ns=0, end_unix_ns=0, segments=2)
    first = block(30)
    second = block(30, start_ms=30, segment=1)
    gate = Gate(50 * NS_PER_MS, fail_on_loss=False, stream=io.StringIO())
    for part in (first, second):
        gate.export(replace(part, iteration=whole))
    # THEN the gate holds one block, and fails on it
    assert len(gate.blocks) == 1
    assert gate.verdict(ExitCode.OK) == ExitCode.LOOP_BLOCKED


@pytest.mark.parametrize(
    ("losses", "fails"),
    [
        ({"kernel_events": 1}, True),
        ({"kernel_threads": 2}, True),
        ({"kernel_triggers": 1}, True),
        ({"stacks_unknown": 1}, True),
        ({"context_late": 5, "link_undecided": 1, "export_undelivered": 3}, False),
    ],
)
def test_fail_on_loss_counts_only_losses_that_can_hide_a_block_or_its_call_site(
    losses: dict[str, int], fails: bool
) -> None:
    out = io.StringIO()
    gate = Gate(None, fail_on_loss=True, stream=out)
    gate.export(summary(**losses))
    assert gate.verdict(ExitCode.OK) == (ExitCode.EVENTS_LOST if fails else ExitCode.OK)
    assert ("--fail-on-loss" in out.getvalue()) == fails


def test_losses_do_not_fail_the_run_without_fail_on_loss() -> None:
    gate = Gate(50 * NS_PER_MS, fail_on_loss=False, stream=io.StringIO())
    gate.export(summary(kernel_events=4))
    assert gate.verdict(ExitCode.OK) == ExitCode.OK


def test_fail_on_sets_the_threshold_when_none_is_given() -> None:
    args = parse_arguments(["--fail-on", "20", "--", "pytest"])
    assert args.fail_on_ns == 20 * NS_PER_MS
    assert args.threshold_ns == 20 * NS_PER_MS
    assert parse_arguments(["--fail-on", "50", "-t", "10", "1"]).threshold_ns == 10 * NS_PER_MS


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--fail-on", "-5", "1"], "must be from 0.001 to 3.6e+06 milliseconds, not '-5'"),
        (["--fail-on", "soon", "1"], "not a number: 'soon'"),
        (["--fail-on", "10", "-t", "50", "1"], "--fail-on 10 is below -t 50"),
        (["--fail-on", "10", "--stats", "1"], "--stats reports none"),
    ],
)
def test_bad_fail_on_values_are_one_line_usage_errors(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(argv)
    assert exit_info.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert said in err


def test_a_block_the_wiring_says_held_up_no_loop_does_not_fail_the_run() -> None:
    gate = Gate(50 * NS_PER_MS, fail_on_loss=False, stream=io.StringIO(), counts=lambda _b: False)
    gate.export(block(300))
    assert gate.verdict(ExitCode.OK) == ExitCode.OK
