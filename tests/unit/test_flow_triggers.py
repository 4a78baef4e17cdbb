"""The flow sleeps until the kernel says when to look, then looks at that one thread."""

from __future__ import annotations

import os
import time

from otel_blocksnoop.analysis.enrich import Enricher
from otel_blocksnoop.analysis.flow import BlockFlow
from otel_blocksnoop.events import (
    NS_PER_MS,
    Block,
    Counters,
    InProgress,
    KernelEvent,
    Record,
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
