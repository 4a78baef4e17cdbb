"""Cutting one blocked iteration into the shares of the requests it ran."""

from __future__ import annotations

from otel_blocksnoop.analysis.segments import Share, joined, shares, whole_owner
from otel_blocksnoop.events import Activity, ContextSegment, Sleep, SpanRef, TaskRef, ThreadContext
from otel_blocksnoop.kernel.decode import segments_from_c
from otel_blocksnoop.kernel.layout import SegmentsC

MS = 1_000_000
A = SpanRef(trace_id=0xA, span_id=0x1, trace_flags=1)
B = SpanRef(trace_id=0xB, span_id=0x2, trace_flags=1)
OWNER_A = ThreadContext(span=A, task=TaskRef(name="Task-1", coroutine="handle"), context=0xA0)
OWNER_B = ThreadContext(span=B, task=TaskRef(name="Task-2", coroutine="handle"), context=0xB0)
NOBODY = ThreadContext(span=None, task=None)
THRESHOLD = 10 * MS


def seg(context: int | None, start_ms: float, end_ms: float) -> ContextSegment:
    start, end = int(start_ms * MS), int(end_ms * MS)
    return ContextSegment(context, start, end, start, end, activity=None)


def test_two_requests_blocking_in_one_iteration_get_a_share_each() -> None:
    found = shares([seg(0xA0, 0, 30), seg(0xB0, 30, 60)], [OWNER_A, OWNER_B], THRESHOLD)
    assert found == [Share(seg(0xA0, 0, 30), OWNER_A), Share(seg(0xB0, 30, 60), OWNER_B)]


def test_a_short_callback_between_blocks_gets_no_span_of_its_own() -> None:
    # GIVEN A blocks 30 ms, C runs 0.5 ms, B blocks 30 ms (threshold 10 ms: floor 1 ms)
    segments = [seg(0xA0, 0, 30), seg(0xC0, 30, 30.5), seg(0xB0, 30.5, 60.5)]
    found = shares(segments, [OWNER_A, NOBODY, OWNER_B], THRESHOLD)
    # THEN A and B are the shares; C's half millisecond is in neither
    assert [share.owner for share in found] == [OWNER_A, OWNER_B]


def test_one_blocking_request_among_quick_callbacks_keeps_the_iteration_whole() -> None:
    segments = [seg(0xC0, 0, 0.5), seg(0xA0, 0.5, 40), seg(0xD0, 40, 40.4)]
    owners = [NOBODY, OWNER_A, NOBODY]
    assert shares(segments, owners, THRESHOLD) == []
    # AND the whole iteration is A's: A held more than half of it
    assert whole_owner(segments, owners, 40_400_000) == OWNER_A


def test_an_iteration_no_request_held_half_of_has_no_owner() -> None:
    segments = [seg(0xA0, 0, 4), seg(0xB0, 4, 8), seg(0xC0, 8, 12)]
    assert whole_owner(segments, [OWNER_A, OWNER_B, NOBODY], 12 * MS) == NOBODY


def test_two_steps_of_one_task_around_a_blip_are_one_share() -> None:
    # GIVEN context A0 seen, a blip, A0 again (the kernel recorded two A0 segments)
    segments = [seg(0xA0, 0, 20), seg(0xA0, 20, 40), seg(0xB0, 40, 70)]
    found = shares(segments, [OWNER_A, OWNER_A, OWNER_B], THRESHOLD)
    assert [(s.segment.start_ns, s.segment.end_ns, s.owner) for s in found] == [
        (0, 40 * MS, OWNER_A),
        (40 * MS, 70 * MS, OWNER_B),
    ]


def test_neighbours_of_one_context_are_not_joined_when_only_one_was_read() -> None:
    # GIVEN the same address twice, read only in the first: the second may be a new object
    segments = [seg(0xA0, 0, 20), seg(0xA0, 20, 40)]
    found = shares(segments, [OWNER_A, NOBODY], THRESHOLD)
    assert [share.owner for share in found] == [OWNER_A, NOBODY]


def test_joined_segments_add_their_books() -> None:
    first = ContextSegment(1, 0, 10, 0, 10, Activity(5, 1, 4, (Sleep("read", 4, 1),), 0, 2))
    second = ContextSegment(
        1, 10, 20, 10, 20, Activity(3, 0, 7, (Sleep("read", 2, 1), Sleep("futex", 5, 2)), 0, 1)
    )
    both = joined(first, second)
    assert (both.start_ns, both.end_ns) == (0, 20)
    assert both.activity == Activity(8, 1, 11, (Sleep("read", 6, 2), Sleep("futex", 5, 2)), 0, 3)


def kernel_segments(*items: tuple[int, int, int, int, int, int], overflow: int = 0) -> SegmentsC:
    """The kernel's record: (context, first, last, prev_last, next_first, on_cpu at first)."""
    raw = SegmentsC(count=len(items), overflow_ns=overflow)
    for index, (context, first, last, prev_last, next_first, on_cpu) in enumerate(items):
        item = raw.items[index]
        item.context, item.first_ns, item.last_ns = context, first, last
        item.prev_last_ns, item.next_first_ns = prev_last, next_first
        item.at_first.on_cpu_ns = on_cpu
    return raw


def test_boundaries_are_halfway_between_the_sightings_of_two_contexts() -> None:
    # GIVEN A seen from 0.5 to 29.6 ms, B from 30.4 to 59.5 ms, in an iteration of 0-60 ms
    raw = kernel_segments(
        (0xA0, MS // 2, 29_600_000, 0, 30_400_000, 0),
        (0xB0, 30_400_000, 59_500_000, 29_600_000, 0, 27 * MS),
    )
    total = Activity(57 * MS, 0, 0, (), 0, 0)
    a, b = segments_from_c(raw, 0, 60 * MS, total)
    # THEN A owns 0-30 ms, B 30-60 ms; each read window lies between the neighbours' sightings
    assert (a.start_ns, a.end_ns, a.after_ns, a.before_ns) == (0, 30 * MS, 0, 30_400_000)
    assert (b.start_ns, b.end_ns, b.after_ns, b.before_ns) == (
        30 * MS,
        60 * MS,
        29_600_000,
        60 * MS,
    )
    # AND each has what the thread did between the first sightings of it and the next
    assert a.activity is not None
    assert a.activity.on_cpu_ns == 27 * MS
    assert b.activity is not None
    assert b.activity.on_cpu_ns == 30 * MS


def test_time_between_sightings_far_apart_belongs_to_neither_context() -> None:
    # GIVEN A last seen at 10 ms and B first at 90 ms: a sighting was missed between
    raw = kernel_segments(
        (0xA0, MS // 2, 10 * MS, 0, 90 * MS, 0), (0xB0, 90 * MS, 99 * MS, 10 * MS, 0, 0)
    )
    a, b = segments_from_c(raw, 0, 100 * MS, None)
    # THEN each reaches only a tick past its own sightings: the 78 ms between are no one's
    assert (a.start_ns, a.end_ns) == (0, 11 * MS)
    assert (b.start_ns, b.end_ns) == (89 * MS, 100 * MS)
    # AND a read in that stretch still counts for whichever context it saw
    assert (a.after_ns, a.before_ns, b.after_ns, b.before_ns) == (0, 90 * MS, 10 * MS, 100 * MS)


def test_a_full_record_leaves_the_rest_of_the_iteration_to_no_known_context() -> None:
    raw = kernel_segments((0xA0, 1 * MS, 10 * MS, 0, 0, 0), overflow=12 * MS)
    a, rest = segments_from_c(raw, 0, 50 * MS, Activity(1, 0, 0, (), 0, 0))
    assert (a.context, a.start_ns, a.end_ns, a.activity) == (0xA0, 0, 11 * MS, None)
    assert (rest.context, rest.start_ns, rest.end_ns) == (None, 11 * MS, 50 * MS)


def test_an_iteration_without_sightings_has_no_segments() -> None:
    assert segments_from_c(SegmentsC(), 0, 50 * MS, None) == ()


def test_the_loops_own_way_back_to_epoll_is_not_a_block_of_its_own() -> None:
    # GIVEN a 539 ms callback of request A, then 9 ms of the loop's own work in its base
    # context (no span, no task: a wait for a CPU on a busy machine), threshold 50 ms
    base = ThreadContext(span=None, task=None, context=0xC0)
    segments = [seg(0xA0, 0, 539), seg(0xC0, 539, 548)]
    owners = [OWNER_A, base]
    # THEN the iteration is one block, A's
    assert shares(segments, owners, 50 * MS) == []
    assert whole_owner(segments, owners, 548 * MS) == OWNER_A


def test_a_long_stretch_nobody_owns_is_still_a_share_of_its_own() -> None:
    # GIVEN A, then 60 ms no read named (threshold 50 ms): a block on its own, owner unknown
    segments = [seg(0xA0, 0, 100), seg(0xC0, 100, 160)]
    found = shares(segments, [OWNER_A, NOBODY], 50 * MS)
    assert [share.owner for share in found] == [OWNER_A, NOBODY]
