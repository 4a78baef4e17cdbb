"""Our own frame reader against real CPython 3.11-3.15 targets, their truth and Austin.

The target (harness/targets/blocker.py, asyncio or uvloop) blocks its loop in a known function;
while the block lasts, the reader reads the loop thread's stack from outside,
and ``austin -w`` dumps the same process: the innermost frame must be the
blocking call the target's source says, at a time the target says it was
blocked, and every frame must be the one Austin sees (3.11-3.14: Austin 4.0.0 cannot read
3.15, whose frames are held to the target's truth only). Debian sid's 3.14 and 3.15 run in
their own root, under pivot_root (tests/integration/conftest.py ``sid_python``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from harness.interpreters import SID_MINORS, cached_venv, pyenv_python
from otel_blocksnoop.analysis.attribution import is_idle
from otel_blocksnoop.events import Frame
from otel_blocksnoop.process.context.interpreter import UnsupportedInterpreterError
from otel_blocksnoop.process.frames import FrameReader
from otel_blocksnoop.process.frames.runtime import locate_runtime
from otel_blocksnoop.stacks.austin import Austin, AustinError
from otel_blocksnoop.stacks.memory import AUSTIN_NEWEST
from tests.helpers import BLOCKER, IN_CI
from tests.integration.conftest import sid_python

pytestmark = pytest.mark.integration

# The innermost frame of each way of blocking: its function and a piece of its line.
CALL_SITES = {
    "sleep": ("block_once", "BLOCKERS[scenario](seconds)"),
    "cpu": ("busy", "deadline"),
    "hashlib": ("pbkdf2", "hashlib.pbkdf2_hmac"),
    "lock": ("held_lock", "lock.acquire()"),
}
# Long enough to read and dump while it lasts, on a busy machine too.
BLOCK_MS = 3000
WAIT_S = 20.0
POLL_S = 0.002


MINORS = (11, 12, 13)
"""The pyenv CPythons read here: 3.11 and 3.12 by their generated layouts, 3.13 by the
offsets it publishes (as do sid's 3.14 and 3.15, ``SID_MINORS``)."""


def pyenv_target(minor: int, loop: str = "asyncio") -> Path:
    """pyenv's CPython 3.<minor>, or for uvloop a cached venv of it with uvloop."""
    python = pyenv_python(minor)
    if python is None:
        if IN_CI:
            pytest.fail(f"no CPython 3.{minor} under pyenv: CI must have it")
        pytest.skip(f"no CPython 3.{minor} under pyenv")
    if loop == "asyncio":
        return python
    try:
        return cached_venv(f"uvloop-py3.{minor}", python, ("uvloop",), ("uvloop",))
    except (OSError, subprocess.CalledProcessError) as error:
        if IN_CI:
            pytest.fail(f"failed to install uvloop for 3.{minor}: {error}")
        pytest.skip(f"cannot install uvloop for 3.{minor}: {error}")


def austin() -> Austin:
    try:
        found = Austin.find()
        found.version()
    except AustinError as error:
        if IN_CI:
            pytest.fail(f"CI must have Austin: {error}")
        pytest.skip(str(error))
    return found


def target_command(minor: int, loop: str, script: Path, *args: str) -> list[str]:
    """The argv that runs ``script`` on CPython 3.<minor> with ``loop``: pyenv's, or sid's
    (in its root, its venv has uvloop)."""
    if minor in SID_MINORS:
        return sid_python(f"py3.{minor}").run(script, *args)
    return [str(pyenv_target(minor, loop)), str(script), *args]


@dataclass
class Target:
    process: subprocess.Popen[str]
    tid: int  # the loop thread
    out: Path  # where it writes each block's truth

    @property
    def pid(self) -> int:
        return self.process.pid

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def blocks(self) -> list[dict[str, int]]:
        text = self.out.read_text() if self.out.exists() else ""
        return [json.loads(line) for line in text.splitlines()]


@contextmanager
def blocking_target(
    tmp_path: Path, scenario: str, loop: str = "asyncio", minor: int = 13
) -> Iterator[Target]:
    """A 3.<minor> target, its loop running, that blocks once in ``scenario`` after ``go()``."""
    fifo = tmp_path / "ready.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "blocks.jsonl"
    args = [scenario, "--ready", str(fifo), "--go", "--ms", str(BLOCK_MS), "--out", str(out)]
    if loop == "uvloop":
        args.append("--uvloop")
    process = subprocess.Popen(
        target_command(minor, loop, BLOCKER, *args), stdin=subprocess.PIPE, text=True
    )
    try:
        with fifo.open() as ready:
            words = ready.readline().split()
        assert words[:1] == ["ready"], words
        yield Target(process, int(words[1]), out)
    finally:
        process.kill()
        process.wait(timeout=30)


def stack_when(
    reader: FrameReader, tid: int, what: str, holds: Callable[[tuple[Frame, ...]], bool]
) -> tuple[Frame, ...]:
    """The thread's stack, once one is read that ``holds`` (the thread runs on meanwhile)."""
    deadline = time.monotonic() + WAIT_S
    stack: tuple[Frame, ...] | None = None
    while time.monotonic() < deadline:
        stack = reader.stack(tid)
        if stack and holds(stack):
            return stack
        time.sleep(POLL_S)
    pytest.fail(f"the loop thread never showed {what}; last stack: {stack}")


def innermost_in(reader: FrameReader, tid: int, function: str) -> tuple[Frame, ...]:
    return stack_when(reader, tid, function, lambda stack: stack[-1].function == function)


def idle(reader: FrameReader, tid: int) -> tuple[Frame, ...]:
    """The stack of the loop waiting for events (asyncio in its selector, uvloop in C)."""
    return stack_when(reader, tid, "the loop idle", is_idle)


def source_line(frame: Frame) -> str:
    return Path(frame.file).read_text().splitlines()[frame.line - 1]


SID_CASES = (("cpu", "asyncio"), ("hashlib", "uvloop"))
CASES = [
    *((minor, scenario, "asyncio") for minor in MINORS for scenario in CALL_SITES),
    *((minor, scenario, "uvloop") for minor in MINORS for scenario in ("sleep", "cpu")),
    # sid's: Python running (its line moving) on asyncio, and a C call on uvloop (3 s a
    # case; every way of blocking is read on them in test_stacks and test_mount_namespaces)
    *((minor, scenario, loop) for minor in SID_MINORS for scenario, loop in SID_CASES),
]


@pytest.mark.parametrize(
    ("minor", "scenario", "loop"), CASES, ids=[f"3.{m}-{s}-{loop}" for m, s, loop in CASES]
)
def test_the_blocked_loop_stack_is_the_targets_and_austins(
    minor: int, scenario: str, loop: str, tmp_path: Path
) -> None:
    dumper = austin()
    austin_reads = (3, minor) <= AUSTIN_NEWEST
    function, snippet = CALL_SITES[scenario]
    # GIVEN a CPython 3.<minor> loop (asyncio's or uvloop's) about to block in a known function
    with blocking_target(tmp_path, scenario, loop, minor) as target:
        reader = FrameReader(target.pid)
        before = idle(reader, target.tid)
        target.go()

        # WHEN the loop thread's stack is read while the block lasts, and Austin dumps it
        ours = innermost_in(reader, target.tid, function)
        read_at = time.monotonic_ns()
        theirs = dumper.where(target.pid).get(target.tid) if austin_reads else None
        ours_again = stack_when(reader, target.tid, "a stack", lambda _: True)
        read_again_at = time.monotonic_ns()
        # (the target exits once its block is written)
        assert target.process.wait(timeout=WAIT_S) == 0
        blocks = target.blocks()

    # THEN the innermost frame is the blocking call the target's source shows
    assert ours[-1].file == str(BLOCKER)
    assert snippet in source_line(ours[-1]), (ours[-1], source_line(ours[-1]))
    # AND it was read while the target says it was blocked, twice
    assert len(blocks) == 1, blocks
    assert blocks[0]["tid"] == target.tid
    assert blocks[0]["start_ns"] < read_at < read_again_at < blocks[0]["end_ns"]
    # AND Austin (where it reads this version) and a second read see the same frames:
    # function, file and line (the innermost line of a thread spinning in Python may
    # move between the two reads)
    assert (theirs is not None) == austin_reads
    for stack in (ours_again,) if theirs is None else (theirs, ours_again):
        assert stack[:-1] == ours[:-1]
        assert (stack[-1].function, stack[-1].file) == (ours[-1].function, ours[-1].file)
        if scenario != "cpu":
            assert stack[-1] == ours[-1]
    # AND before the block, idle, the outermost frames were the script's
    assert before[0] == Frame("<module>", str(BLOCKER), before[0].line)
    assert "run(coro_factory())" in source_line(before[2])


@pytest.mark.parametrize("minor", [13, *SID_MINORS], ids=lambda m: f"3.{m}")
def test_a_target_that_exits_gives_no_stack_and_no_error(tmp_path: Path, minor: int) -> None:
    # GIVEN a reader of a live 3.13, 3.14 or 3.15 target
    with blocking_target(tmp_path, "sleep", minor=minor) as target:
        reader = FrameReader(target.pid)
        assert idle(reader, target.tid)
    # WHEN the target has gone, THEN a read gives None and raises nothing
    assert reader.stack(target.tid) is None


@contextmanager
def sleeping(minor: int) -> Iterator[subprocess.Popen[str]]:
    """A CPython 3.<minor> process that sleeps once it has said so."""
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"no CPython 3.{minor} under pyenv")
    process = subprocess.Popen(
        [str(python), "-c", "import time; print('ready', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        yield process
    finally:
        process.kill()
        process.wait()


def test_an_interpreter_before_3_11_is_refused_saying_why() -> None:
    # GIVEN a CPython 3.10 target (a chain of PyFrameObjects, no interpreter frames)
    # WHEN a frame reader is made for it, THEN it says why it cannot read it
    with (
        sleeping(10) as process,
        pytest.raises(UnsupportedInterpreterError, match=r"CPython 3\.10's frames"),
    ):
        FrameReader(process.pid)


def test_a_layout_the_running_interpreter_does_not_fit_is_refused() -> None:
    # GIVEN a CPython 3.12 target taken for a 3.11 one (its image misnamed, say)
    with sleeping(12) as process:
        runtime = replace(locate_runtime(process.pid), version=(3, 11))
        # WHEN a frame reader is made for it with the 3.11 layout, THEN the interpreter's
        # own Py_Version refuses it: no stack rather than a wrong one
        with pytest.raises(UnsupportedInterpreterError, match=r"Py_Version says 3\.12"):
            FrameReader(process.pid, runtime=runtime)
