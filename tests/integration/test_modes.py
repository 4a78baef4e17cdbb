"""Stats mode, the doctor checklist, the hidden --ebpf flag and exit codes of launched commands."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import BLOCKER, run_raw, run_sidecar

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]


def test_stats_mode_shows_the_distribution_of_iterations() -> None:
    # GIVEN an app whose loop iterates quickly, with seven 120 ms blocks in between
    run = run_sidecar(
        "--stats", "--json", "-q", "--", sys.executable, str(BLOCKER), "all", "--out", "/dev/null"
    )
    # THEN at least one interval is reported, it counts iterations and saw the blocks
    assert run.returncode == 0, run.stderr
    stats = [r for r in run.records if r["type"] == "stats"]
    assert stats
    assert sum(s["iterations"] for s in stats) >= 6
    assert max(s["max_ms"] for s in stats) >= 100
    quantiles = ["min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"]
    for interval in stats:
        values = [interval[q] for q in quantiles]
        assert values == sorted(values), interval
    assert run.records[-1]["iterations"] >= sum(s["iterations"] for s in stats)
    assert [r for r in run.records if r["type"] == "block"] == []


def test_the_launched_commands_exit_code_is_the_sidecars() -> None:
    run = run_sidecar("-q", "--", sys.executable, "-c", "raise SystemExit(7)")
    assert run.returncode == 7


def test_a_launched_command_killed_by_a_signal_exits_128_plus_n() -> None:
    run = run_sidecar("-q", "--", sys.executable, "-c", "import os; os.kill(os.getpid(), 9)")
    assert run.returncode == 128 + 9


def test_doctor_lists_every_check_as_ok_on_a_ready_host() -> None:
    result = run_raw("doctor")
    assert result.returncode == 0
    *checks, verdict = result.stdout.splitlines()
    names = [line.split("]", 1)[1].split()[0] for line in checks]
    assert names == [
        "capabilities", "interpreter", "bcc", "tracefs", "attach", "kernel", "ptrace", "austin",
    ]  # fmt: skip
    assert all(line.startswith("[  ok   ]") for line in checks)
    assert verdict == "verdict: ready to launch a command, or watch any process"


def test_ebpf_flag_prints_the_program_with_its_constants() -> None:
    result = run_raw("--ebpf", "-t", "5")
    assert result.returncode == 0
    assert "-DTHRESHOLD_NS=5000000ULL" in result.stdout
    assert "int on_epoll_enter(void *ctx)" in result.stdout
    assert "struct block_event {" in result.stdout  # the header is inlined


def test_console_output_is_one_aligned_line_per_block_and_a_summary() -> None:
    # (after 1 s: Austin attaches when the loop first leaves epoll, and needs a moment)
    target = [sys.executable, str(BLOCKER), "all", "--delay", "1", "--out", "/dev/null"]
    result = run_raw("-t", "50", "--", *target)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "PID", "TID", "THREAD", "BLOCKED", "CAUSE"]
    # (a block stretched past threshold + 100 ms by a busy machine is also shown
    # while it lasts: those rows say so)
    rows = [line for line in lines[1:] if line[:1].isdigit() and "STILL BLOCKED" not in line]
    assert len(rows) == 7
    cause_at = lines[0].index("CAUSE")
    assert all(row[:cause_at].endswith(" ms  ") for row in rows)
    causes = {row[cause_at:].split()[0] for row in rows}
    assert causes == {"clock_nanosleep()", "cpu", "read()", "wait4()", "futex()", "gil"}
    # each block is followed by its stack, most recent call last, with source lines
    first, second = lines.index(rows[0]), lines.index(rows[1])
    assert lines[first + 1] == "    Traceback (most recent call last):"
    assert "in block_once" in "\n".join(lines[first:second])
    assert "BLOCKERS[scenario](seconds)" in "\n".join(lines[first:second])
    # the summary, then at most a line of what was lost (e.g. a span read that came late)
    summary_at = max(i for i, line in enumerate(lines) if line.startswith("--- "))
    assert lines[summary_at].startswith("--- 7 blocks in ")
    assert lines[summary_at].endswith(" loop iterations")
    assert all(line.startswith("    lost: ") for line in lines[summary_at + 1 :])
    assert "compiling and loading the BPF program" in result.stderr
    assert "OTLP export is off (set OTEL_EXPORTER_OTLP_ENDPOINT" in result.stderr
    assert "watching for blocks >= 50 ms" in result.stderr
