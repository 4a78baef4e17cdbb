"""A PID that is no process to watch is refused with its reason, before any BPF is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_blocksnoop.errors import BadTargetError, ExitCode, NotPythonError
from otel_blocksnoop.process.target import inspect_target, parse_task

KTHREADD_STAT = (
    "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 1 0 0 20 0 1 0 25 0 0 "
    "18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
)
KTHREADD_STATUS = (
    "Name:\tkthreadd\nUmask:\t0000\nState:\tS (sleeping)\nTgid:\t2\nNgid:\t0\nPid:\t2\n"
)
WORKER_STAT = (
    "31046 (a (b) c) R 31043 31043 23667 0 -1 4194304 104 0 0 0 0 0 0 0 20 0 1 0 2219853 "
    "3133440 418 18446744073709551615 1 1 1 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 1 1 1 1 1 1 1 0\n"
)
WORKER_STATUS = "Name:\ta (b) c\nTgid:\t31040\nPid:\t31046\n"


def test_a_kernel_thread_is_told_by_its_flags() -> None:
    kind = parse_task(KTHREADD_STAT, KTHREADD_STATUS)
    assert kind.kernel_thread
    assert (kind.name, kind.tgid) == ("kthreadd", 2)


def test_a_user_thread_names_its_process_whatever_its_name_holds() -> None:
    kind = parse_task(WORKER_STAT, WORKER_STATUS)
    assert not kind.kernel_thread
    assert (kind.name, kind.tgid) == ("a (b) c", 31040)


def test_the_sidecar_refuses_to_watch_itself() -> None:
    # GIVEN this process, which stands for the sidecar (it is Python, so it would pass otherwise)
    # WHEN it is asked to watch its own PID
    with pytest.raises(BadTargetError) as error:
        inspect_target(os.getpid())

    # THEN it refuses, saying why, with the usage exit code
    assert (
        str(error.value)
        == f"refusing to watch process {os.getpid()}: it is this otel-blocksnoop itself"
    )
    assert error.value.exit_code == ExitCode.USAGE


def test_a_thread_of_the_sidecar_is_the_sidecar_too() -> None:
    done = threading.Event()
    thread = threading.Thread(target=done.wait)
    thread.start()
    try:
        assert thread.native_id is not None
        with pytest.raises(BadTargetError, match="this otel-blocksnoop itself"):
            inspect_target(thread.native_id)
    finally:
        done.set()
        thread.join()


@pytest.fixture
def python_thread() -> Iterator[tuple[int, int]]:
    """(pid, tid) of a second thread of another Python process."""
    code = (
        "import sys, threading\n"
        "t = threading.Thread(target=sys.stdin.read)\n"
        "t.start()\n"
        "print(t.native_id, flush=True)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdin is not None
    tid = int(process.stdout.readline())
    yield process.pid, tid
    process.stdin.close()
    process.wait(timeout=10)


def test_a_thread_id_is_refused_with_its_process_and_tid_named(
    python_thread: tuple[int, int],
) -> None:
    # GIVEN the id of a thread that is not its process's main thread
    pid, tid = python_thread

    # WHEN it is given as the PID
    with pytest.raises(BadTargetError) as error:
        inspect_target(tid)

    # THEN the refusal names the process to pass instead, and --tid for that thread
    assert str(error.value) == f"{tid} is a thread of process {pid}, not a process"
    assert error.value.hint == f"pass {pid}, and `--tid {tid}` to watch only that thread"
    assert inspect_target(pid).pid == pid


def test_a_kernel_thread_is_not_said_to_have_exited() -> None:
    # GIVEN a kernel thread of this machine (kthreadd, PID 2, in the initial PID namespace)
    kernel_threads = [
        int(entry.name)
        for entry in os.scandir("/proc")
        if entry.name.isdigit() and _is_kernel_thread(int(entry.name))
    ]
    if not kernel_threads:
        pytest.skip("no kernel thread is visible in this PID namespace")

    # WHEN it is given as the PID
    with pytest.raises(NotPythonError) as error:
        inspect_target(kernel_threads[0])

    # THEN it is called a kernel thread, with the not-Python exit code
    assert "is a kernel thread, not a user process" in str(error.value)
    assert error.value.exit_code == ExitCode.NOT_PYTHON


def _is_kernel_thread(pid: int) -> bool:
    try:
        proc = Path("/proc") / str(pid)
        return parse_task((proc / "stat").read_text(), (proc / "status").read_text()).kernel_thread
    except (OSError, ValueError, StopIteration):
        return False
