"""Choosing a block's parent span from the reads taken during it."""

from __future__ import annotations

import os
import time
from collections import Counter

from otel_blocksnoop.analysis.trace_link import (
    EXPECT_EVERY_NS,
    EXPECT_FOR_NS,
    TraceLinker,
    elect,
    elect_span,
    interval_for,
)
from otel_blocksnoop.events import (
    NS_PER_MS,
    ContextSegment,
    InProgress,
    Loss,
    ReadyWork,
    SpanRef,
    TaskRef,
    ThreadContext,
    Trigger,
    TriggerReason,
)
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.process.target import exec_identity

A = SpanRef(trace_id=0xA, span_id=0x1, trace_flags=1)
B = SpanRef(trace_id=0xB, span_id=0x2, trace_flags=1)
A_CHILD = SpanRef(trace_id=0xA, span_id=0x3, trace_flags=1)  # a child span in A's trace
CHECKOUT = TaskRef(name="Task-7", coroutine="checkout")


def test_the_span_active_in_most_reads_is_the_parent() -> None:
    assert elect(Counter({A: 3, B: 1})) == A
    assert elect(Counter({A: 2, None: 1})) == A


def test_a_tie_or_a_minority_gives_no_parent_rather_than_a_wrong_one() -> None:
    assert elect(Counter({A: 2, B: 2})) is None
    assert elect(Counter({A: 1, None: 3})) is None
    assert elect(Counter({None: 4})) is None
    assert elect(Counter()) is None


def test_reads_that_saw_two_traces_give_no_parent_however_they_voted() -> None:
    # the block held both requests' callbacks: a parent would put one's time in the other's trace
    assert elect_span(Counter({A: 3, B: 1})) is None
    # a request and its child span are one trace: the vote decides
    assert elect_span(Counter({A: 3, A_CHILD: 1})) == A
    assert elect_span(Counter({A: 2, None: 1})) == A


def test_reads_are_half_the_threshold_apart_within_bounds() -> None:
    assert interval_for(100 * NS_PER_MS) == 50 * NS_PER_MS
    assert interval_for(1 * NS_PER_MS) == 2 * NS_PER_MS
    assert interval_for(10_000 * NS_PER_MS) == 50 * NS_PER_MS


class Table:
    """Threads out of epoll, as scripted."""

    def __init__(self, ongoing: list[InProgress]) -> None:
        self.ongoing = ongoing
        self.contexts: dict[int, int] = {}  # tid -> address the kernel is to read
        self.told: list[tuple[int, int]] = []  # every (tid, address) told, in order

    def out_since(self, tid: int) -> int:
        return next((item.start_ns for item in self.ongoing if item.tid == tid), 0)

    def watch_context(self, tid: int, address: int) -> bool:
        self.contexts[tid] = address
        self.told.append((tid, address))
        return True


HALF = 50 * NS_PER_MS  # half the threshold of these tests


def triggered(item: InProgress, age_ns: int = HALF, reason: str = "due") -> Trigger:
    """The kernel's trigger for ``item``'s block at ``age_ns`` (off CPU: look at HALF)."""
    look = item.start_ns + (HALF if reason == "off_cpu" else age_ns)
    return Trigger(item.pid, item.tid, item.start_ns, look, TriggerReason(reason))


def read_times(linker: TraceLinker, item: InProgress, reads: int) -> None:
    """Have the linker look ``reads`` times, an interval apart, from the trigger on."""
    for read in range(reads):
        linker.poll(item.start_ns + HALF + read * linker.interval_ns)


class Reader:
    """A target whose threads are in the given spans, read after read."""

    def __init__(
        self,
        spans: list[SpanRef | None],
        unsupported: str | None = None,
        tasks: list[TaskRef | None] | None = None,
        contexts: list[int] | None = None,
        ready: list[ReadyWork | None] | None = None,
    ) -> None:
        self._spans = spans
        self._tasks = tasks or []
        self._contexts = contexts or []
        self._ready = ready or []
        self.asked: list[bool] = []  # whether each read asked for the ready callbacks
        self.unsupported = unsupported
        self.awaited_by_unsure = 0

    def thread_context(self, tid: int) -> ThreadContext:
        _ = tid
        self.asked.append(False)
        span = self._spans.pop(0) if self._spans else None
        task = self._tasks.pop(0) if self._tasks else None
        context = self._contexts.pop(0) if self._contexts else 0
        return ThreadContext(span=span, task=task, context=context)

    def ready_work(self, tid: int, again: bool = False) -> ReadyWork | None:
        _ = tid, again
        self.asked[-1] = True
        return self._ready.pop(0) if self._ready else None

    def context_address(self, tid: int) -> int | None:
        return 0x7000 + tid


def test_reads_during_a_block_vote_and_the_block_event_takes_the_result() -> None:
    # GIVEN a loop thread out of epoll, triggered at half the threshold, read three times
    start = time.monotonic_ns()
    item = InProgress(pid=10, tid=11, start_ns=start, activity=None)
    table = Table([item])
    reader = Reader([A, A, A_CHILD], tasks=[CHECKOUT, None, CHECKOUT])
    linker = TraceLinker(table, threshold_ns=100 * NS_PER_MS, reader_factory=lambda _pid: reader)
    linker.follow(triggered(item))
    read_times(linker, item, 3)
    # THEN only blocks out for half the threshold are read: the kernel triggers at that age
    assert linker.trigger_ns == 50 * NS_PER_MS
    # AND a hang report sees the vote so far, the final event takes it
    assert linker.context(10, 11, start, final=False) == ThreadContext(span=A, task=CHECKOUT)
    assert linker.context(10, 11, start) == ThreadContext(span=A, task=CHECKOUT)
    assert linker.context(10, 11, start) == ThreadContext(span=None, task=None)


def test_reads_whose_awaited_by_chain_was_unsure_are_counted() -> None:
    # GIVEN a reader that, on two of three reads, could not be sure of the task's awaiters
    item = InProgress(pid=10, tid=11, start_ns=1, activity=None)
    unsure = iter([1, 0, 1])

    class Unsure(Reader):
        def thread_context(self, tid: int) -> ThreadContext:
            self.awaited_by_unsure += next(unsure)
            return super().thread_context(tid)

    losses = Losses()
    linker = TraceLinker(
        Table([item]), 100 * NS_PER_MS, reader_factory=lambda _: Unsure([A, A, A]), losses=losses
    )

    # WHEN the linker reads the block three times
    linker.follow(triggered(item))
    read_times(linker, item, 3)

    # THEN two are counted, in the losses' family, and the link is not affected
    assert losses.total(Loss.CONTEXT_AWAITED_BY) == 2
    assert linker.context(10, 11, 1).span == A


def test_a_process_the_reader_cannot_read_is_never_read_again() -> None:
    item = InProgress(pid=10, tid=11, start_ns=1, activity=None)
    table = Table([item])
    made: list[int] = []

    def factory(pid: int) -> Reader:
        made.append(pid)
        return Reader([A], unsupported="stripped interpreter")

    linker = TraceLinker(table, threshold_ns=100 * NS_PER_MS, reader_factory=factory)
    linker.follow(triggered(item))
    read_times(linker, item, 2)
    assert made == [10]
    assert linker.context(10, 11, 1).span is None


def test_a_read_done_after_the_block_ended_is_not_counted() -> None:
    # GIVEN a block that ends while its thread is being read: by then the loop
    # has gone back to epoll and on to a task of another request (span B)
    item = InProgress(pid=10, tid=11, start_ns=1, activity=None)
    table = Table([item])

    class EndsDuringTheRead(Reader):
        def thread_context(self, tid: int) -> ThreadContext:
            table.ongoing = []
            return super().thread_context(tid)

    linker = TraceLinker(
        table, threshold_ns=100 * NS_PER_MS, reader_factory=lambda _pid: EndsDuringTheRead([B])
    )

    # WHEN the linker reads it
    linker.follow(triggered(item))
    read_times(linker, item, 1)

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
    item = InProgress(pid=10, tid=11, start_ns=1, activity=None)
    table = Table([item])
    reader = Reader([A, B])
    linker = TraceLinker(
        table, threshold_ns=100 * NS_PER_MS, reader_factory=lambda _pid: reader, losses=losses
    )
    linker.follow(triggered(item))
    read_times(linker, item, 2)

    # WHEN its event takes the vote
    found = linker.context(10, 11, 1)

    # THEN there is no parent, and the undecided link is counted once
    assert found.span is None
    assert losses.total(Loss.LINK_UNDECIDED) == 1
    assert losses.total(Loss.CONTEXT_LATE) == 0


def test_a_block_whose_thread_left_the_cpu_early_is_first_read_at_half_the_threshold() -> None:
    # GIVEN a loop thread that went to sleep 1 ms into its block: the kernel says so at once
    item = InProgress(pid=10, tid=11, start_ns=1_000 * NS_PER_MS, activity=None)
    table = Table([item])
    reader = Reader([A, A])
    linker = TraceLinker(table, threshold_ns=100 * NS_PER_MS, reader_factory=lambda _pid: reader)
    linker.follow(triggered(item, age_ns=NS_PER_MS, reason="off_cpu"))

    # WHEN the linker looks before half the threshold
    next_read = linker.poll(item.start_ns + NS_PER_MS)

    # THEN it reads nothing yet, and wakes at half the threshold to read
    assert linker.context(10, 11, item.start_ns, final=False).span is None
    assert next_read == item.start_ns + HALF
    assert linker.poll(item.start_ns + HALF) == item.start_ns + HALF + linker.interval_ns
    assert linker.context(10, 11, item.start_ns) == ThreadContext(span=A, task=None)


def test_reading_stops_when_the_block_ends_and_the_linker_then_sleeps() -> None:
    # GIVEN a block read once, whose thread then went back to epoll
    item = InProgress(pid=10, tid=11, start_ns=1, activity=None)
    table = Table([item])
    reader = Reader([A, B])
    linker = TraceLinker(table, threshold_ns=100 * NS_PER_MS, reader_factory=lambda _pid: reader)
    linker.follow(triggered(item))
    linker.poll(item.start_ns + HALF)
    table.ongoing = []

    # WHEN its next read is due
    next_read = linker.poll(item.start_ns + HALF + linker.interval_ns)

    # THEN the thread is not read again, nothing is counted late, and no read is due
    assert next_read is None
    assert linker.context(10, 11, 1).span == A
    assert linker.late_reads == 0


def test_a_block_told_of_twice_is_read_once_per_interval() -> None:
    # GIVEN the kernel told of one block twice (a tick and a switch at once)
    item = InProgress(pid=10, tid=11, start_ns=1, activity=None)
    reader = Reader([A, B, B])
    linker = TraceLinker(
        Table([item]), threshold_ns=100 * NS_PER_MS, reader_factory=lambda _pid: reader
    )
    linker.follow(triggered(item))
    linker.follow(triggered(item, age_ns=HALF + 1))

    # WHEN the linker looks
    linker.poll(item.start_ns + HALF + 1)

    # THEN it read once
    assert linker.context(10, 11, 1).span == A


def test_a_new_loop_thread_has_its_process_reader_built_before_its_first_block() -> None:
    made: list[int] = []

    def factory(pid: int) -> Reader:
        made.append(pid)
        return Reader([])

    linker = TraceLinker(Table([]), threshold_ns=100 * NS_PER_MS, reader_factory=factory)
    linker.follow(Trigger(10, 12, 5, 5, TriggerReason.NEW_THREAD))
    assert linker.poll() is None
    assert made == [10]


def test_a_new_loop_thread_has_the_kernel_read_its_context_pointer() -> None:
    table = Table([])
    linker = TraceLinker(table, threshold_ns=100 * NS_PER_MS, reader_factory=lambda _: Reader([]))
    linker.follow(Trigger(10, 12, 5, 5, TriggerReason.NEW_THREAD))
    linker.poll()
    assert table.contexts == {12: 0x7000 + 12}


def test_a_context_switch_in_a_followed_block_is_read_at_once_but_not_too_often() -> None:
    # GIVEN a followed block, read at its trigger; the next read is an interval away
    item = InProgress(pid=10, tid=11, start_ns=1, activity=None)
    reader = Reader([A, B], contexts=[0xA0, 0xB0])
    linker = TraceLinker(Table([item]), 100 * NS_PER_MS, reader_factory=lambda _: reader)
    linker.follow(triggered(item))
    first = item.start_ns + HALF
    linker.poll(first)

    # WHEN the kernel says the thread switched context, 1 ms later
    linker.follow(Trigger(10, 11, 1, first + NS_PER_MS, TriggerReason.SEGMENT))
    # THEN the new context is read 2 ms after the last read, not an interval after it
    assert linker.poll(first + NS_PER_MS) == first + 2 * NS_PER_MS
    assert linker.poll(first + 2 * NS_PER_MS) == first + 2 * NS_PER_MS + linker.interval_ns
    assert reader.thread_context(11) == ThreadContext(span=None, task=None)  # both reads done

    # AND a switch later than that is read at once
    later = first + 10 * NS_PER_MS
    linker.follow(Trigger(10, 11, 1, later, TriggerReason.SEGMENT))
    assert linker.poll(later) == later + linker.interval_ns


def test_a_context_switch_in_a_block_not_followed_reads_nothing() -> None:
    item = InProgress(pid=10, tid=11, start_ns=1, activity=None)
    reader = Reader([A])
    linker = TraceLinker(
        Table([item]), threshold_ns=100 * NS_PER_MS, reader_factory=lambda _: reader
    )
    linker.follow(Trigger(10, 11, 1, 2, TriggerReason.SEGMENT))
    assert linker.poll(3) is None
    assert linker.context(10, 11, 1) == ThreadContext(span=None, task=None)


def segment(context: int, after_ns: int, before_ns: int) -> ContextSegment:
    return ContextSegment(context, after_ns, before_ns, after_ns, before_ns, activity=None)


def test_each_segment_is_owned_by_the_reads_of_its_own_context_inside_it() -> None:
    # GIVEN a block read three times: in context A0 (span A), B0 (span B), then A0 again
    start = time.monotonic_ns()
    item = InProgress(pid=10, tid=11, start_ns=start, activity=None)
    reader = Reader([A, B, A], contexts=[0xA0, 0xB0, 0xA0])
    losses = Losses()
    linker = TraceLinker(
        Table([item]), 100 * NS_PER_MS, reader_factory=lambda _: reader, losses=losses
    )
    linker.follow(triggered(item))
    read_times(linker, item, 3)
    end = time.monotonic_ns()

    # WHEN the kernel cut the block into a segment of B0, then one of A0 and one of C0
    owners = linker.owners(
        10,
        11,
        start,
        [segment(0xB0, start, end), segment(0xA0, start, end), segment(0xC0, start, end)],
    )

    # THEN B0's reads own the first, A0's the second; no read saw C0: no parent, counted
    assert [owner.span for owner in owners] == [B, A, None]
    assert losses.total(Loss.LINK_UNREAD) == 1


def test_a_read_of_the_right_context_outside_its_segment_is_not_used() -> None:
    # GIVEN a read of context A0, taken after the stretch the kernel saw A0 in
    start = time.monotonic_ns()
    item = InProgress(pid=10, tid=11, start_ns=start, activity=None)
    reader = Reader([A], contexts=[0xA0])
    linker = TraceLinker(Table([item]), 100 * NS_PER_MS, reader_factory=lambda _: reader)
    linker.follow(triggered(item))
    read_times(linker, item, 1)

    # THEN the segment that ended before the read has no owner: the address may be reused
    owners = linker.owners(10, 11, start, [segment(0xA0, start - 10, start)])
    assert owners == [ThreadContext(span=None, task=None)]


class NotYet(Reader):
    """An interpreter whose main thread state is not made yet."""

    def context_address(self, tid: int) -> int | None:
        _ = tid
        return None


def test_a_launched_apps_context_pointer_is_told_to_the_kernel_before_its_loop_runs() -> None:
    # GIVEN a launched command that has exec'd (this process: not the holder it was)
    pid = os.getpid()
    table = Table([])
    made: list[int] = []

    def factory(target: int) -> Reader:
        made.append(target)
        return NotYet([]) if len(made) == 1 else Reader([])

    linker = TraceLinker(table, threshold_ns=100 * NS_PER_MS, reader_factory=factory)
    linker.expect(pid, holder=None)
    # WHEN its interpreter has no main thread state yet
    now = time.monotonic_ns()
    next_look = linker.poll(now)
    # THEN nothing is told and that reader is not kept; it is looked for again soon
    assert table.told == []
    assert next_look == now + EXPECT_EVERY_NS
    # AND once the state is there, its main thread's context pointer is told
    linker.poll(now + EXPECT_EVERY_NS)
    assert table.told == [(pid, 0x7000 + pid)]
    assert linker.poll(now + 2 * EXPECT_EVERY_NS) is None  # and no more looks
    # AND the loop's first return from epoll does not tell it again (that would
    # disarm the kernel's record of the iteration going on), nor makes another reader
    linker.follow(Trigger(pid, pid, now, now, TriggerReason.NEW_THREAD))
    linker.poll(now + 3 * EXPECT_EVERY_NS)
    assert table.told == [(pid, 0x7000 + pid)]
    assert made == [pid, pid]


def test_no_reader_is_made_before_the_launched_command_execs() -> None:
    # GIVEN a launched command whose PID still runs the holder (the sidecar's own Python)
    pid = os.getpid()
    table = Table([])
    made: list[int] = []

    def factory(target: int) -> Reader:
        made.append(target)
        return Reader([])

    linker = TraceLinker(table, threshold_ns=100 * NS_PER_MS, reader_factory=factory)
    linker.expect(pid, holder=exec_identity(pid))
    # WHEN the linker looks, for longer than it would look after an exec
    now = time.monotonic_ns()
    for look in range(3):
        linker.poll(now + look * EXPECT_FOR_NS)
    # THEN it made no reader (it would read the holder's interpreter) and told nothing
    assert made == []
    assert table.told == []


def test_a_launched_command_that_is_no_python_is_looked_at_for_a_bounded_time() -> None:
    # GIVEN a launched command that exec'd something this reader cannot read (a shell)
    pid = os.getpid()
    made: list[int] = []

    def factory(target: int) -> Reader:
        made.append(target)
        return Reader([], unsupported="/usr/bin/bash is not a CPython interpreter")

    linker = TraceLinker(Table([]), threshold_ns=100 * NS_PER_MS, reader_factory=factory)
    linker.expect(pid, holder=None)
    now = time.monotonic_ns()
    linker.poll(now)
    # THEN the looks stop after EXPECT_FOR_NS
    assert linker.poll(now + EXPECT_FOR_NS + 1) is None
    looks = len(made)
    linker.poll(now + 2 * EXPECT_FOR_NS)
    assert len(made) == looks


def test_a_process_let_go_of_gets_a_new_reader_if_its_number_comes_back() -> None:
    # GIVEN a process whose reader was made, then let go of (node mode: it exited)
    made: list[int] = []

    def factory(target: int) -> Reader:
        made.append(target)
        return Reader([])

    linker = TraceLinker(Table([]), threshold_ns=100 * NS_PER_MS, reader_factory=factory)
    linker.follow(Trigger(10, 10, 1, 1, TriggerReason.NEW_THREAD))
    linker.poll()
    linker.forget(10)
    # WHEN a new process with the same number starts its loop
    linker.follow(Trigger(10, 10, 2, 2, TriggerReason.NEW_THREAD))
    linker.poll()
    # THEN it is read with a reader of its own, not the old one
    assert made == [10, 10]


C = SpanRef(trace_id=0xC, span_id=0x4, trace_flags=1)


def test_a_block_names_the_ready_callbacks_of_other_requests_read_once_not_its_own() -> None:
    # GIVEN a block of request A, whose loop has ready: B's next step, a callback of A's
    # own trace, one of no request, and C's; the first read's queue is not readable
    item = InProgress(pid=10, tid=11, start_ns=1, activity=None)
    queue = ReadyWork(queued=4, handles=((0x10, B), (0x20, A_CHILD), (0x30, None), (0x40, C)))
    reader = Reader([A, A, A, A], ready=[None, queue])
    linker = TraceLinker(Table([item]), 100 * NS_PER_MS, reader_factory=lambda _: reader)
    linker.follow(triggered(item))
    read_times(linker, item, 4)
    # THEN the queue is asked for until it is read, then no more (it waits on the block)
    assert reader.asked == [True, True, False, False]
    # AND the block waited on by B, C and the request-less callback, not by A's own
    found = linker.context(10, 11, 1)
    assert found.span == A
    assert found.ready == ReadyWork(queued=4, handles=((0x10, B), (0x30, None), (0x40, C)))
    assert found.ready.requests == (B, C)


def test_a_block_whose_queue_was_never_read_says_nothing_of_who_waited() -> None:
    item = InProgress(pid=10, tid=11, start_ns=1, activity=None)
    reader = Reader([A, A])
    linker = TraceLinker(Table([item]), 100 * NS_PER_MS, reader_factory=lambda _: reader)
    linker.follow(triggered(item))
    read_times(linker, item, 2)
    assert linker.context(10, 11, 1).ready is None


def test_another_requests_callback_in_the_block_has_the_queue_read_again() -> None:
    # GIVEN a block whose queue was read at its trigger
    start = time.monotonic_ns()
    item = InProgress(pid=10, tid=11, start_ns=start, activity=None)
    first_queue = ReadyWork(queued=1, handles=((0x10, B),))
    later_queue = ReadyWork(queued=1, handles=((0x40, C),))
    reader = Reader([A, B], contexts=[0xA0, 0xB0], ready=[first_queue, later_queue])
    linker = TraceLinker(Table([item]), 100 * NS_PER_MS, reader_factory=lambda _: reader)
    linker.follow(triggered(item))
    first = start + HALF
    linker.poll(first)
    # WHEN the kernel says the thread switched to another request's callback
    linker.follow(Trigger(10, 11, start, first + NS_PER_MS, TriggerReason.SEGMENT))
    linker.poll(first + 2 * NS_PER_MS)
    end = time.monotonic_ns()
    # THEN that read asks for the queue again
    assert reader.asked == [True, True]
    # AND each segment is waited on by what was ready while it ran, not by itself
    owners = linker.owners(10, 11, start, [segment(0xA0, start, end), segment(0xB0, start, end)])
    assert [owner.ready.requests if owner.ready else None for owner in owners] == [(B,), (C,)]


def test_a_waiting_callback_whose_request_no_read_looked_up_is_counted_unread_once() -> None:
    # GIVEN a block whose first queue read looked up B's callback but not the next one,
    # and a later read (another request's callback took over) that looked it up: C's
    start = time.monotonic_ns()
    item = InProgress(pid=10, tid=11, start_ns=start, activity=None)
    first = ReadyWork(queued=3, handles=((0x10, B),), unread=(0x40, 0x50))
    later = ReadyWork(queued=3, handles=((0x10, B), (0x40, C)), unread=(0x50,))
    reader = Reader([A, A], ready=[first, later])
    linker = TraceLinker(Table([item]), 100 * NS_PER_MS, reader_factory=lambda _: reader)
    linker.follow(triggered(item))
    linker.poll(start + HALF)
    linker.follow(Trigger(10, 11, start, start + HALF + NS_PER_MS, TriggerReason.SEGMENT))
    linker.poll(start + HALF + 2 * NS_PER_MS)
    # THEN each callback counts once: B's and C's read, the last one unread
    found = linker.context(10, 11, start).ready
    assert found is not None
    assert (found.requests, found.unread) == ((B, C), (0x50,))
