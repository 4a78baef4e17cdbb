"""Placing samples in time: the sample still being written, and outlier anchors."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_blocksnoop.events import Frame, Loss
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.stacks.austin import Austin
from otel_blocksnoop.stacks.mojo import MojoDecoder, RawSample
from otel_blocksnoop.stacks.sampler import Sampler

CAPTURE = Path(__file__).resolve().parent.parent / "data" / "austin_two_loops.mojo"
FRAMES = (Frame("f", "/app.py", 1),)
MS = 1_000_000


def sampler() -> Sampler:
    return Sampler(Austin(Path("/bin/true")), pid=1, interval_us=1000)


def cut_after_a_time(data: bytes, start: int) -> tuple[MojoDecoder, int]:
    """A decoder fed up to the first byte past ``start`` where a sample's time is known."""
    for cut in range(start, len(data)):
        decoder = MojoDecoder()
        decoder.feed(data[:cut])
        if decoder.pending() is not None:
            return decoder, cut
    pytest.fail("no sample with a time in the capture")


@pytest.mark.parametrize("start", [1000, 5000, 20000])
def test_the_sample_being_written_is_the_next_one_completed(start: int) -> None:
    # GIVEN a recorded stream cut inside a sample, after its time
    data = CAPTURE.read_bytes()
    decoder, cut = cut_after_a_time(data, start)
    # WHEN the decoder tells which sample it is still building
    pending = decoder.pending()
    # THEN that is the thread and delta of the next sample it hands out
    assert pending is not None
    following = decoder.feed(data[cut:]) + decoder.flush()
    assert pending == (following[0].tid, following[0].delta_us)


def test_reads_are_timed_by_the_sample_still_being_written() -> None:
    # GIVEN a thread's sample at 10 ms, and the next one (1 ms later) partly read
    s = sampler()
    # WHEN the read arrives at t=1 s
    s._add([RawSample(1, 7, FRAMES, 10_000, idle=False)], 10**9, pending=(7, 1000))  # noqa: SLF001
    # THEN the complete sample is placed 1 ms before the arrival, not at it
    assert [x.time_ns for x in s.window(7, 0, 2 * 10**9)] == [10**9 - MS]


def test_one_early_anchor_does_not_move_every_sample() -> None:
    # GIVEN reads that time a thread's samples consistently, and one that is 3 ms early
    s = sampler()
    for read in range(20):
        s._add([RawSample(1, 7, FRAMES, 100_000, idle=False)], (read + 1) * 100 * MS)  # noqa: SLF001
    s._histories[7].anchors.append(-3 * MS)  # noqa: SLF001
    # WHEN samples are placed
    times = [x.time_ns for x in s.window(7, 0, 10 * 10**9)]
    # THEN they stay where the consistent reads put them
    assert times[:3] == [100 * MS, 200 * MS, 300 * MS]


def test_a_thread_dropped_to_make_room_counts_its_samples_as_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a sampler that keeps two threads, with two samples of thread 1
    monkeypatch.setattr("otel_blocksnoop.stacks.sampler.MAX_THREADS", 2)
    losses = Losses()
    one = Sampler(Austin(Path("/bin/true")), pid=1, interval_us=1000, losses=losses)
    two = [RawSample(1, 1, FRAMES, 1000, idle=False)] * 2
    one._add(two, arrival_ns=10 * MS)  # noqa: SLF001
    one._add([RawSample(1, 2, FRAMES, 1000, idle=False)], arrival_ns=11 * MS)  # noqa: SLF001

    # WHEN a third thread shows up
    one._add([RawSample(1, 3, FRAMES, 1000, idle=False)], arrival_ns=12 * MS)  # noqa: SLF001

    # THEN thread 1's two samples are counted as lost, and its history is gone
    assert losses.total(Loss.STACK_SAMPLES) == 2
    assert one.window(1, 0, 100 * MS) == []


def test_an_empty_twin_of_a_thread_in_one_pass_does_not_run_its_clock_twice() -> None:
    # GIVEN passes 1 ms apart in which a thread starting another (CPython <= 3.11)
    # is reported twice: its own stack, and an empty one with the same delta
    s = sampler()
    for _ in range(3):
        twins = [
            RawSample(1, 7, (), 1000, idle=False),
            RawSample(1, 7, FRAMES, 1000, idle=False),
        ]
        s._add(twins, arrival_ns=None)  # noqa: SLF001
    # WHEN the thread's samples are placed
    times = [x.time_ns for x in s.window(7, 0, 10**9)]
    # THEN only its own stacks are kept, one interval apart, not two
    assert times == [0, MS, 2 * MS]
