"""A launched command runs in a process group of its own, which a stop reaches as a whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from otel_blocksnoop.process.target import LaunchedCommand

WAIT_S = 30.0


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigterm_to_the_group_ends_a_shell_and_its_background_job() -> None:
    # GIVEN `sh -c 'sleep & wait'`: a non-interactive shell's background job ignores SIGINT
    child = LaunchedCommand(["sh", "-c", "sleep 60 & wait"])
    child.release()
    try:
        assert os.getpgid(child.pid) == child.pid != os.getpgrp()
        # WHEN its group gets SIGTERM
        child.signal_group(signal.SIGTERM)
        # THEN the shell and its job both end
        assert child.process.wait(timeout=WAIT_S) == -signal.SIGTERM
        deadline = time.monotonic() + WAIT_S
        while not group_gone(child.pid):  # the job is reaped by init, soon
            assert time.monotonic() < deadline, "the background job outlived SIGTERM"
            time.sleep(0.01)
    finally:
        child.signal_group(signal.SIGKILL)
        child.process.wait()
        child.close()


def test_signalling_a_group_that_is_gone_is_harmless() -> None:
    child = LaunchedCommand(["true"])
    child.release()
    child.process.wait(timeout=WAIT_S)
    child.signal_group(signal.SIGKILL)
    assert child.exit_code() == 0
    child.close()


DIES_WITH_ITS_PARENT = """
import os, sys, time
from otel_blocksnoop.process.target import LaunchedCommand
child = LaunchedCommand(["sleep", "60"])
child.release()
deadline = time.monotonic() + 30
while open(f"/proc/{child.pid}/comm").read().strip() != "sleep":  # until it has exec'd
    assert time.monotonic() < deadline
    time.sleep(0.01)
print(child.pid, flush=True)
os._exit(0)  # as if killed: no clean-up
"""


def test_a_launched_command_dies_with_the_sidecar_even_when_it_is_killed_outright() -> None:
    # GIVEN a sidecar (here, a small stand-in) that launched `sleep 60` and died at once
    result = subprocess.run(
        [sys.executable, "-c", DIES_WITH_ITS_PARENT],
        capture_output=True, text=True, timeout=WAIT_S, check=True,
    )  # fmt: skip
    pid = int(result.stdout)
    # THEN the command is gone too, though it has a process group of its own
    deadline = time.monotonic() + WAIT_S
    while not gone(pid):
        assert time.monotonic() < deadline, "the launched command outlived its sidecar"
        time.sleep(0.01)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_group_left_with_zombies_only_is_not_alive() -> None:
    # GIVEN a launched command killed and not yet reaped: a zombie, still in its group
    child = LaunchedCommand(["sleep", "60"])
    child.release()
    try:
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT_S
        while state(child.pid) != "Z":
            assert time.monotonic() < deadline, "never became a zombie"
            time.sleep(0.01)
        os.killpg(child.pid, 0)  # the kernel still counts it in the group
        # THEN the group is not alive: nothing is left to stop
        assert not child.group_alive()
    finally:
        child.process.wait()
        child.close()


def test_a_group_with_a_running_process_is_alive() -> None:
    child = LaunchedCommand(["sleep", "60"])
    child.release()
    try:
        assert child.group_alive()
    finally:
        child.signal_group(signal.SIGKILL)
        child.process.wait()
        child.close()


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:  # noqa: PTH123
        text = stat.read()
    return text[text.rfind(")") + 2]
