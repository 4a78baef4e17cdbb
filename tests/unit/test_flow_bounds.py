"""The flow never waits without a bound: not for a thread's kind, not for samples at a stop."""

from __future__ import annotations

import time

import pytest

from otel_blocksnoop.analysis.enrich import Enricher
from otel_blocksnoop.analysis.flow import KIND_WAIT_NS, BlockFlow
from otel_blocksnoop.events import (
    NS_PER_MS,
    Block,
    BlockEvent,
    Frame,
    KernelEvent,
    Record,
    StackSample,
    ThreadKind,
)
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.stacks.sampler import settle_ns
from tests.unit.test_flow_triggers import PID, THRESHOLD, Kernel

NS_PER_S = 1_000_000_000
HUGE_INTERVAL_US = 10**15  # --sample-interval 1e12 (ms)


class LaterKinds:
    """Kinds not known until ``known`` is set, as while a dump is under way."""

    def __init__(self, known: ThreadKind | None = None) -> None:
        self.known = known

    def kind(self, pid: int, tid: int) -> ThreadKind | None:
        _ = pid, tid
        return self.known


class NoSamples:
    """A sampler whose samples never arrive."""

    def __init__(self, interval_us: int) -> None:
        self.interval_us = interval_us

    def window(self, pid: int, tid: int, start_ns: int, end_ns: int) -> list[StackSample]:
        _ = pid, tid, start_ns, end_ns
        return []

    def covered_until(self, pid: int, tid: int) -> int:
        _ = pid, tid
        return 0

    def prepare(self, pid: int) -> None:
        _ = pid

    def begin(self, pid: int, tid: int, start_ns: int) -> None:
        _ = pid, tid, start_ns

    def end(self, pid: int, tid: int) -> None:
        _ = pid, tid

    def maintain(self) -> int | None:
        return None


class AllSamples(NoSamples):
    """A sampler whose samples are all in, up to now."""

    def covered_until(self, pid: int, tid: int) -> int:
        _ = pid, tid
        return time.monotonic_ns()


def block_ended(ago_ns: int, tid: int = 7) -> BlockEvent:
    end = time.monotonic_ns() - ago_ns
    return BlockEvent(pid=PID, tid=tid, comm="python", start_ns=end - 50 * NS_PER_MS, end_ns=end)


def flow_with(
    events: list[KernelEvent], kinds: LaterKinds, stacks: NoSamples | None = None
) -> tuple[BlockFlow, list[Record]]:
    records: list[Record] = []
    flow = BlockFlow(
        Kernel(events, {}),
        Enricher(THRESHOLD, None),
        records.append,
        Losses(),
        threshold_ns=THRESHOLD,
        kinds=kinds,
        stacks=stacks,
    )
    return flow, records


def blocks(records: list[Record]) -> list[Block]:
    return [r for r in records if isinstance(r, Block)]


def test_a_block_waits_for_its_threads_kind_and_a_native_threads_is_left_out() -> None:
    # GIVEN a block of a thread whose process is still being dumped
    kinds = LaterKinds()
    flow, records = flow_with([block_ended(0)], kinds)
    flow.step(until_ns=time.monotonic_ns())
    # THEN it waits, without holding the flow up
    assert blocks(records) == []
    assert flow.pending == 1
    # WHEN the dump says it is a native library's poller
    kinds.known = ThreadKind.NATIVE
    flow.step(until_ns=time.monotonic_ns())
    # THEN it is counted as ignored, not reported
    assert blocks(records) == []
    assert flow.summary(1.0).ignored_blocks == 1


def test_a_block_whose_threads_kind_never_comes_is_reported_as_unknown() -> None:
    # GIVEN a block that ended longer ago than a dump can take
    flow, records = flow_with([block_ended(KIND_WAIT_NS + 10 * NS_PER_MS)], LaterKinds())
    flow.step(until_ns=time.monotonic_ns())
    # THEN it is reported rather than lost, as an unknown thread's
    (block,) = blocks(records)
    assert block.thread_kind == ThreadKind.UNKNOWN


class LoopSamples(AllSamples):
    """Every sample of the block shows asyncio's loop running a handler."""

    def window(self, pid: int, tid: int, start_ns: int, end_ns: int) -> list[StackSample]:
        _ = pid, tid
        frames = (
            Frame("BaseEventLoop._run_once", "/usr/lib/python3.11/asyncio/base_events.py", 1936),
            Frame("handler", "/app/main.py", 20),
        )
        return [StackSample(start_ns + i * (end_ns - start_ns) // 4, frames) for i in range(4)]


def test_a_block_whose_samples_show_its_loop_iterating_is_a_loops_without_its_kind() -> None:
    # GIVEN a block whose thread's dump came too late to tell (its process gone), but
    # whose samples, taken while it blocked, show asyncio's loop running a handler
    stacks = LoopSamples(1000)
    ago = settle_ns(stacks.interval_us) + KIND_WAIT_NS + 10 * NS_PER_MS
    flow, records = flow_with([block_ended(ago)], LaterKinds(), stacks)
    flow.step(until_ns=time.monotonic_ns())
    # THEN it is a loop thread's block
    (block,) = blocks(records)
    assert block.thread_kind == ThreadKind.LOOP


def test_at_a_stop_a_block_is_not_held_for_its_threads_kind() -> None:
    flow, records = flow_with([block_ended(0)], LaterKinds())
    flow.step(until_ns=time.monotonic_ns())
    flow.finish(deadline_ns=time.monotonic_ns())
    (block,) = blocks(records)
    assert block.thread_kind == ThreadKind.UNKNOWN


def never_sleep(seconds: float) -> None:
    msg = f"slept {seconds} s"
    raise AssertionError(msg)


def test_at_a_stop_samples_are_not_waited_for_past_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a sampling interval of 1e12 ms (whose samples would be awaited for ages)
    # and a block that just ended, its samples not in
    flow, records = flow_with(
        [block_ended(0)], LaterKinds(ThreadKind.LOOP), NoSamples(HUGE_INTERVAL_US)
    )
    flow.step(until_ns=time.monotonic_ns())
    # WHEN the sidecar stops with its deadline reached
    monkeypatch.setattr(time, "sleep", never_sleep)
    flow.finish(deadline_ns=time.monotonic_ns())
    # THEN it does not wait, and the block is still reported
    assert len(blocks(records)) == 1


def test_at_a_stop_a_block_whose_samples_are_in_is_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a block held only for its thread's kind, its samples all in
    flow, records = flow_with([block_ended(0)], LaterKinds(), AllSamples(HUGE_INTERVAL_US))
    flow.step(until_ns=time.monotonic_ns())
    assert flow.pending == 1
    # WHEN the sidecar stops, with time left
    monkeypatch.setattr(time, "sleep", never_sleep)
    flow.finish(deadline_ns=time.monotonic_ns() + 60 * NS_PER_S)
    # THEN it reports the block at once
    assert len(blocks(records)) == 1


def test_samples_are_awaited_about_two_seconds_at_most_whatever_the_interval() -> None:
    assert settle_ns(HUGE_INTERVAL_US) < 2.5 * NS_PER_S
    assert settle_ns(10_000) < settle_ns(HUGE_INTERVAL_US)
