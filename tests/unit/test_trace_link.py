"""Choosing a block's parent span from the reads taken during it."""

from __future__ import annotations

import time
from collections import Counter

from otel_blocksnoop.analysis.trace_link import TraceLinker, elect, interval_for
from otel_blocksnoop.events import (
    NS_PER_MS,
    InProgress,
    Loss,
    SpanRef,
    TaskRef,
    ThreadContext,
    ThreadSnapshot,
)
from otel_blocksnoop.losses import Losses

A = SpanRef(trace_id=0xA, span_id=0x1, trace_flags=1)
B = SpanRef(trace_id=0xB, span_id=0x2, trace_flags=1)
CHECKOUT = TaskRef(name="Task-7", coroutine="checkout")


def test_the_span_active_in_most_reads_is_the_parent() -> None:
    assert elect(Counter({A: 3, B: 1})) == A
    assert elect(Counter({A: 2, None: 1})) == A


def test_a_tie_or_a_minority_gives_no_parent_rather_than_a_wrong_one() -> None:
    assert elect(Counter({A: 2, B: 2})) is None
    assert elect(Counter({A: 1, None: 3})) is None
    assert elect(Counter({None: 4})) is None
    assert elect(Counter()) is None


def test_reads_are_half_the_threshold_apart_within_bounds() -> None:
    assert interval_for(100 * NS_PER_MS) == 50 * NS_PER_MS
    assert interval_for(1 * NS_PER_MS) == 2 * NS_PER_MS
    assert interval_for(10_000 * NS_PER_MS) == 50 * NS_PER_MS


class Table:
    """Threads out of epoll, as scripted."""

    def __init__(self, ongoing: list[InProgress]) -> None:
        self.ongoing = ongoing
        self.asked: list[int] = []

    def snapshot(self, min_ns: int, activity: bool = True) -> ThreadSnapshot:
        assert not activity, "the linker needs no books"
        self.asked.append(min_ns)
        return ThreadSnapshot(ongoing=tuple(self.ongoing), times=())

    def out_since(self, tid: int) -> int:
        return next((item.start_ns for item in self.ongoing if item.tid == tid), 0)


class Reader:
    """A target whose threads are in the given spans, read after read."""

    def __init__(
        self,
        spans: list[SpanRef | None],
        unsupported: str | None = None,
        tasks: list[TaskRef | None] | None = None,
    ) -> None:
        self._spans = spans
        self._tasks = tasks or []
        self.unsupported = unsupported

    def thread_context(self, tid: int) -> ThreadContext:
        _ = tid
        span = self._spans.pop(0) if self._spans else None
        task = self._tasks.pop(0) if self._tasks else None
        return ThreadContext(span=span, task=task)


def test_reads_during_a_block_vote_and_the_block_event_takes_the_result() -> None:
    # GIVEN a loop thread out of epoll, read three times while it was
    start = time.monotonic_ns()
    table = Table([InProgress(pid=10, tid=11, start_ns=start, activity=None)])
    reader = Reader([A, A, B], tasks=[CHECKOUT, None, CHECKOUT])
    linker = TraceLinker(table, threshold_ns=100 * NS_PER_MS, reader_factory=lambda _pid: reader)
    for _ in range(3):
        linker.poll()
    # THEN only threads out for half the threshold were asked for
    assert table.asked == [50 * NS_PER_MS] * 3
    # AND a hang report sees the vote so far, the final event takes it
    assert linker.context(10, 11, start, final=False) == ThreadContext(span=A, task=CHECKOUT)
    assert linker.context(10, 11, start) == ThreadContext(span=A, task=CHECKOUT)
    assert linker.context(10, 11, start) == ThreadContext(span=None, task=None)


def test_a_process_the_reader_cannot_read_is_never_read_again() -> None:
    table = Table([InProgress(pid=10, tid=11, start_ns=1, activity=None)])
    made: list[int] = []

    def factory(pid: int) -> Reader:
        made.append(pid)
        return Reader([A], unsupported="stripped interpreter")

    linker = TraceLinker(table, threshold_ns=100 * NS_PER_MS, reader_factory=factory)
    linker.poll()
    linker.poll()
    assert made == [10]
    assert linker.context(10, 11, 1).span is None


def test_a_read_done_after_the_block_ended_is_not_counted() -> None:
    # GIVEN a block that ends while its thread is being read: by then the loop
    # has gone back to epoll and on to a task of another request (span B)
    table = Table([InProgress(pid=10, tid=11, start_ns=1, activity=None)])

    class EndsDuringTheRead(Reader):
        def thread_context(self, tid: int) -> ThreadContext:
            table.ongoing = []
            return super().thread_context(tid)

    linker = TraceLinker(
        table, threshold_ns=100 * NS_PER_MS, reader_factory=lambda _pid: EndsDuringTheRead([B])
    )

    # WHEN the linker reads it
    linker.poll()

    # THEN that read does not vote: the block gets no parent rather than B
    assert linker.context(10, 11, 1).span is None
    assert linker.late_reads == 1


def test_an_attached_process_has_its_reader_before_its_first_block() -> None:
    # GIVEN an attached app idling in epoll: not yet in the kernel's table
    made: list[int] = []

    def factory(pid: int) -> Reader:
        made.append(pid)
        return Reader([])

    linker = TraceLinker(Table([]), threshold_ns=100 * NS_PER_MS, reader_factory=factory)

    # WHEN it is prepared, and the poller looks once
    linker.prepare(10)
    linker.poll()

    # THEN its reader is built already, once
    linker.poll()
    assert made == [10]


def test_reads_that_disagree_leave_the_block_without_parent_and_are_counted() -> None:
    # GIVEN a block read twice, once in span A and once in span B
    losses = Losses()
    table = Table([InProgress(pid=10, tid=11, start_ns=1, activity=None)])
    reader = Reader([A, B])
    linker = TraceLinker(
        table, threshold_ns=100 * NS_PER_MS, reader_factory=lambda _pid: reader, losses=losses
    )
    linker.poll()
    linker.poll()

    # WHEN its event takes the vote
    found = linker.context(10, 11, 1)

    # THEN there is no parent, and the undecided link is counted once
    assert found.span is None
    assert losses.total(Loss.LINK_UNDECIDED) == 1
    assert losses.total(Loss.CONTEXT_LATE) == 0
