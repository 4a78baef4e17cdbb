"""The preflight checks' pure logic: capabilities, ptrace rules, tracefs, and doctor's verdict."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from otel_blocksnoop import cli, preflight
from otel_blocksnoop.errors import ExitCode, NoPrivilegesError, TracefsMissingError
from otel_blocksnoop.kernel import program, tracepoints
from otel_blocksnoop.preflight import (
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    Check,
    Credentials,
)
from otel_blocksnoop.process.remote_memory import _first_readable, access_error

STATUS = """\
Name:\tpython3
Uid:\t1000\t1000\t1000\t1000
CapPrm:\t0000000000200000
CapEff:\t000000c000080000
"""


def caps(*bits: int) -> int:
    return sum(1 << bit for bit in bits)


def test_capability_masks_are_read_from_proc_status() -> None:
    assert preflight.capability_set(STATUS) == caps(CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE)
    assert preflight.capability_set(STATUS, "CapPrm") == caps(CAP_SYS_ADMIN)
    assert preflight.capability_set("Name:\tx\n") == 0


@pytest.mark.parametrize(
    ("uid", "held", "ok"),
    [
        (65534, caps(CAP_BPF, CAP_PERFMON), True),
        (65534, caps(CAP_SYS_ADMIN), True),
        (0, caps(CAP_SYS_ADMIN, CAP_SYS_PTRACE), True),
        (0, caps(CAP_BPF), False),  # uid 0 alone is not enough: the kernel checks capabilities
        (0, 0, False),
        (65534, caps(CAP_PERFMON, CAP_SYS_PTRACE), False),
    ],
)
def test_loading_bpf_needs_bpf_and_perfmon_or_sys_admin_whatever_the_uid(
    uid: int, held: int, ok: bool
) -> None:
    check = preflight.check_capabilities(Credentials(uid, held))
    assert check.ok is ok
    assert (check.error is None) is ok


def test_missing_capabilities_are_named_with_exit_code_5() -> None:
    check = preflight.check_capabilities(Credentials(0, caps(CAP_BPF, CAP_SYS_PTRACE)))
    assert isinstance(check.error, NoPrivilegesError)
    assert check.error.exit_code == ExitCode.NO_PRIVILEGES
    assert "missing CAP_PERFMON (or CAP_SYS_ADMIN)" in str(check.error)
    assert "CAP_BPF" in str(check.error)


def test_a_process_of_another_uid_is_denied_for_its_uid() -> None:
    reason = preflight.denial_reason(STATUS, Credentials(0, caps(CAP_SYS_ADMIN)))
    assert reason == "no CAP_SYS_PTRACE, and it runs as uid 1000, this process as uid 0"


def test_a_process_of_the_same_uid_is_denied_for_capabilities_we_lack() -> None:
    reason = preflight.denial_reason(STATUS, Credentials(1000, caps(CAP_BPF)))
    assert reason.endswith("it holds capabilities this process lacks: CAP_SYS_ADMIN")


def test_tracefs_mount_points_come_from_the_mount_table() -> None:
    mounts = (
        "sysfs /sys sysfs rw 0 0\n"
        "tracefs /sys/kernel/tracing tracefs rw,relatime 0 0\n"
        "tracefs /mnt/with\\040space tracefs rw 0 0\n"
    )
    assert tracepoints.tracefs_mounts(mounts) == {
        Path("/sys/kernel/tracing"),
        Path("/mnt/with space"),
    }


def make_events(root: Path, *events: str) -> Path:
    for name in events:
        directory = root / "events" / "syscalls" / name
        directory.mkdir(parents=True)
        (directory / "id").write_text("42\n")
        (directory / "format").write_text("name: x\n")
    (root / "events").mkdir(parents=True, exist_ok=True)
    return root / "events"


def test_tracefs_access_finds_the_readable_events_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty" / "events"
    found = make_events(tmp_path / "tracing", "sys_enter_epoll_wait")
    monkeypatch.setattr(tracepoints, "TRACEFS_EVENTS", (empty, found))
    access = tracepoints.tracefs_access("syscalls", "sys_enter_epoll_wait")
    assert access == tracepoints.TracefsAccess(events=found)


def test_tracefs_without_the_tracepoint_is_told_apart_from_no_tracefs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_events(tmp_path / "tracing", "sys_enter_read")
    monkeypatch.setattr(tracepoints, "TRACEFS_EVENTS", (other,))
    access = tracepoints.tracefs_access("syscalls", "sys_enter_epoll_wait")
    assert access == tracepoints.TracefsAccess(without_event=other)
    monkeypatch.setattr(tracepoints, "TRACEFS_EVENTS", (tmp_path / "none" / "events",))
    assert tracepoints.tracefs_access("syscalls", "x") == tracepoints.TracefsAccess()


def test_the_first_readable_mapping_is_where_memory_access_is_probed() -> None:
    maps = (
        "00400000-00401000 ---p 00000000 00:00 0\n"
        "7f0000000000-7f0000001000 r-xp 00000000 fd:01 123 /usr/bin/python3.11\n"
    )
    assert _first_readable(maps) == 0x7F0000000000
    assert _first_readable("") is None


def test_memory_access_is_allowed_to_ourselves_and_fails_for_a_gone_process() -> None:
    assert access_error(os.getpid()) is None
    assert isinstance(access_error(2**22 + 1), FileNotFoundError)  # above the largest pid_max


def test_compiler_output_is_captured_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN no usable temporary directory (as on a read-only root filesystem)
    monkeypatch.setattr("tempfile.tempdir", "/nonexistent/tmp")
    # WHEN something writes to fd 2 while it is captured
    with program.captured_stderr(None) as output:
        os.write(2, b"error: it broke\n")
        # THEN it is read back in full
        assert output() == "error: it broke\n"


FAILED = NoPrivilegesError("failed to read tracefs at /sys/kernel/tracing: permission denied")
CHECKS = [
    Check("process 1234", ok=True, detail="python3.11, memory readable"),
    Check("capabilities", ok=True, detail="uid 65534, CAP_BPF"),
    Check("tracefs", ok=False, detail="not readable", error=FAILED),
    Check("attach", ok=False, detail="not tried", required=False, skipped=True),
    Check("headers", ok=False, detail="missing", error=TracefsMissingError("second failure")),
]


def test_doctor_and_a_run_stop_at_the_same_check_with_the_same_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN checks of which two required ones fail
    monkeypatch.setattr(preflight, "run_checks", lambda *_args, **_kwargs: CHECKS)
    # WHEN doctor runs, then a run
    doctor_code = cli.main(["doctor", "1234"])
    doctor_out = capsys.readouterr().out
    run_code = cli.main(["1234"])
    run_err = capsys.readouterr().err
    # THEN both name the first failure, with the same line and exit code
    assert doctor_code == run_code == ExitCode.NO_PRIVILEGES
    (verdict,) = [line for line in doctor_out.splitlines() if line.startswith("verdict:")]
    assert verdict.endswith(run_err.strip())
    assert "exit 5" in verdict
    assert "[skipped] attach" in doctor_out
    assert run_err.count("\n") == 1
