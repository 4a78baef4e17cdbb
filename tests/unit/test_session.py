"""The session loop with a detector double: what reaches the sinks, and when it stops."""

from __future__ import annotations

import io
import json
import os
import select
import time
from dataclasses import replace

from otel_blocksnoop.events import (
    Activity,
    BlockEvent,
    Cause,
    Counters,
    EndReason,
    InProgress,
    KernelEvent,
    Record,
    Sleep,
    Synced,
    ThreadKind,
    ThreadSnapshot,
    Trigger,
    TriggerReason,
)
from otel_blocksnoop.export.jsonlines import JsonLinesSink
from otel_blocksnoop.export.memory import MemorySink
from otel_blocksnoop.session import Session, SessionOptions, SyncRequests


class ScriptedDetector:
    """Hands out prepared batches of events, one per poll, then nothing.

    ``ongoing`` holds prepared lists of threads out of epoll, one per look. A
    poll takes the next list when it shows a block not seen before, and
    triggers each such block, as the kernel does once per block; ``ongoing``
    answers from the list taken last, and ``snapshot`` takes the next one.
    """

    def __init__(
        self,
        batches: list[list[BlockEvent]],
        lost: int = 0,
        ongoing: list[list[InProgress]] | None = None,
    ) -> None:
        self._batches = batches
        self.lost = lost
        self._ongoing = ongoing or []
        self._out: dict[int, InProgress] = {}
        self._triggered: set[tuple[int, int]] = set()
        self.wakers: list[int] = []
        self.closed = False

    def poll(self, timeout_ms: int | None) -> list[KernelEvent]:
        _ = timeout_ms
        batch: list[KernelEvent] = list(self._batches.pop(0) if self._batches else [])
        new = (
            [i for i in self._ongoing[0] if (i.tid, i.start_ns) not in self._triggered]
            if self._ongoing
            else []
        )
        if not new:
            return batch
        self._out = {item.tid: item for item in self._ongoing.pop(0)}
        now = time.monotonic_ns()
        for item in new:
            self._triggered.add((item.tid, item.start_ns))
            batch.insert(0, Trigger(item.pid, item.tid, item.start_ns, now, TriggerReason.DUE))
        return batch

    def ongoing(self, tid: int) -> InProgress | None:
        return self._out.get(tid)

    def out_since(self, tid: int) -> int:
        item = self._out.get(tid)
        return item.start_ns if item else 0

    def wake_on(self, fd: int) -> None:
        self.wakers.append(fd)

    def snapshot(self, min_ns: int, activity: bool = True) -> ThreadSnapshot:
        """The next prepared list of threads out of epoll, those out for ``min_ns``."""
        _ = activity
        found = self._ongoing.pop(0) if self._ongoing else []
        now = time.monotonic_ns()
        ongoing = tuple(item for item in found if now - item.start_ns >= min_ns)
        return ThreadSnapshot(ongoing=ongoing, times=())

    def in_progress(self, min_ns: int) -> list[InProgress]:
        return list(self.snapshot(min_ns).ongoing)

    def counters(self) -> Counters:
        return Counters(lost_events=self.lost, iterations=0, busy_ns=0, untracked_threads=0)

    def close(self) -> None:
        self.closed = True


class ExitsAfter:
    """A watched process that exits after ``polls`` checks."""

    def __init__(self, polls: int) -> None:
        self._left = polls

    def exited(self) -> bool:
        self._left -= 1
        return self._left < 0

    def fileno(self) -> int:
        """No fd: the scripted detector never waits."""
        return -1


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


STUCK_IN_FUTEX = Activity(
    on_cpu_ns=10**5,
    runq_ns=0,
    sleep_ns=5 * 10**8,
    sleeps=(Sleep("futex", 5 * 10**8, 1),),
    other_sleep_ns=0,
    sibling_cpu_ns=0,
)


def stuck_since(ms: int) -> InProgress:
    return InProgress(
        pid=1, tid=1, start_ns=time.monotonic_ns() - ms * 10**6, activity=STUCK_IN_FUTEX
    )


def test_a_block_still_going_on_is_reported_as_a_hang_then_as_a_block_at_stop() -> None:
    # GIVEN a loop thread out of epoll for half a second, and still out at the end
    hang = stuck_since(500)
    detector = ScriptedDetector([], ongoing=[[hang], [hang]])
    session, sink = make_session(detector, {1: ThreadKind.LOOP})
    summary = session.run(ExitsAfter(1))
    # THEN it was reported in progress, with the cause so far
    (reported,) = sink.hangs
    assert reported.in_progress
    assert (reported.cause, reported.syscall) == (Cause.SYSCALL, "futex")
    assert reported.start_ns == hang.start_ns
    assert reported.duration_ns >= 500 * 10**6
    # AND, as the sidecar stopped with the loop still stuck, as a block ended by the stop
    (block,) = sink.blocks
    assert block.end_reason == EndReason.SIDECAR_STOPPED
    assert not block.in_progress
    assert summary.blocks == 1


def test_a_thread_that_exits_out_of_epoll_after_its_loop_ended_is_not_a_block() -> None:
    # GIVEN the kernel saw a thread exit 80 ms after its last loop iteration
    # (the interpreter tearing down), never seen hanging
    teardown = replace(event(1, 100, 80), end_reason=EndReason.THREAD_EXITED)
    session, sink = make_session(ScriptedDetector([[teardown]]), {1: ThreadKind.LOOP})
    summary = session.run(ExitsAfter(1))
    # THEN nothing is reported
    assert sink.blocks == []
    assert summary.blocks == 0


def test_a_hang_whose_thread_exits_is_reported_as_a_block() -> None:
    # GIVEN a hang reported in progress, whose thread then exits (the app was killed)
    hang = stuck_since(400)
    end = time.monotonic_ns() + 10**8
    exit_event = BlockEvent(
        pid=1,
        tid=1,
        comm="python",
        start_ns=hang.start_ns,
        end_ns=end,
        activity=STUCK_IN_FUTEX,
        end_reason=EndReason.THREAD_EXITED,
    )
    detector = ScriptedDetector([[], [exit_event]], ongoing=[[hang]])
    session, sink = make_session(detector, {1: ThreadKind.LOOP})
    session.run(ExitsAfter(2))
    # THEN the final block is reported, ended by the thread's exit
    assert len(sink.hangs) == 1
    (block,) = sink.blocks
    assert block.end_reason == EndReason.THREAD_EXITED
    assert block.cause == Cause.SYSCALL


def test_the_wait_is_woken_by_the_targets_exit_and_by_a_stop_request() -> None:
    # GIVEN a session whose target asks it to stop during the run
    detector = ScriptedDetector([])
    session, _ = make_session(detector, {})
    readable: list[list[int]] = []

    class StopsOnFirstCheck(ExitsAfter):
        def exited(self) -> bool:
            if not readable:
                session.request_stop()
                fds = [fd for fd in detector.wakers if fd >= 0]
                readable.append(select.select(fds, [], [], 1.0)[0])
            return super().exited()

    # WHEN it runs
    session.run(StopsOnFirstCheck(100))
    # THEN the detector was to wake on the target's fd and on the stop request, which woke it
    target_fd, stop_fd = detector.wakers
    assert target_fd == -1
    assert readable == [[stop_fd]]


class AllRecords:
    """Every record, in the order the session handed them on."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def export(self, record: Record) -> None:
        self.records.append(record)

    def pending(self) -> dict[str, int]:
        return {}

    def drain(self, deadline: float) -> None:
        _ = deadline

    def shutdown(self, deadline: float | None = None) -> None:
        _ = deadline


def test_a_sync_request_is_answered_after_every_block_that_ended_by_then() -> None:
    # GIVEN a kernel that sends a block ending at 120 ms only on its second poll, and
    # a question "reported up to 130 ms?" already asked, then the asker gone
    detector = ScriptedDetector([[], [event(1, 100, 20)], [event(1, 500, 20)]])
    read_end, write_end = os.pipe()
    os.write(write_end, b"130000000\nnot a time\n")
    os.close(write_end)
    sink = AllRecords()
    session = Session(
        detector,  # type: ignore[arg-type]
        [sink],
        FixedKinds({1: ThreadKind.LOOP}),  # type: ignore[arg-type]
        SessionOptions(threshold_ns=10**7),
        sync=SyncRequests(read_end),
    )
    # WHEN the session runs (the closed pipe asks it to stop)
    session.run(ExitsAfter(100))
    os.close(read_end)
    # THEN the block that ended by 130 ms is handed on before the answer, which comes once
    kinds = [type(record).__name__ for record in sink.records]
    assert kinds[:2] == ["Block", "Synced"]
    assert [r for r in sink.records if isinstance(r, Synced)] == [Synced(130_000_000)]
    assert read_end in detector.wakers


def test_the_json_answer_to_a_sync_request_names_its_time() -> None:
    out = io.StringIO()
    JsonLinesSink(out).export(Synced(42))
    assert json.loads(out.getvalue()) == {"type": "synced", "monotonic_ns": 42}
