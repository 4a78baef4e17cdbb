"""The target's memory, fuzzed: each thread gets its own span from the reader, or none.

The forged heap of ``harness.forged_heap`` holds two threads, each in a
context with an OpenTelemetry span of its own (TID: the forged ids; TID + 1:
the decoy ids), for each generated layout. It is corrupted where the walks
read it: bytes, 32-bit fields and words that clean walks of both threads
looked at are overwritten, before a walk or in the middle of it, with any
number, small counts, addresses inside the heap, or the addresses of shared
objects (types, strings, the ContextVar, interpreter and thread states).
Left alone are the ints that hold the ids, and no pointer is rewired to an
object of either thread's context: memory that says another id, or that one
thread runs in the other's context, would be read so by any reader.

The threads are read in turn, with more corruption between reads, so that
what the reader keeps from one read (thread states, the ContextVar) is used
in the next. Each read gives that thread's span or None; no exception is
swallowed by the reader's last-resort guard (``errors`` stays 0); and each
walk stays bounded in reads.

The unit tests (``tests/unit/test_fuzz_context_reader.py``) run this
property on a small fixed budget; ``bench/fuzz.py`` for minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from harness.forged_heap import (
    BASE,
    DECOY_SPAN_ID,
    DECOY_TRACE_ID,
    FLAGS,
    IDS,
    LAYOUTS,
    SPAN_ID,
    TID,
    TRACE_ID,
    Forged,
    forge,
    reader_of,
)
from harness.fuzz import Target
from otel_blocksnoop.events import SpanRef
from otel_blocksnoop.process.cpython import CPythonLayout

EXPECTED = {
    TID: SpanRef(TRACE_ID, SPAN_ID, FLAGS),
    TID + 1: SpanRef(DECOY_TRACE_ID, DECOY_SPAN_ID, FLAGS),
}
MAX_WALK_READS = 100_000
"""Reads one call may make: thread lists, dicts and HAMTs are each bounded, so is the sum."""


@dataclass(frozen=True)
class Heap:
    """What clean walks of one layout's forged heap look like."""

    layout: CPythonLayout
    reads: tuple[tuple[int, int], ...]  # (address, size) of each read, in order
    targets: tuple[int, ...]  # object addresses a corrupted pointer may name
    owned: frozenset[int]  # the objects of either thread's context: never named
    protected: tuple[tuple[int, int], ...]  # [start, end) of the id ints' sizes and digits
    top: int


def id_ints(forged: Forged, layout: CPythonLayout) -> list[int]:
    """The trace id, span id and flags ints of every span context in the heap."""
    memory = forged.memory
    found = []
    for address in sorted(set().union(*forged.chains)):
        if memory.pointer(address + layout.object_type) == forged.types["SpanContext"]:
            items = memory.pointers(address + layout.tuple_items, 4)
            assert items is not None
            found += [items[0], items[1], items[3]]
    return found


def survey(layout: CPythonLayout) -> Heap:
    forged = forge(layout, decoy=True)
    memory = forged.memory
    seen: list[tuple[int, int]] = []
    read = memory.read

    def logged(address: int, size: int) -> bytes | None:
        seen.append((address, size))
        return read(address, size)

    memory.read = logged  # type: ignore[method-assign]
    reader = reader_of(forged, layout)
    for tid, span in EXPECTED.items():
        assert reader.active_span(tid) == span
    protected = tuple(
        (address + layout.long_size, address + layout.long_digits + 5 * layout.long_digit_size)
        for address in id_ints(forged, layout)
    )
    owned = frozenset().union(*forged.chains)
    targets = tuple(address for address in memory.objects if address not in owned)
    return Heap(layout, tuple(dict.fromkeys(seen)), targets, owned, protected, memory.top)


HEAPS = {
    name: survey(layout) for name, layout in zip(IDS, LAYOUTS, strict=True) if layout is not None
}


@dataclass(frozen=True)
class Corruption:
    address: int
    size: int  # 1, 4 or 8 bytes
    value: int
    after_reads: int | None  # None: before the walk; else once the walk made that many reads


@st.composite
def corruptions(draw: st.DrawFn, heap: Heap) -> Corruption:
    address, size = draw(st.sampled_from(heap.reads))
    width = draw(st.sampled_from([1, 4, 8]))
    at = address + draw(st.integers(0, max(0, size - width)))
    if width == 8:
        at -= at % 8
    value = draw(
        st.one_of(
            st.integers(0, 2**64 - 1),
            st.integers(0, 80),
            st.just(2**64 - 1),
            st.sampled_from(heap.targets),
            st.integers(BASE, BASE + heap.top).filter(lambda a: a not in heap.owned),
        )
    )
    after = draw(st.one_of(st.none(), st.integers(1, 120)))
    return Corruption(at, width, value & ((1 << 8 * width) - 1), after)


Step = tuple[int, list[Corruption]]


@st.composite
def attacks(draw: st.DrawFn) -> tuple[str, list[Step]]:
    """A layout, then reads of either thread, each after its own corruptions."""
    name = draw(st.sampled_from(sorted(HEAPS)))
    heap = HEAPS[name]
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from(sorted(EXPECTED)), st.lists(corruptions(heap), max_size=3)),
            min_size=1,
            max_size=4,
        )
    )
    return name, steps


def allowed(heap: Heap, corruption: Corruption) -> bool:
    """Not in an id int, and no pointer named an object of a thread's context."""
    end = corruption.address + corruption.size
    if corruption.size == 8 and corruption.value in heap.owned:
        return False
    return all(end <= start or corruption.address >= stop for start, stop in heap.protected)


def check_memory(drawn: tuple[str, list[Step]]) -> None:
    """Each thread's span or None after each corruption; no swallowed error; bounded walks."""
    name, steps = drawn
    heap = HEAPS[name]
    forged = forge(heap.layout, decoy=True)
    memory = forged.memory
    reader = reader_of(forged, heap.layout)
    clean_read = memory.read
    pending: list[Corruption] = []
    start = 0

    def corrupting(address: int, size: int) -> bytes | None:
        while pending and (pending[0].after_reads or 0) <= memory.reads - start:
            corruption = pending.pop(0)
            memory.put(corruption.address, corruption.value, corruption.size)
        return clean_read(address, size)

    memory.read = corrupting  # type: ignore[method-assign]
    for tid, batch in steps:
        chosen = [c for c in batch if allowed(heap, c)]
        pending[:] = sorted(chosen, key=lambda c: c.after_reads or 0)
        start = memory.reads
        context = reader.thread_context(tid)
        assert context.span in (EXPECTED[tid], None), f"thread {tid} read {context.span}"
        assert reader.errors == 0
        assert memory.reads - start <= MAX_WALK_READS
        reader.context_address(tid)
        assert reader.errors == 0


TARGETS: dict[str, Target] = {
    "target memory (context reader)": Target(attacks(), check_memory),
}
