"""The MOJO decoder against austin-python's reader, on a recorded Austin 4 stream."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from austin.format.mojo import MojoStreamReader

from otel_blocksnoop.events import Frame
from otel_blocksnoop.stacks.mojo import MojoDecoder, MojoError, RawSample

CAPTURE = Path(__file__).resolve().parent.parent / "data" / "austin_two_loops.mojo"


def reference_samples() -> list[tuple[int, int, tuple[Frame, ...], int]]:
    reader = MojoStreamReader(io.BytesIO(CAPTURE.read_bytes()))
    for _ in reader:
        pass
    return [
        (
            s.pid,
            int(s.thread, 16),
            tuple(Frame(f.function, f.filename, f.line) for f in s.frames or ()),
            s.metrics.time or 0,
        )
        for s in reader.samples
    ]


def as_tuples(samples: list[RawSample]) -> list[tuple[int, int, tuple[Frame, ...], int]]:
    return [(s.pid, s.tid, s.frames, s.delta_us) for s in samples]


def test_decodes_a_recorded_stream_exactly_as_austin_python_does() -> None:
    decoded = list(MojoDecoder().decode_all(CAPTURE.read_bytes()))
    expected = reference_samples()
    assert len(expected) == 374
    assert as_tuples(decoded) == expected


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_chunk_boundaries_do_not_change_the_result(chunk: int) -> None:
    data = CAPTURE.read_bytes()
    decoder = MojoDecoder()
    samples: list[RawSample] = []
    for offset in range(0, len(data), chunk):
        samples.extend(decoder.feed(data[offset : offset + chunk]))
    samples.extend(decoder.flush())
    assert as_tuples(samples) == reference_samples()
    assert decoder.metadata["mode"] == "wall"


def test_loop_threads_idle_in_select_are_sampled_too() -> None:
    samples = list(MojoDecoder().decode_all(CAPTURE.read_bytes()))
    innermost = {s.frames[-1].function for s in samples if s.frames}
    assert "EpollSelector.select" in innermost
    assert len({s.tid for s in samples}) == 2


def test_not_a_mojo_stream_is_refused() -> None:
    with pytest.raises(MojoError, match="bad magic"):
        MojoDecoder().feed(b"hello world")


def test_a_restarted_sampler_places_new_samples_on_a_fresh_time_base() -> None:
    # GIVEN a sampler that saw 100 ms of samples, then was restarted 5 s later
    from otel_blocksnoop.stacks.austin import Austin  # noqa: PLC0415
    from otel_blocksnoop.stacks.mojo import RawSample as Raw  # noqa: PLC0415
    from otel_blocksnoop.stacks.sampler import Sampler  # noqa: PLC0415

    sampler = Sampler(Austin(Path("/bin/true")), pid=1, interval_us=5000)
    frames = (Frame("f", "/app.py", 1),)
    sampler._add([Raw(1, 7, frames, 50_000, idle=False)] * 2, arrival_ns=10**9)  # noqa: SLF001
    sampler.start()  # a new Austin process (here /bin/true, which just exits)
    sampler.stop()
    # WHEN the new process reports a sample 10 ms after its start, arriving at t=6.01 s
    sampler._add([Raw(1, 7, frames, 10_000, idle=False)], arrival_ns=6_010_000_000)  # noqa: SLF001
    # THEN it is placed at 6.01 s, not 5 s earlier on the old time base
    assert [s.time_ns for s in sampler.window(7, 6 * 10**9, 7 * 10**9)] == [6_010_000_000]


@pytest.mark.parametrize("start", [500, 3000, 9000, 20000])
def test_a_sample_with_its_time_is_whole(start: int) -> None:
    # GIVEN a recorded stream cut at each byte from ``start`` until a sample is complete
    data = CAPTURE.read_bytes()
    reference = list(MojoDecoder().decode_all(data))
    for cut in range(start, len(data)):
        decoder = MojoDecoder()
        done = decoder.feed(data[:cut])
        # WHEN Austin is known to have paused there
        completed = decoder.complete()
        if not completed:
            continue
        # THEN the sample handed out is the one the stream completes later, frames and all
        assert completed[0] == reference[len(done)]
        # ... and decoding goes on from there as if nothing happened
        rest = decoder.feed(data[cut:]) + decoder.flush()
        assert done + completed + rest == reference
        return
    pytest.fail("no complete sample in the capture")


def test_a_sample_cut_before_its_time_is_not_handed_out() -> None:
    data = CAPTURE.read_bytes()
    for cut in range(2000, len(data)):
        decoder = MojoDecoder()
        decoder.feed(data[:cut])
        if decoder._current is not None and decoder.pending() is None:  # noqa: SLF001
            assert decoder.complete() == []
            return
    pytest.fail("no sample cut before its time in the capture")
