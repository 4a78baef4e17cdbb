"""The target's memory, fuzzed: the context reader gives the right span or none, never another.

The forged heap of ``harness.forged_heap`` (one thread whose context
holds an OpenTelemetry span, for each generated layout) is corrupted where
the walk reads it: bytes, 32-bit fields and words that a clean walk looked
at are overwritten, before the walk or in the middle of it, with any number,
small counts, addresses inside the heap, or the addresses of its objects
(types, strings, dicts, HAMT nodes). Only the three ints that hold the ids
are left as they are, and no pointer is rewired to one of them: memory that
says another id would be read as that id by any reader.

Whatever the corruption, a read gives the forged span or None; no exception
is swallowed by the reader's last-resort guard (``errors`` stays 0); and
the walk stays bounded in reads. A second read after more corruption tests
what the reader kept from the first (thread states, the ContextVar).

The unit tests (``tests/unit/test_fuzz_*.py``) run these properties on a
small fixed budget with their seed corpus; ``bench/fuzz.py`` for minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from harness.forged_heap import (
    BASE,
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

RIGHT = SpanRef(TRACE_ID, SPAN_ID, FLAGS)
MAX_WALK_READS = 100_000
"""Reads one call may make: thread lists, dicts and HAMTs are each bounded, so is the sum."""


@dataclass(frozen=True)
class Heap:
    """What a clean walk of one layout's forged heap looks like."""

    layout: CPythonLayout
    reads: tuple[tuple[int, int], ...]  # (address, size) of each read, in order
    targets: tuple[int, ...]  # object addresses a corrupted pointer may name
    protected: tuple[tuple[int, int], ...]  # [start, end) of the id ints' sizes and digits
    top: int


def id_ints(forged: Forged, layout: CPythonLayout) -> list[int]:
    items = forged.memory.pointers(forged.span_context + layout.tuple_items, 4)
    assert items is not None
    return [items[0], items[1], items[3]]


def survey(layout: CPythonLayout) -> Heap:
    forged = forge(layout)
    memory = forged.memory
    seen: list[tuple[int, int]] = []
    read = memory.read

    def logged(address: int, size: int) -> bytes | None:
        seen.append((address, size))
        return read(address, size)

    memory.read = logged  # type: ignore[method-assign]
    assert reader_of(forged, layout).active_span(TID) == RIGHT
    ints = id_ints(forged, layout)
    protected = tuple(
        (address + layout.long_size, address + layout.long_digits + 5 * layout.long_digit_size)
        for address in ints
    )
    targets = tuple(address for address in memory.objects if address not in ints)
    return Heap(layout, tuple(seen), targets, protected, memory.top)


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
            st.integers(BASE, BASE + heap.top).filter(lambda a: a not in heap.targets),
        )
    )
    if width == 8 and value in id_addresses(heap):
        value = 0  # a pointer rewired to an id int would be memory that says another id
    after = draw(st.one_of(st.none(), st.integers(1, 120)))
    return Corruption(at, width, value & ((1 << 8 * width) - 1), after)


def id_addresses(heap: Heap) -> set[int]:
    return {start - heap.layout.long_size for start, _ in heap.protected}


@st.composite
def attacks(draw: st.DrawFn) -> tuple[str, list[Corruption], list[Corruption]]:
    name = draw(st.sampled_from(sorted(HEAPS)))
    heap = HEAPS[name]
    first = draw(st.lists(corruptions(heap), min_size=1, max_size=4))
    second = draw(st.lists(corruptions(heap), max_size=3))
    return name, first, second


def allowed(heap: Heap, corruption: Corruption) -> bool:
    end = corruption.address + corruption.size
    return all(end <= start or corruption.address >= stop for start, stop in heap.protected)


def check_memory(drawn: tuple[str, list[Corruption], list[Corruption]]) -> None:
    """The forged span or None after each corruption; no swallowed error; a bounded walk."""
    name, first, second = drawn
    heap = HEAPS[name]
    forged = forge(heap.layout)
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
    for batch in (first, second):
        pending[:] = sorted(
            (c for c in batch if allowed(heap, c)), key=lambda c: c.after_reads or 0
        )
        start = memory.reads
        context = reader.thread_context(TID)
        assert context.span in (RIGHT, None)
        assert reader.errors == 0
        assert memory.reads - start <= MAX_WALK_READS
        reader.context_address(TID)
        assert reader.errors == 0


TARGETS: dict[str, Target] = {
    "target memory (context reader)": Target(attacks(), check_memory),
}
