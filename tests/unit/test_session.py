"""The session loop with a detector double: what reaches the sinks, and when it stops."""

from __future__ import annotations

from otel_blocksnoop.detector import Counters
from otel_blocksnoop.events import BlockEvent, ThreadKind
from otel_blocksnoop.session import Session, SessionOptions
from otel_blocksnoop.sinks.memory import MemorySink


class ScriptedDetector:
    """Hands out prepared batches of events, one per poll, then nothing."""

    def __init__(self, batches: list[list[BlockEvent]], lost: int = 0) -> None:
        self._batches = batches
        self.lost = lost

    def poll(self, timeout_ms: int) -> list[BlockEvent]:
        _ = timeout_ms
        return self._batches.pop(0) if self._batches else []

    def counters(self) -> Counters:
        return Counters(lost_events=self.lost, iterations=0, busy_ns=0, untracked_threads=0)


class ExitsAfter:
    """A watched process that exits after ``polls`` checks."""

    def __init__(self, polls: int) -> None:
        self._left = polls

    def exited(self) -> bool:
        self._left -= 1
        return self._left < 0


class FixedKinds:
    def __init__(self, kinds: dict[int, ThreadKind]) -> None:
        self._kinds = kinds

    def kind(self, pid: int, tid: int) -> ThreadKind:
        _ = pid
        return self._kinds[tid]


def event(tid: int, start_ms: int, ms: int) -> BlockEvent:
    return BlockEvent(
        pid=1, tid=tid, comm="python", start_ns=start_ms * 10**6, end_ns=(start_ms + ms) * 10**6
    )


def make_session(
    detector: ScriptedDetector, kinds: dict[int, ThreadKind]
) -> tuple[Session, MemorySink]:
    sink = MemorySink()
    session = Session(
        detector,  # type: ignore[arg-type]
        [sink],
        FixedKinds(kinds),  # type: ignore[arg-type]
        SessionOptions(threshold_ns=10**7),
    )
    return session, sink


def test_blocks_of_loop_threads_reach_the_sinks_with_wall_clock_times() -> None:
    detector = ScriptedDetector([[event(1, 100, 20), event(2, 200, 50)]])
    session, sink = make_session(detector, {1: ThreadKind.LOOP, 2: ThreadKind.UNKNOWN})
    summary = session.run(ExitsAfter(1))
    assert [b.tid for b in sink.blocks] == [1, 2]
    first = sink.blocks[0]
    assert first.end_unix_ns - first.start_unix_ns == 20 * 10**6
    assert first.start_unix_ns > 1_600_000_000 * 10**9
    assert summary.blocks == 2
    assert summary.max_block_ns == 50 * 10**6
    assert sink.summaries == [summary]
    assert sink.shut_down


def test_native_threads_are_counted_not_reported() -> None:
    detector = ScriptedDetector([[event(3, 0, 150), event(3, 200, 150), event(1, 400, 30)]])
    session, sink = make_session(detector, {1: ThreadKind.LOOP, 3: ThreadKind.NATIVE})
    summary = session.run(ExitsAfter(1))
    assert [b.tid for b in sink.blocks] == [1]
    assert summary.ignored_blocks == 2
    assert summary.ignored_threads == ((3, "python", ThreadKind.NATIVE),)


def test_events_still_in_the_ring_buffer_after_a_stop_are_drained() -> None:
    # GIVEN a stop requested before the loop ever polled
    detector = ScriptedDetector([[event(1, 0, 20)], [event(1, 100, 30)]])
    session, sink = make_session(detector, {1: ThreadKind.LOOP})
    session.request_stop()
    summary = session.run(ExitsAfter(100))
    # THEN what the kernel had already sent is reported anyway
    assert summary.blocks == 2
    assert len(sink.blocks) == 2


def test_lost_events_are_in_the_summary() -> None:
    session, _ = make_session(ScriptedDetector([], lost=7), {})
    assert session.run(ExitsAfter(0)).lost_events == 7
