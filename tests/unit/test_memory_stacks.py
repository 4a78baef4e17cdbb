"""Which reader reads a process's stacks, and the memory sampler's reads during a block."""

from __future__ import annotations

import threading
import time

import pytest

from otel_blocksnoop.events import NS_PER_MS, Frame
from otel_blocksnoop.process.context.interpreter import UnsupportedInterpreterError
from otel_blocksnoop.process.frames import FrameReader
from otel_blocksnoop.stacks.memory import MemorySampler, StackSources

BLOCKING = (Frame("main", "app.py", 3), Frame("handler", "app.py", 12))


class Reader:
    """A target whose thread's stack is ``BLOCKING``; counts its reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.read = threading.Event()

    def stack(self, tid: int) -> tuple[Frame, ...] | None:
        _ = tid
        self.reads += 1
        self.read.set()
        return BLOCKING

    def has_thread(self, tid: int) -> bool:
        _ = tid
        return True


def sources(mode: str, version: tuple[int, int], reader: object = None) -> StackSources:
    made = reader if reader is not None else Reader()
    return StackSources(mode, factory=lambda _pid: made, version_of=lambda _pid: version)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(
    ("mode", "version", "ours"),
    [
        ("auto", (3, 15), True),  # Austin 4.0.0 cannot read it
        ("auto", (3, 14), False),
        ("auto", (3, 11), False),
        ("memory", (3, 13), True),
        ("memory", (3, 12), False),  # no debug offsets before 3.13: Austin reads it
        ("austin", (3, 15), False),
    ],
)
def test_austin_reads_what_it_can_and_the_sidecar_the_rest(
    mode: str, version: tuple[int, int], ours: bool
) -> None:
    assert (sources(mode, version).memory(1234) is not None) is ours


def test_an_interpreter_our_reader_refuses_gets_no_reader_and_is_asked_once() -> None:
    asked: list[int] = []

    def refuse(pid: int) -> FrameReader:
        asked.append(pid)
        raise UnsupportedInterpreterError("implausible _Py_DebugOffsets")

    chosen = StackSources("auto", factory=refuse, version_of=lambda _pid: (3, 15))
    assert chosen.memory(1234) is None
    assert chosen.memory(1234) is None
    assert asked == [1234]


def test_the_memory_sampler_reads_only_during_a_block_and_keeps_what_it_read() -> None:
    reader = Reader()
    sampler = MemorySampler(reader, 1234, interval_us=1000)  # type: ignore[arg-type]
    sampler.start()
    try:
        # WHEN no block goes on, nothing is read
        time.sleep(0.02)
        assert reader.reads == 0
        # WHEN a block begins, the thread's stack is read until it ends
        start = time.monotonic_ns()
        sampler.begin(1240, start)
        assert reader.read.wait(5.0)
        deadline = time.monotonic() + 5.0
        while reader.reads < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert sampler.covered_until(1240) <= time.monotonic_ns()
        sampler.end(1240)
        end = time.monotonic_ns()
        # THEN the block's window holds those reads, and everything read has arrived
        assert sampler.covered_until(1240) >= end
        window = sampler.window(1240, start, end)
        assert len(window) >= 3
        assert all(sample.frames == BLOCKING for sample in window)
        assert all(start <= sample.time_ns <= end for sample in window)
        assert sampler.window(1240, end + 1, end + NS_PER_MS) == []
        # AND no read happens once the block is over
        reads = reader.reads
        time.sleep(0.02)
        assert reader.reads <= reads + 1  # a read under way as the block ended
    finally:
        sampler.stop()
