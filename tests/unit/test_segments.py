"""Cutting one blocked iteration into the shares of the requests it ran."""

from __future__ import annotations

from otel_blocksnoop.analysis.segments import Segment, TimedRead, split
from otel_blocksnoop.events import SpanRef, TaskRef, ThreadContext

MS = 1_000_000
A = SpanRef(trace_id=0xA, span_id=0x1, trace_flags=1)
B = SpanRef(trace_id=0xB, span_id=0x2, trace_flags=1)
TASK_A = TaskRef(name="Task-1", coroutine="handle_a")
TASK_B = TaskRef(name="Task-2", coroutine="handle_b")


def reads(*found: tuple[int, SpanRef | None, TaskRef | None]) -> list[TimedRead]:
    return [TimedRead(ms * MS, ThreadContext(span=span, task=task)) for ms, span, task in found]


def test_a_block_read_in_one_span_only_is_one_segment_of_that_span() -> None:
    found = reads((50, A, TASK_A), (60, A, TASK_A), (70, A, None))
    assert split(0, 100 * MS, found) == [Segment(0, 100 * MS, A, TASK_A, 3)]


def test_two_requests_back_to_back_are_cut_halfway_between_their_reads() -> None:
    # GIVEN reads every 2 ms: request A until 40 ms, then request B
    found = reads(*((t, A, TASK_A) for t in range(30, 41, 2)), *((t, B, TASK_B) for t in (42, 44)))
    # THEN A has the block up to 41 ms, B the rest
    assert split(0, 60 * MS, found) == [
        Segment(0, 41 * MS, A, TASK_A, 6),
        Segment(41 * MS, 60 * MS, B, TASK_B, 2),
    ]


def test_a_stretch_outside_any_span_is_its_own_segment_without_parent() -> None:
    found = reads((10, A, TASK_A), (20, None, None), (30, B, TASK_B))
    segments = split(0, 40 * MS, found)
    assert [(s.start_ns // MS, s.end_ns // MS, s.span) for s in segments] == [
        (0, 15, A),
        (15, 25, None),
        (25, 40, B),
    ]


def test_a_block_with_no_read_is_one_segment_with_no_owner() -> None:
    assert split(0, 10 * MS, []) == [Segment(0, 10 * MS, None, None, 0)]


def test_reads_outside_the_block_are_ignored() -> None:
    found = reads((5, B, None), (15, A, None))
    assert split(10 * MS, 20 * MS, found) == [Segment(10 * MS, 20 * MS, A, None, 1)]
