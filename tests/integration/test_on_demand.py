"""Stacks on demand: a real Austin resumed by ``begin``, stopped by ``end``, around real blocks.

On CPython 3.9-3.14 (sid's 3.14 in its root); on 3.15, which Austin 4.0.0 cannot read, the
pool reads the blocked thread's frames from memory instead, between the same two calls.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import TARGETS
from harness.interpreters import MINORS, SID_MINORS, pyenv_python
from harness.procs import children
from otel_blocksnoop.analysis.attribution import attribute
from otel_blocksnoop.events import Loss
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.stacks.austin import Austin, AustinError
from otel_blocksnoop.stacks.memory import AUSTIN_NEWEST, MemorySampler, StackSources
from otel_blocksnoop.stacks.on_demand import OnDemandSampler, State, process_state
from otel_blocksnoop.stacks.pool import SamplerPool
from tests.helpers import IN_CI, WAIT_S, PipeLines, Sidecar
from tests.integration.conftest import TargetPython, sid_python

pytestmark = [pytest.mark.integration]

HELD = TARGETS / "held.py"
PYTHONS = {f"3.{minor}": pyenv_python(minor) for minor in MINORS}
AUSTIN_SID = [f"3.{m}" for m in SID_MINORS if (3, m) <= AUSTIN_NEWEST]
"""sid's interpreters Austin reads (3.14); the newer ones are read from memory."""
MEMORY_SID = [f"3.{m}" for m in SID_MINORS if (3, m) > AUSTIN_NEWEST]


@pytest.fixture
def austin() -> Austin:
    """Austin 4, present (CI) or the test is skipped (elsewhere)."""
    try:
        found = Austin.find()
        found.version()
    except AustinError as error:
        if IN_CI:
            pytest.fail(f"on-demand stacks need Austin, and CI must have it: {error}")
        pytest.skip(str(error))
    return found


class HeldTarget:
    """harness/targets/held.py: blocks its loop from "hold" to "release"."""

    def __init__(self, tmp_path: Path, python: TargetPython) -> None:
        fifo = tmp_path / "ready.fifo"
        os.mkfifo(fifo)
        self.process = subprocess.Popen(
            python.run(HELD, "--ready", str(fifo)), stdin=subprocess.PIPE, text=True
        )
        self._fifo = fifo.open()
        self.lines = PipeLines(self._fifo)
        self.tid = int(self.lines.wait_for("ready").split()[1])
        self.pid = self.process.pid

    def _say(self, word: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()

    def hold(self) -> int:
        """Block the loop; return when it is blocked, with the block's start."""
        self._say("hold")
        return int(self.lines.wait_for("holding").split()[2])

    def release(self) -> tuple[int, int]:
        """End the block; its (start, end)."""
        self._say("release")
        _, start, end = self.lines.wait_for("released").split()
        return int(start), int(end)

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=WAIT_S)
        self._fifo.close()


def held_target(tmp_path: Path, version: str) -> Iterator[HeldTarget]:
    if version in PYTHONS:
        python = PYTHONS[version]
        if python is None:
            if IN_CI:
                pytest.fail(f"CI must have pyenv's CPython {version}")
            pytest.skip(f"no CPython {version} here")
        held = HeldTarget(tmp_path, TargetPython(version, str(python)))
    else:
        held = HeldTarget(tmp_path, sid_python(f"py{version}"))
    yield held
    held.stop()


@pytest.fixture(params=[*sorted(PYTHONS), *AUSTIN_SID])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HeldTarget]:
    """A held app on each CPython Austin reads."""
    yield from held_target(tmp_path, request.param)


@pytest.fixture(params=MEMORY_SID)
def newest_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HeldTarget]:
    """A held app on each CPython newer than Austin reads."""
    yield from held_target(tmp_path, request.param)


def wait_until(condition: Callable[[], bool], pool: SamplerPool, what: str) -> None:
    """Until ``condition`` holds (the pool restarting Austin if it must), or fail."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S} s: {what}")
        pool.maintain()
        time.sleep(0.001)


def test_begin_and_end_gather_the_stack_of_the_block_and_nothing_else(
    austin: Austin, target: HeldTarget
) -> None:
    # GIVEN an on-demand pool watching the target: Austin attached, then stopped
    losses = Losses()
    pool = SamplerPool(austin, 1000, losses, on_demand=True)
    sampler = pool.ensure(target.pid)
    assert isinstance(sampler, OnDemandSampler)
    try:
        wait_until(lambda: sampler.state == State.STOPPED, pool, "Austin stopped after attach")
        assert sampler._process is not None  # noqa: SLF001
        austin_pid = sampler._process.pid  # noqa: SLF001
        assert process_state(austin_pid) == "T"
        assert os.sched_getscheduler(austin_pid) == os.SCHED_RR  # root may raise it

        # WHEN a block is going on, begin is called, and end once it is over
        start = target.hold()
        pool.begin(target.pid, target.tid, start)
        wait_until(
            lambda: len(pool.window(target.pid, target.tid, start, time.monotonic_ns())) >= 3,
            pool,
            "samples of the held loop",
        )
        start, end = target.release()
        pool.end(target.pid, target.tid)
        wait_until(
            lambda: pool.covered_until(target.pid, target.tid) >= end, pool, "coverage to the end"
        )

        # THEN the samples of the block name the function that held the loop
        samples = pool.window(target.pid, target.tid, start, end)
        found = attribute([sample.frames for sample in samples])
        assert found is not None
        assert found.call_site is not None
        assert found.call_site.function.endswith("hold_the_loop"), found.call_site
        assert found.call_site.file == str(HELD)
        # ... and Austin is stopped again
        assert sampler.state == State.STOPPED
        assert process_state(austin_pid) == "T"

        # WHEN a block comes and goes without begin
        start = target.hold()
        assert process_state(austin_pid) == "T"
        start, end = target.release()
        # THEN nothing was gathered for it: Austin stayed stopped
        assert pool.window(target.pid, target.tid, start, end) == []
        assert pool.covered_until(target.pid, target.tid) >= end
        assert sampler.resumes == 1
        assert losses.total(Loss.STACK_SAMPLES) == 0
    finally:
        pool.stop()
    # AND the stopped Austin ended with the pool
    assert process_state(austin_pid) is None


def test_past_austin_begin_and_end_read_the_blocked_threads_memory_and_nothing_else(
    austin: Austin, newest_target: HeldTarget
) -> None:
    # GIVEN an on-demand pool choosing its stack source as the sidecar does, watching a
    # target Austin cannot read
    target = newest_target
    losses = Losses()
    pool = SamplerPool(austin, 1000, losses, on_demand=True, sources=StackSources())
    sampler = pool.ensure(target.pid)
    try:
        # THEN it reads the target's memory, and nothing while no block is going on
        assert isinstance(sampler, MemorySampler)
        assert sampler.reads == 0

        # WHEN a block is going on, begin is called, and end once it is over
        start = target.hold()
        pool.begin(target.pid, target.tid, start)
        wait_until(
            lambda: len(pool.window(target.pid, target.tid, start, time.monotonic_ns())) >= 3,
            pool,
            "stacks of the held loop",
        )
        start, end = target.release()
        pool.end(target.pid, target.tid)
        wait_until(
            lambda: pool.covered_until(target.pid, target.tid) >= end, pool, "coverage to the end"
        )

        # THEN the stacks of the block name the function that held the loop
        found = attribute(
            [sample.frames for sample in pool.window(target.pid, target.tid, start, end)]
        )
        assert found is not None
        assert found.call_site is not None
        assert found.call_site.function.endswith("hold_the_loop"), found.call_site
        assert found.call_site.file == str(HELD)
        reads = sampler.reads

        # WHEN a block comes and goes without begin
        start, end = target.hold(), target.release()[1]
        # THEN nothing was read for it
        assert pool.window(target.pid, target.tid, start, end) == []
        assert sampler.reads == reads
        assert losses.total(Loss.STACK_SAMPLES) == 0
    finally:
        pool.stop()


def is_austin(pid: int, comm: str) -> bool:
    """Whether ``pid`` runs Austin: by its name, or, started in an app's mount namespace
    from an fd by its loader (comm: the fd's number), by the name its loader gives it."""
    if comm == "austin":
        return True
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[1:3] == [b"--argv0", b"austin"]


def austin_children(pid: int) -> list[int]:
    """The Austin processes ``pid`` started."""
    return [child for child, comm, _ in children(pid) if is_austin(child, comm)]


@pytest.mark.usefixtures("austin")
def test_a_stopped_austin_dies_with_a_sidecar_killed_outright(target: HeldTarget) -> None:
    # GIVEN the sidecar watching an app whose loop has blocked once, its Austin now stopped
    sidecar = Sidecar("-t", "20", "--stacks-from", "austin", str(target.pid))
    try:
        target.hold()
        target.release()
        deadline = time.monotonic() + WAIT_S
        while not (children := austin_children(sidecar.process.pid)) or any(
            process_state(child) != "T" for child in children
        ):
            # (on a busy machine Austin may still be catching up: alive is enough)
            if children and time.monotonic() > deadline:
                break
            assert time.monotonic() < deadline + WAIT_S, "no Austin under the sidecar"
            time.sleep(0.01)
        # WHEN the sidecar is killed, with no chance to clean up
        sidecar.process.kill()
        sidecar.process.wait(timeout=WAIT_S)
        # THEN its Austin goes too (a stopped orphan would stay forever)
        while any(Path(f"/proc/{child}").exists() for child in children):
            assert time.monotonic() < deadline + WAIT_S, f"Austin {children} outlived the sidecar"
            time.sleep(0.01)
    finally:
        if sidecar.process.poll() is None:
            sidecar.process.kill()
