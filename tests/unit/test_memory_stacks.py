"""Which reader reads a process's stacks, and the memory sampler's reads during a block."""

from __future__ import annotations

import threading
import time

import pytest

from otel_blocksnoop.events import NS_PER_MS, Frame
from otel_blocksnoop.process.context.interpreter import UnsupportedInterpreterError
from otel_blocksnoop.process.frames import FrameReader
from otel_blocksnoop.stacks.memory import AUSTIN_NO_FREE_THREADED, MemorySampler, StackSources

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


REFUSED = "Austin cannot enter its mount namespace without CAP_SYS_CHROOT"


def sources(
    mode: str,
    version: tuple[int, int],
    reader: object = None,
    refused: str | None = None,
    *,
    free_threaded: bool = False,
) -> StackSources:
    made = reader if reader is not None else Reader()
    return StackSources(
        mode,
        factory=lambda _pid: made,  # type: ignore[arg-type, return-value]
        build_of=lambda _pid: (version, free_threaded),
        austin_refused=lambda _pid: refused,
    )


@pytest.mark.parametrize(
    ("mode", "version", "refused", "ours"),
    [
        ("auto", (3, 15), None, True),  # Austin 4.0.0 cannot read it
        ("auto", (3, 14), None, True),  # ours times each stack by its read
        ("auto", (3, 11), None, True),
        ("auto", (3, 11), REFUSED, True),  # a hardened sidecar, the app in a container
        ("auto", (3, 12), REFUSED, True),
        ("auto", (3, 10), None, False),  # our reader does not know 3.10: Austin's
        ("auto", (3, 10), REFUSED, False),
        ("memory", (3, 13), None, True),
        ("memory", (3, 12), None, True),
        ("memory", (3, 11), None, True),
        ("memory", (3, 10), None, False),  # PyFrameObject chains: Austin reads it
        ("austin", (3, 15), None, False),
        ("austin", (3, 11), REFUSED, False),
    ],
)
def test_our_reader_reads_what_it_knows_and_austin_the_rest(
    mode: str, version: tuple[int, int], refused: str | None, ours: bool
) -> None:
    assert (sources(mode, version, refused=refused).memory(1234) is not None) is ours


def test_the_reason_austin_was_passed_over_is_logged_with_the_choice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN a 3.11 app in a mount namespace the sidecar may not enter
    chosen = sources("auto", (3, 11), refused=REFUSED)
    # WHEN its reader is chosen, THEN the log says ours, on which version, and why
    with caplog.at_level("INFO"):
        assert chosen.memory(1234) is not None
    assert f"reading Python stacks of 1234 (CPython 3.11) from its memory ({REFUSED})" in (
        caplog.text
    )


@pytest.mark.parametrize(("version", "austin_reads"), [((3, 13), True), ((3, 15), False)])
def test_an_interpreter_our_reader_refuses_is_austins_where_austin_reads_it(
    version: tuple[int, int], austin_reads: bool, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(_pid: int) -> FrameReader:
        raise UnsupportedInterpreterError("implausible _Py_DebugOffsets")

    # GIVEN an app our reader refuses
    chosen = StackSources("auto", factory=refuse, build_of=lambda _pid: (version, False))
    # WHEN its reader is chosen, THEN Austin reads it where it can, and the log says why;
    # where Austin cannot either, both reasons are warned
    with caplog.at_level("INFO"):
        assert chosen.memory(1234) is None
    said = "reading Python stacks of 1234 with Austin: our reader cannot (implausible"
    assert (said in caplog.text) is austin_reads
    assert ("no stacks for process 1234: Austin reads CPython up to 3.14" in caplog.text) is (
        not austin_reads
    )


def test_an_interpreter_our_reader_refuses_gets_no_reader_and_is_asked_once() -> None:
    asked: list[int] = []

    def refuse(pid: int) -> FrameReader:
        asked.append(pid)
        raise UnsupportedInterpreterError("implausible _Py_DebugOffsets")

    chosen = StackSources(
        "auto",
        factory=refuse,
        build_of=lambda _pid: ((3, 15), False),
    )
    assert chosen.memory(1234) is None
    assert chosen.memory(1234) is None
    assert asked == [1234]


@pytest.mark.parametrize(("mode", "ours"), [("auto", True), ("memory", True), ("austin", False)])
def test_a_free_threaded_build_is_read_by_our_reader_where_austin_reads_no_frame_of_it(
    mode: str, ours: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a 3.14t app: Austin 4.0.0 finds its threads, but every stack empty
    chosen = sources(mode, (3, 14), free_threaded=True)
    # WHEN its reader is chosen
    with caplog.at_level("INFO"):
        reader = chosen.memory(1234)
    # THEN ours reads it, unless Austin was asked for, which is said to give no stacks
    assert (reader is not None) is ours
    said = f"no stacks for process 1234: {AUSTIN_NO_FREE_THREADED}"
    assert (said in caplog.text) is (not ours)


def test_a_free_threaded_build_our_reader_refuses_says_both_reasons(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(_pid: int) -> FrameReader:
        raise UnsupportedInterpreterError("no free-threaded _Py_DebugOffsets shape for 3.13")

    chosen = StackSources("auto", factory=refuse, build_of=lambda _pid: ((3, 13), True))
    assert chosen.memory(1234) is None
    assert (
        f"no stacks for process 1234: {AUSTIN_NO_FREE_THREADED}, and no free-threaded "
        "_Py_DebugOffsets shape for 3.13" in caplog.text
    )


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
