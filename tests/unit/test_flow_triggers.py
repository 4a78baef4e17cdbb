"""The flow sleeps until the kernel says when to look, then looks at that one thread."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import pytest

from otel_blocksnoop.analysis import flow as flow_module
from otel_blocksnoop.analysis import hangs
from otel_blocksnoop.analysis.enrich import Enricher
from otel_blocksnoop.analysis.flow import BlockFlow
from otel_blocksnoop.events import (
    NS_PER_MS,
    Block,
    BlockEvent,
    ContextSegment,
    Counters,
    Frame,
    InProgress,
    KernelEvent,
    Record,
    SpanRef,
    StackSample,
    ThreadContext,
    ThreadKind,
    ThreadSnapshot,
    Trigger,
    TriggerReason,
)
from otel_blocksnoop.losses import Losses

THRESHOLD = 10 * NS_PER_MS
PID = os.getpid()  # a process whose /proc this user may read


class Kernel:
    """Hands out prepared triggers; tells which thread is out of epoll since when."""

    def __init__(self, events: list[KernelEvent], out: dict[int, int]) -> None:
        self.events = events
        self.out = out  # tid -> out of epoll since
        self.waits: list[int | None] = []

    def poll(self, timeout_ms: int | None) -> list[KernelEvent]:
        self.waits.append(timeout_ms)
        events, self.events = self.events, []
        return events

    def ongoing(self, tid: int) -> InProgress | None:
        start = self.out.get(tid)
        return InProgress(PID, tid, start, None) if start else None

    def out_since(self, tid: int) -> int:
        return self.out.get(tid, 0)

    def snapshot(self, min_ns: int, activity: bool = True) -> ThreadSnapshot:
        _ = min_ns, activity
        return ThreadSnapshot(ongoing=(), times=())

    def in_progress(self, min_ns: int) -> list[InProgress]:
        _ = min_ns
        return []

    def counters(self) -> Counters:
        return Counters(lost_events=0, iterations=0, busy_ns=0, untracked_threads=0)


class Loops:
    def kind(self, pid: int, tid: int) -> ThreadKind:
        _ = pid, tid
        return ThreadKind.LOOP


class Follower:
    def __init__(self) -> None:
        self.told: list[Trigger] = []

    def follow(self, trigger: Trigger) -> None:
        self.told.append(trigger)


def flow_of(kernel: Kernel) -> tuple[BlockFlow, Follower, list[Record]]:
    records: list[Record] = []
    follower = Follower()
    flow = BlockFlow(
        kernel,
        Enricher(THRESHOLD, None),
        records.append,
        Losses(),
        threshold_ns=THRESHOLD,
        kinds=Loops(),
        followers=[follower],
    )
    return flow, follower, records


def asleep(tid: int, start_ns: int) -> Trigger:
    """The kernel saw ``tid`` go to sleep out of epoll: look at half the threshold."""
    return Trigger(PID, tid, start_ns, start_ns + THRESHOLD // 2, TriggerReason.OFF_CPU)


def test_with_nothing_going_on_the_flow_waits_for_the_kernel_with_no_timeout() -> None:
    kernel = Kernel([], {})
    flow, _, _ = flow_of(kernel)
    flow.step()
    assert kernel.waits == [None]


def test_a_sleep_that_ended_before_the_trigger_age_is_followed_by_nobody() -> None:
    # GIVEN a thread that went to sleep out of epoll 20 ms ago, back in epoll now
    start = time.monotonic_ns() - 20 * NS_PER_MS
    kernel = Kernel([asleep(5, start)], {})
    flow, follower, records = flow_of(kernel)
    # WHEN the flow takes the trigger, and its look is due
    flow.step()
    # THEN nobody follows it, nothing is reported, and no timer is left
    assert follower.told == []
    assert records == []
    flow.step()
    assert kernel.waits[-1] is None


def test_a_sleep_still_going_on_at_the_trigger_age_is_followed_then_reported_as_a_hang() -> None:
    # GIVEN a thread asleep out of epoll for 500 ms, still out
    start = time.monotonic_ns() - 500 * NS_PER_MS
    kernel = Kernel([asleep(5, start)], {5: start})
    flow, follower, records = flow_of(kernel)
    # WHEN the flow takes the trigger
    flow.step()
    # THEN its followers hear of the block as due, and it is reported in progress
    assert [(t.tid, t.start_ns, t.reason) for t in follower.told] == [(5, start, TriggerReason.DUE)]
    (hang,) = records
    assert isinstance(hang, Block)
    assert hang.in_progress
    assert hang.start_ns == start


def test_the_wait_ends_when_a_look_is_due() -> None:
    # GIVEN a thread that just went to sleep out of epoll
    start = time.monotonic_ns()
    kernel = Kernel([asleep(5, start)], {5: start})
    flow, follower, _ = flow_of(kernel)
    flow.step()
    # WHEN the flow waits again
    flow.step()
    # THEN not past half the threshold, when it looks
    assert kernel.waits[-1] is not None
    assert kernel.waits[-1] <= THRESHOLD // 2 // NS_PER_MS + 1
    assert follower.told == []


def test_a_newer_block_of_a_thread_replaces_the_older_ones_timer() -> None:
    # GIVEN two sleeps of one thread told of before either was looked at
    now = time.monotonic_ns()
    older, newer = now - 300 * NS_PER_MS, now - 200 * NS_PER_MS
    kernel = Kernel([asleep(5, older), asleep(5, newer)], {5: newer})
    flow, follower, _ = flow_of(kernel)
    # WHEN both looks are due
    flow.step()
    # THEN only the newer block is followed
    assert [t.start_ns for t in follower.told] == [newer]


def test_a_new_loop_thread_is_announced_to_the_followers() -> None:
    new = Trigger(PID, 5, 7, 7, TriggerReason.NEW_THREAD)
    kernel = Kernel([new], {})
    flow, follower, _ = flow_of(kernel)
    flow.step()
    assert follower.told == [new]


def test_a_context_switch_in_a_followed_block_only_reaches_the_followers() -> None:
    # GIVEN a block followed since its trigger age, whose thread then switches context
    start = time.monotonic_ns()
    kernel = Kernel([Trigger(PID, 7, start, start + THRESHOLD // 2, TriggerReason.DUE)], {7: start})
    flow, follower, records = flow_of(kernel)
    flow.step()
    kernel.events = [Trigger(PID, 7, start, start + THRESHOLD, TriggerReason.SEGMENT)]
    flow.step()
    # THEN the followers hear of it; no timer of the flow moved, nothing was reported
    assert [trigger.reason for trigger in follower.told] == [
        TriggerReason.DUE,
        TriggerReason.SEGMENT,
    ]
    assert records == []


class Owners:
    """A linker whose reads found request A in context 0xA0 and B in 0xB0."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, ...]] = []

    def context(self, pid: int, tid: int, start_ns: int, final: bool = True) -> ThreadContext:
        _ = pid, tid, start_ns, final
        return ThreadContext(span=None, task=None)

    def owners(
        self,
        pid: int,
        tid: int,
        start_ns: int,
        segments: Sequence[ContextSegment],
        final: bool = True,
    ) -> list[ThreadContext]:
        _ = pid, tid, start_ns, final
        self.asked.append(tuple(segment.context or 0 for segment in segments))
        spans = {0xA0: SPAN_A, 0xB0: SPAN_B}
        return [
            ThreadContext(span=spans.get(segment.context or 0), task=None) for segment in segments
        ]


SPAN_A = SpanRef(trace_id=0xA, span_id=0xA1, trace_flags=1)
SPAN_B = SpanRef(trace_id=0xB, span_id=0xB1, trace_flags=1)


def test_an_iteration_two_requests_blocked_in_is_one_block_per_request() -> None:
    # GIVEN an iteration of 60 ms: request A's callback for 30 ms, then request B's
    start = time.monotonic_ns()
    ms = NS_PER_MS
    cut = [
        ContextSegment(0xA0, start, start + 30 * ms, start, start + 31 * ms, None),
        ContextSegment(
            0xB0, start + 30 * ms, start + 60 * ms, start + 29 * ms, start + 60 * ms, None
        ),
    ]
    event = BlockEvent(PID, 7, "python", start, start + 60 * ms, segments=tuple(cut))
    records: list[Record] = []
    linker = Owners()
    flow = BlockFlow(
        Kernel([event], {}),
        Enricher(THRESHOLD, linker),
        records.append,
        Losses(),
        threshold_ns=THRESHOLD,
        kinds=Loops(),
    )
    # WHEN the flow exports it
    flow.step()
    flow.finish()
    # THEN each request has a block of its own share, and both name the iteration
    blocks = [record for record in records if isinstance(record, Block)]
    assert [(b.parent, b.start_ns - start, b.duration_ns) for b in blocks] == [
        (SPAN_A, 0, 30 * ms),
        (SPAN_B, 30 * ms, 30 * ms),
    ]
    assert {(b.iteration_id, b.iteration_ns, b.segments) for b in blocks} == {
        (blocks[0].iteration_id, 60 * ms, 2)
    }
    assert [b.segment for b in blocks] == [0, 1]
    # AND the summary counts one blocked iteration of 60 ms
    assert flow.summary(1.0).blocks == 1
    assert flow.summary(1.0).blocked_ns == 60 * ms


LOOP_STACK = (
    Frame("run", "/usr/lib/python3.11/asyncio/runners.py", 190),
    Frame("BaseEventLoop.run_forever", "/usr/lib/python3.11/asyncio/base_events.py", 607),
    Frame("handler", "app.py", 12),
)
AFTER_LOOP = (Frame("<module>", "app.py", 40), Frame("work_without_a_loop", "app.py", 30))


class LateSamples:
    """A sampler whose samples arrive late: only those taken up to ``covered`` are in."""

    interval_us = 1000

    def __init__(self, samples: list[StackSample]) -> None:
        self.samples = samples
        self.covered = 0

    def window(self, pid: int, tid: int, start_ns: int, end_ns: int) -> list[StackSample]:
        _ = pid, tid
        return [s for s in self.samples if start_ns <= s.time_ns <= min(end_ns, self.covered)]

    def covered_until(self, pid: int, tid: int) -> int:
        _ = pid, tid
        return self.covered

    def prepare(self, pid: int) -> None:
        _ = pid

    def begin(self, pid: int, tid: int, start_ns: int) -> None:
        _ = pid, tid, start_ns

    def end(self, pid: int, tid: int) -> None:
        _ = pid, tid

    def maintain(self) -> int | None:
        return None


def run_for(flow: BlockFlow, records: list[Record], ns: int) -> None:
    """Step the flow for ``ns`` of real time (its timers go by the clock), or until it reports."""
    until = time.monotonic_ns() + ns
    while not records and time.monotonic_ns() < until:
        flow.step(until)


def test_a_hang_waits_for_the_stacks_taken_once_it_is_due_before_it_is_told() -> None:
    # GIVEN a thread out of epoll for 500 ms whose loop ended 100 ms in (it works on
    # without one), and whose samples so far arrived only up to its last loop callback
    start = time.monotonic_ns() - 500 * NS_PER_MS
    stacks = LateSamples(
        [
            StackSample(start + 50 * NS_PER_MS, LOOP_STACK),
            StackSample(start + 200 * NS_PER_MS, AFTER_LOOP),
            StackSample(start + 490 * NS_PER_MS, AFTER_LOOP),
        ]
    )
    stacks.covered = start + 60 * NS_PER_MS
    kernel = Kernel([asleep(5, start)], {5: start})
    records: list[Record] = []
    flow = BlockFlow(
        kernel,
        Enricher(THRESHOLD, None),
        records.append,
        Losses(),
        threshold_ns=THRESHOLD,
        kinds=Loops(),
        stacks=stacks,
    )
    # WHEN its hang report is due while the newest sample in still shows the loop
    flow.step()
    # THEN nothing is told yet
    assert records == []
    # AND once the samples up to now are in, they show the loop has ended: no hang
    stacks.covered = time.monotonic_ns()
    run_for(flow, records, 3 * hangs.RETRY_NS)
    assert records == []
    # (with the newest sample showing the loop, the same flow tells the hang)
    stacks.samples.append(StackSample(stacks.covered - NS_PER_MS, LOOP_STACK))
    run_for(flow, records, 3 * hangs.RETRY_NS)
    (hang,) = records
    assert isinstance(hang, Block)


def test_a_hang_is_told_after_a_bounded_wait_for_a_silent_sampler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flow_module, "HANG_EVIDENCE_WAIT_NS", hangs.RETRY_NS)
    # GIVEN a thread hung in its loop for 500 ms whose sampler has said nothing yet
    start = time.monotonic_ns() - 500 * NS_PER_MS
    stacks = LateSamples([StackSample(start + 50 * NS_PER_MS, LOOP_STACK)])
    kernel = Kernel([asleep(5, start)], {5: start})
    records: list[Record] = []
    flow = BlockFlow(
        kernel,
        Enricher(THRESHOLD, None),
        records.append,
        Losses(),
        threshold_ns=THRESHOLD,
        kinds=Loops(),
        stacks=stacks,
    )
    flow.step()
    assert records == []
    # WHEN the sampler stays silent past the wait
    run_for(flow, records, 4 * hangs.RETRY_NS)
    # THEN the hang is told anyway (a silent sampler does not hide it)
    (hang,) = records
    assert isinstance(hang, Block)
    assert hang.in_progress
