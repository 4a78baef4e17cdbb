"""The kernel's ring-buffer records, fuzzed: any bytes decode, and consistent ones decode right.

Records are random bytes of any length up to their struct (the kernel may
send a block shorter than its struct), decoded as the detector does. None
may raise. A block's segments only name contexts the record holds; for
sightings that are consistent (each context seen in order, inside the
iteration), segments are ordered, inside the iteration, and each covers its
own sightings.

The unit tests (``tests/unit/test_fuzz_*.py``) run these properties on a
small fixed budget with their seed corpus; ``bench/fuzz.py`` for minutes.
"""

from __future__ import annotations

import ctypes

from hypothesis import strategies as st

from harness.fuzz import Target
from otel_blocksnoop.events import TriggerReason
from otel_blocksnoop.kernel.constants import MAX_SEGMENTS
from otel_blocksnoop.kernel.decode import (
    activity_so_far,
    block_event_from_c,
    segments_from_c,
    trigger_from_c,
)
from otel_blocksnoop.kernel.layout import BlockEventC, SegmentsC, ThreadStateC, TriggerEventC
from otel_blocksnoop.kernel.ringbuf import record_as

BLOCK_SIZE = ctypes.sizeof(BlockEventC)


def check_block(drawn: tuple[bytes, bool]) -> None:
    """Any block record decodes; its segments name only the contexts it holds."""
    raw, with_activity = drawn
    record = record_as(BlockEventC, raw)
    event = block_event_from_c(record, with_activity)
    sent = {record.segments.items[i].context for i in range(min(record.segments.count, 64))}
    assert len(event.segments) <= MAX_SEGMENTS + 1
    assert {segment.context for segment in event.segments} <= sent | {None}
    assert (event.activity is None) == (not with_activity)


def check_trigger(raw: bytes) -> None:
    trigger = trigger_from_c(record_as(TriggerEventC, raw))
    assert isinstance(trigger.reason, TriggerReason)


def check_thread_state(drawn: tuple[bytes, int, int]) -> None:
    raw, process_cpu_ns, now_ns = drawn
    activity = activity_so_far(record_as(ThreadStateC, raw), process_cpu_ns, now_ns)
    assert activity.sibling_cpu_ns >= 0


@st.composite
def consistent_sightings(draw: st.DrawFn) -> tuple[SegmentsC, int, int]:
    """A record as the kernel writes it: contexts seen one after another inside the iteration."""
    start = draw(st.integers(1, 10**12))
    times = sorted(draw(st.lists(st.integers(1, 10**9), max_size=2 * MAX_SEGMENTS + 1)))
    pairs = [(start + times[i], start + times[i + 1]) for i in range(0, len(times) - 1, 2)]
    pairs = [(first, last) for first, last in pairs if first <= last]
    distinct = [pair for i, pair in enumerate(pairs) if i == 0 or pairs[i - 1][1] < pair[0]]
    sightings = distinct[:MAX_SEGMENTS]
    end = (sightings[-1][1] if sightings else start) + draw(st.integers(0, 10**8))
    raw = SegmentsC(count=len(sightings))
    for index, (first, last) in enumerate(sightings):
        item = raw.items[index]
        item.context = 0x1000 + index
        item.first_ns, item.last_ns = first, last
        item.prev_last_ns = sightings[index - 1][1] if index else 0
        item.next_first_ns = sightings[index + 1][0] if index + 1 < len(sightings) else 0
    filled = draw(st.booleans())
    if sightings and filled:  # the record filled up: the rest is no one's
        raw.overflow_ns = draw(st.integers(sightings[-1][1], end))
    return raw, start, end


def check_segments(drawn: tuple[SegmentsC, int, int]) -> None:
    """Consistent sightings: segments in order, inside the iteration, each around its sightings."""
    raw, start, end = drawn
    segments = segments_from_c(raw, start, end, None)
    assert len(segments) == raw.count + (1 if raw.overflow_ns and raw.count else 0)
    previous_end = start
    for index, segment in enumerate(segments):
        assert previous_end <= segment.start_ns <= segment.end_ns <= end
        previous_end = segment.end_ns
        if index < raw.count:
            item = raw.items[index]
            assert segment.context == item.context
            assert segment.start_ns <= item.first_ns
            assert item.last_ns <= segment.end_ns
            assert segment.after_ns <= item.first_ns
            assert item.last_ns <= segment.before_ns


blocks = st.tuples(st.binary(max_size=BLOCK_SIZE), st.booleans())
triggers = st.binary(max_size=ctypes.sizeof(TriggerEventC))
thread_states = st.tuples(
    st.binary(max_size=ctypes.sizeof(ThreadStateC)),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)

TARGETS: dict[str, Target] = {
    "kernel block record": Target(blocks, check_block),
    "kernel trigger record": Target(triggers, check_trigger),
    "kernel thread state": Target(thread_states, check_thread_state),
    "kernel segments": Target(consistent_sightings(), check_segments),
}
