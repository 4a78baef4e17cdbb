"""The stack sampler's faults: Austin killed while the sidecar watches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import IO, Any

import pytest

from tests.helpers import SIDECAR, WAIT_S, PipeLines, matching_block, truth

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

EXIT_CODE = 3
MAX_TRIES = 5  # blocks asked for after the restart until one has its stack

# Blocks on command: a line on the commands FIFO makes the loop spin 150 ms
# in pure Python; "done" on the acks FIFO says the block is over and timed.
TARGET = textwrap.dedent(
    """
    import asyncio, json, os, sys, threading, time

    commands_path, acks_path, out_path, code = sys.argv[1:5]

    def hold_the_loop(seconds):
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            pass

    async def main():
        loop = asyncio.get_running_loop()
        commands = open(commands_path)
        acks = open(acks_path, "w", buffering=1)
        out = open(out_path, "a", buffering=1)
        acks.write(f"ready {os.getpid()}\\n")
        while (line := await loop.run_in_executor(None, commands.readline)).strip() == "block":
            await asyncio.sleep(0.05)
            start = time.monotonic_ns()
            hold_the_loop(0.15)
            end = time.monotonic_ns()
            record = {"tid": threading.get_native_id(), "start_ns": start, "end_ns": end}
            out.write(json.dumps(record) + "\\n")
            await asyncio.sleep(0.05)
            acks.write("done\\n")

    asyncio.run(main())
    sys.exit(int(code))
    """
)


def austin_samplers(sidecar_pid: int, target_pid: int) -> list[int]:
    """PIDs of the sidecar's Austin processes streaming samples of ``target_pid``."""
    found = []
    for children in Path(f"/proc/{sidecar_pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            streaming = argv[0].endswith(b"/austin") and b"-P" in argv and b"-p" in argv
            if streaming and argv[argv.index(b"-p") + 1] == str(target_pid).encode():
                found.append(int(pid))
    return found


def restarted_sampler(sidecar_pid: int, target_pid: int, killed: int) -> int:
    """The Austin started in place of ``killed`` (polled: its start leaves no other trace)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        fresh = [pid for pid in austin_samplers(sidecar_pid, target_pid) if pid != killed]
        if fresh:
            return fresh[0]
        time.sleep(0.01)
    pytest.fail(f"no Austin sampling {target_pid} again within {WAIT_S} s")


class Driver:
    """The target's command and ack FIFOs, and the sidecar's JSON output."""

    def __init__(self, tmp_path: Path, sidecar: subprocess.Popen[str]) -> None:
        assert sidecar.stdout is not None
        self.output = PipeLines(sidecar.stdout)
        self.commands: IO[str] = (tmp_path / "commands.fifo").open("w", buffering=1)
        self.acks: IO[str] = (tmp_path / "acks.fifo").open()
        self.target_pid = int(self.acks.readline().split()[1])

    def block(self) -> dict[str, Any]:
        """Have the target block once; the sidecar's report of it."""
        self.commands.write("block\n")
        assert self.acks.readline().strip() == "done"
        report: dict[str, Any] = json.loads(self.output.wait_for('"type":"block"'))
        return report


def test_austin_killed_mid_run_is_restarted_and_no_block_is_lost(tmp_path: Path) -> None:
    # GIVEN a launched app that blocks on command, watched with stacks on
    for name in ("commands.fifo", "acks.fifo"):
        os.mkfifo(tmp_path / name)
    script = tmp_path / "target.py"
    script.write_text(TARGET)
    out = tmp_path / "truth.jsonl"
    argv = [
        *SIDECAR,
        "--json",
        "-t",
        "50",
        "--stacks-from",
        "austin",
        "--",
        SIDECAR[0],
        str(script),
    ]
    fifos = [str(tmp_path / "commands.fifo"), str(tmp_path / "acks.fifo")]
    argv += [*fifos, str(out), str(EXIT_CODE)]
    sidecar = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        driver = Driver(tmp_path, sidecar)
        first = driver.block()
        assert first["call_site"]["function"] == "hold_the_loop", first

        # WHEN its Austin is killed mid-run and the app keeps blocking
        (austin,) = austin_samplers(sidecar.pid, driver.target_pid)
        os.kill(austin, signal.SIGKILL)
        blind = driver.block()
        restarted = restarted_sampler(sidecar.pid, driver.target_pid, austin)
        again = [driver.block()]
        while again[-1]["call_site"] is None and len(again) < MAX_TRIES:
            again.append(driver.block())
        driver.commands.close()
        _, stderr = sidecar.communicate(timeout=WAIT_S)
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
            sidecar.wait()

    # THEN the sidecar kept running on a new Austin, exits with the app's code,
    blocks = [first, blind, *again]
    assert sidecar.returncode == EXIT_CODE, stderr
    assert restarted != austin
    # every true block was reported,
    expected = truth(out)
    assert len(expected) == 2 + len(again)
    for true_block in expected:
        matching_block(blocks, true_block)
    # and blocks have their stacks again once the new Austin samples
    site = again[-1]["call_site"]
    assert site is not None, again
    assert site["function"] == "hold_the_loop", again
