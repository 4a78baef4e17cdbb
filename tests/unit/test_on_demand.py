"""Stacks on demand: Austin resumed by ``begin``, stopped at the last ``end``, and time kept."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import cast

import pytest

from otel_blocksnoop.events import Frame, Loss
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.stacks.austin import Austin
from otel_blocksnoop.stacks.mojo import MojoDecoder, RawSample
from otel_blocksnoop.stacks.on_demand import OnDemandSampler, State, process_state
from otel_blocksnoop.stacks.pool import SamplerPool
from otel_blocksnoop.stacks.sampler import Sampler

CAPTURE = Path(__file__).resolve().parent.parent / "data" / "austin_two_loops.mojo"
FRAMES = (Frame("f", "/app.py", 1),)
MS = 1_000_000


class FakeAustin:
    """The Austin process as the sampler sees it: signals are recorded, never sent."""

    pid = 2**22 + 7  # above pid_max: nothing real is ever signalled or rescheduled
    stdout = None
    stderr = None

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def terminate(self) -> None:
        self.signals.append(signal.SIGTERM)

    def kill(self) -> None:
        self.returncode = -9

    def wait(self, timeout: float | None = None) -> int:
        del timeout
        self.returncode = self.returncode if self.returncode is not None else 0
        return self.returncode


def sampler_in(state: State, losses: Losses | None = None) -> tuple[OnDemandSampler, FakeAustin]:
    sampler = OnDemandSampler(Austin(Path("/bin/true")), pid=1, interval_us=1000, losses=losses)
    fake = FakeAustin()
    sampler._process = cast("subprocess.Popen[bytes]", fake)  # noqa: SLF001
    sampler.state = state
    return sampler, fake


@pytest.fixture(autouse=True)
def stops(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """How a SIGSTOP to the fake Austin turns out: stopped, and where (set by the test)."""
    outcome = {"stopped": True, "between_passes": True}
    monkeypatch.setattr(
        "otel_blocksnoop.stacks.on_demand.wait_stopped", lambda _pid: outcome["stopped"]
    )
    monkeypatch.setattr(
        "otel_blocksnoop.stacks.on_demand.between_passes", lambda _pid: outcome["between_passes"]
    )
    return outcome


@pytest.fixture(autouse=True)
def policies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Scheduling changes asked for, recorded instead of made."""
    asked: list[tuple[int, int, int]] = []

    def record(pid: int, policy: int, param: os.sched_param) -> None:
        asked.append((pid, policy, param.sched_priority))

    monkeypatch.setattr("otel_blocksnoop.stacks.on_demand.os.sched_setscheduler", record)
    return asked


def state_of(sampler: OnDemandSampler) -> State:
    return sampler.state


def test_begin_resumes_a_stopped_austin() -> None:
    # GIVEN Austin stopped between blocks
    sampler, austin = sampler_in(State.STOPPED)
    # WHEN a thread has been blocked for half the threshold
    sampler.begin(7, start_ns=100 * MS)
    # THEN Austin is continued and samples
    assert austin.signals == [signal.SIGCONT]
    assert sampler.state == State.RUNNING
    assert sampler.gathering == {7}


def test_austin_stops_when_the_last_block_of_the_process_ends() -> None:
    # GIVEN two threads of one process blocked at once
    sampler, austin = sampler_in(State.STOPPED)
    sampler.begin(7, start_ns=100 * MS)
    sampler.begin(8, start_ns=101 * MS)
    # WHEN the first block ends, THEN Austin goes on for the other
    sampler.end(7)
    assert austin.signals == [signal.SIGCONT]
    assert state_of(sampler) == State.RUNNING
    # WHEN the second ends too, THEN Austin is stopped, and known to be, before end returns
    sampler.end(8)
    assert austin.signals == [signal.SIGCONT, signal.SIGSTOP]
    assert state_of(sampler) == State.STOPPED


def test_a_block_right_after_a_stop_resumes_austin_on_a_new_time_base() -> None:
    # GIVEN a block sampled, then Austin stopped
    sampler, austin = sampler_in(State.STOPPED)
    first = time.monotonic_ns()
    sampler.begin(7, start_ns=first)
    sampler._add([RawSample(1, 7, FRAMES, 10_000, idle=False)], first + MS)  # noqa: SLF001
    sampler.end(7)
    # WHEN another block begins
    before = time.monotonic_ns()
    sampler.begin(7, start_ns=before)
    # AND Austin's first sample after it leaves the stop out of its delta (seen on a
    # target still starting), read 5 ms after the resume
    sampler._add([RawSample(1, 7, FRAMES, 9_000, idle=False)], before + 5 * MS)  # noqa: SLF001
    # THEN Austin was continued, and the new sample is placed after the resume, by
    # its read, not 9 ms after the old sample
    assert austin.signals == [signal.SIGCONT, signal.SIGSTOP, signal.SIGCONT]
    assert sampler.state == State.RUNNING
    (old, new) = sampler.window(7, 0, 2**62)
    assert old.time_ns == first + MS
    assert before <= new.time_ns <= before + 5 * MS


def test_a_stop_inside_a_sampling_pass_drops_that_pass_after_the_resume(
    stops: dict[str, bool],
) -> None:
    # GIVEN Austin stopped while it was reading the target (not asleep between passes)
    losses = Losses()
    sampler, _ = sampler_in(State.STOPPED, losses)
    sampler.begin(7, start_ns=0)
    stops["between_passes"] = False
    sampler.end(7)
    # WHEN the next block resumes it, and the pass it was in writes its sample
    start = time.monotonic_ns()
    sampler.begin(7, start_ns=start)
    sampler._add([RawSample(1, 7, FRAMES, 1_000, idle=False)], start + MS)  # noqa: SLF001
    sampler._add([RawSample(1, 7, FRAMES, 1_000, idle=False)], start + 2 * MS)  # noqa: SLF001
    # THEN that sample, taken before the stop, is dropped and counted, and the next kept
    assert len(sampler.window(7, start, 2**62)) == 1
    assert losses.total(Loss.STACK_LATE) == 1


def test_end_without_begin_changes_nothing() -> None:
    sampler, austin = sampler_in(State.STOPPED)
    sampler.end(7)
    assert austin.signals == []
    assert sampler.state == State.STOPPED


def test_a_stopped_austin_covers_every_instant_up_to_now() -> None:
    # GIVEN a thread whose newest sample is at 10 ms
    sampler, _ = sampler_in(State.RUNNING)
    sampler._add([RawSample(1, 7, FRAMES, 10_000, idle=False)], 10 * MS)  # noqa: SLF001
    # WHEN Austin is running, THEN coverage ends at the newest sample
    assert sampler.covered_until(7) == 10 * MS
    # WHEN it is stopped and its pipe read, THEN nothing more can come for the past
    sampler.state = State.STOPPED
    before = time.monotonic_ns()
    assert sampler.covered_until(7) >= before
    assert sampler.covered_until(99) >= before


def test_reads_after_a_stop_give_no_anchor() -> None:
    # GIVEN a thread timed by reads made while Austin wrote
    sampler, _ = sampler_in(State.RUNNING)
    sampler._add([RawSample(1, 7, FRAMES, 10_000, idle=False)], 10 * MS)  # noqa: SLF001
    # WHEN bytes drained long after Austin was stopped bring one more sample
    sampler._add([RawSample(1, 7, FRAMES, 1_000, idle=False)], None)  # noqa: SLF001
    # THEN it is placed by its delta, not by when it was read
    assert [s.time_ns for s in sampler.window(7, 0, 10**12)] == [10 * MS, 11 * MS]


def test_a_sample_placed_before_the_covered_time_is_dropped_and_counted() -> None:
    # GIVEN samples up to 10 ms, and readers told that everything up to 12 ms has arrived
    losses = Losses()
    sampler, _ = sampler_in(State.RUNNING, losses)
    sampler._add([RawSample(1, 7, FRAMES, 10_000, idle=False)], 10 * MS)  # noqa: SLF001
    sampler._covered_ns = 12 * MS  # noqa: SLF001
    # WHEN a sample of 11 ms arrives after a resume, then one of 50 ms
    sampler._add([RawSample(1, 7, FRAMES, 1_000, idle=False)], None)  # noqa: SLF001
    sampler._add([RawSample(1, 7, FRAMES, 39_000, idle=False)], None)  # noqa: SLF001
    # THEN the late one is dropped and counted, and the next is placed as before
    assert [s.time_ns for s in sampler.window(7, 0, 10**12)] == [10 * MS, 50 * MS]
    assert losses.total(Loss.STACK_LATE) == 1


def test_the_stop_reads_the_pipe_whole_and_coverage_moves_to_the_stop() -> None:
    # GIVEN Austin sampling a block, having written a sample up to its time
    data = CAPTURE.read_bytes()
    cut = next(c for c in range(4000, len(data)) if whole_samples(data[:c]) is not None)
    sampler, _ = sampler_in(State.RUNNING)
    sampler.begin(7, start_ns=0)
    read_end, write_end = os.pipe()
    os.write(write_end, data[:cut])
    os.close(write_end)
    os.set_blocking(read_end, False)
    sampler._fd = read_end  # noqa: SLF001
    # WHEN the block ends and Austin is stopped
    before = time.monotonic_ns()
    try:
        sampler.end(7)
    finally:
        os.close(read_end)
    # THEN every sample written is kept, the last one too, and the stop is confirmed
    kept = sum(len(history.samples) for history in sampler._histories.values())  # noqa: SLF001
    assert kept == whole_samples(data[:cut])
    assert sampler.state == State.STOPPED
    assert sampler._covered_ns >= before  # noqa: SLF001


def whole_samples(data: bytes) -> int | None:
    """Samples in ``data`` if it ends with a whole one (its time read), else None."""
    decoder = MojoDecoder()
    done = decoder.feed(data)
    last = decoder.complete()
    return len(done) + 1 if last else None


def test_a_continuous_pool_ignores_begin_and_end() -> None:
    # GIVEN today's pool, whose sampler samples all the time
    pool = SamplerPool(Austin(Path("/bin/true")), 1000)
    sampler = Sampler(Austin(Path("/bin/true")), pid=1, interval_us=1000)
    pool._samplers[1] = sampler  # noqa: SLF001
    sampler._add([RawSample(1, 7, FRAMES, 10_000, idle=False)], 10 * MS)  # noqa: SLF001
    # WHEN the analysis says a block began and ended
    pool.begin(1, 7, 5 * MS)
    pool.end(1, 7)
    # THEN the samples are there as before
    assert [s.time_ns for s in pool.window(1, 7, 0, 20 * MS)] == [10 * MS]


def test_an_on_demand_pool_makes_on_demand_samplers_and_stops_them() -> None:
    # GIVEN an on-demand pool whose "Austin" exits at once
    pool = SamplerPool(Austin(Path("/bin/true")), 1000, on_demand=True)
    sampler = pool.ensure(1)
    # WHEN the pool stops
    pool.stop()
    # THEN its sampler was an on-demand one, and gave its wake-up pipe back
    assert isinstance(sampler, OnDemandSampler)
    assert (sampler._wake_r, sampler._wake_w) == (-1, -1)  # noqa: SLF001


def test_a_stopped_austin_is_ended_with_its_target() -> None:
    # GIVEN Austin stopped between blocks
    sampler, austin = sampler_in(State.STOPPED)
    # WHEN the watched process is gone
    sampler.maintain(target_alive=False)
    # THEN Austin is told to end, and continued so that it can
    assert austin.signals == [signal.SIGTERM, signal.SIGCONT]


def test_a_stopped_austin_is_not_taken_for_a_silent_one() -> None:
    sampler, austin = sampler_in(State.STOPPED)
    sampler._heard_at = 0.0  # noqa: SLF001 - silent for ages
    sampler.maintain(target_alive=True)
    assert austin.signals == []
    assert austin.returncode is None


def test_the_state_of_a_process_is_read_from_proc() -> None:
    assert process_state(os.getpid()) in {"R", "S"}
    assert process_state(2**22 + 1) is None


def test_austin_samples_at_real_time_priority_from_the_resume(
    policies: list[tuple[int, int, int]],
) -> None:
    # GIVEN Austin stopped between blocks
    sampler, austin = sampler_in(State.STOPPED)
    # WHEN a block begins
    sampler.begin(7, start_ns=0)
    # THEN Austin is made SCHED_RR before it is continued, once
    assert policies == [(austin.pid, os.SCHED_RR, 1)]
    sampler.end(7)
    sampler.state = State.STOPPED
    sampler.begin(7, start_ns=0)
    assert len(policies) == 1


def test_a_long_block_is_sampled_at_normal_priority(
    policies: list[tuple[int, int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN Austin sampling a block
    sampler, austin = sampler_in(State.STOPPED)
    sampler.begin(7, start_ns=0)
    # WHEN the block has lasted longer than REALTIME_FOR_S (a hang)
    later = time.monotonic() + 2.0
    monkeypatch.setattr("otel_blocksnoop.stacks.on_demand.time.monotonic", lambda: later)
    sampler._heard_at = later  # noqa: SLF001 - not silent
    sampler.maintain(target_alive=True)
    # THEN Austin goes back to the normal policy
    assert policies[-1] == (austin.pid, os.SCHED_OTHER, 0)


def test_a_refused_priority_leaves_austin_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_pid: int, _policy: int, _param: os.sched_param) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("otel_blocksnoop.stacks.on_demand.os.sched_setscheduler", refuse)
    sampler, austin = sampler_in(State.STOPPED)
    sampler.begin(7, start_ns=0)
    assert austin.signals == [signal.SIGCONT]
    assert sampler.state == State.RUNNING


def test_a_forgotten_process_gives_back_its_sampler_and_austins_pipes() -> None:
    # GIVEN an on-demand pool with a sampler for one process (its "Austin" exits at once)
    pool = SamplerPool(Austin(Path("/bin/true")), 1000, on_demand=True)
    sampler = pool.ensure(1)
    assert isinstance(sampler, OnDemandSampler)
    process = sampler._process  # noqa: SLF001
    assert process is not None
    assert process.stdout is not None
    assert process.stderr is not None
    # WHEN the process is let go of
    pool.forget(1)
    # THEN the pool holds no sampler, and Austin's pipes are closed now, not at a collection
    assert len(pool) == 0
    assert process.stdout.closed
    assert process.stderr.closed
    assert (sampler._wake_r, sampler._wake_w) == (-1, -1)  # noqa: SLF001
