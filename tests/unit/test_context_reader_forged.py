"""The context reader's walk on forged memory, for each generated layout.

The heap of ``harness/forged_heap.py`` (_PyRuntime to a span's SpanContext,
through every kind of HAMT node) is read by the real walk through a
RemoteMemory that serves it instead of a process: what each layout says is
followed the way the walk expects, and every corrupt link gives None.
"""

from __future__ import annotations

import pytest

from harness.forged_heap import (
    BASE,
    FLAGS,
    IDS,
    LAYOUTS,
    SPAN_ID,
    TID,
    TRACE_ID,
    ForgedMemory,
    forge,
    reader_of,
)
from otel_blocksnoop.events import SpanRef
from otel_blocksnoop.process.context import ContextReader
from otel_blocksnoop.process.cpython import CPythonLayout, layout_for


@pytest.fixture(params=LAYOUTS, ids=IDS)
def layout(request: pytest.FixtureRequest) -> CPythonLayout:
    found: CPythonLayout = request.param
    return found


def test_the_walk_goes_through_every_kind_of_hamt_node(layout: CPythonLayout) -> None:
    # GIVEN a thread whose context holds the OTel variable in a collision node
    forged = forge(layout)

    # WHEN its span is read
    span = reader_of(forged, layout).active_span(TID)

    # THEN the ids are those forged
    assert span == SpanRef(TRACE_ID, SPAN_ID, FLAGS)


def test_other_threads_and_unknown_tids_have_none(layout: CPythonLayout) -> None:
    forged = forge(layout)
    reader = reader_of(forged, layout)
    assert reader.active_span(TID + 1) is None
    assert reader.active_span(99) is None


def test_a_wrong_type_name_anywhere_gives_none(layout: CPythonLayout) -> None:
    # GIVEN the SpanContext's type renamed (an object that is not what it seems)
    forged = forge(layout)
    name = forged.memory.pointer(forged.types["SpanContext"] + layout.type_name)
    assert name is not None
    forged.memory.put_bytes(name, b"Spoofed\0")

    # WHEN / THEN the walk refuses it
    assert reader_of(forged, layout).active_span(TID) is None


def test_a_context_that_moves_once_is_read_again(layout: CPythonLayout) -> None:
    # GIVEN the thread's context pointer replaced mid-walk by an empty context
    forged = forge(layout)
    empty = forged.memory.alloc(64)
    forged.memory.put(empty + layout.object_type, forged.types["_contextvars.Context"])
    forged.memory.flip = (10, forged.tstate + layout.tstate_context, empty)

    # WHEN the span is read
    span = reader_of(forged, layout).active_span(TID)

    # THEN the first walk is dropped and the second sees the new, empty context
    assert span is None
    assert forged.memory.reads > 20


def test_a_context_that_keeps_moving_is_given_up_and_counted(layout: CPythonLayout) -> None:
    # GIVEN a thread whose context pointer alternates between two valid contexts at every look
    forged = forge(layout)
    memory = forged.memory
    twin = memory.alloc(64)
    memory.put(twin + layout.object_type, forged.types["_contextvars.Context"])
    variables = memory.pointer(forged.context + layout.context_vars)
    assert variables is not None
    memory.put(twin + layout.context_vars, variables)
    tstate_context = forged.tstate + layout.tstate_context
    read = memory.read

    def moving_read(address: int, size: int) -> bytes | None:
        data = read(address, size)
        if address == tstate_context and data is not None:
            now = int.from_bytes(data[:8], "little")
            memory.put(address, twin if now == forged.context else forged.context)
        return data

    memory.read = moving_read  # type: ignore[method-assign]
    reader = reader_of(forged, layout)

    # WHEN its span is read
    span = reader.active_span(TID)

    # THEN the reader gives up after its attempts, with None, and counts it
    assert span is None
    assert reader.moved == 1
    assert reader.errors == 0


def test_a_huge_or_negative_size_gives_none(layout: CPythonLayout) -> None:
    # GIVEN a SpanContext claiming 2**40 items, then a negative trace id
    forged = forge(layout)
    forged.memory.put(forged.span_context + layout.var_size, 1 << 40)
    assert reader_of(forged, layout).active_span(TID) is None

    forged = forge(layout)
    trace_id = forged.memory.pointer(forged.span_context + layout.tuple_items)
    assert trace_id is not None
    if layout.long_lv_tag:
        tag = forged.memory.pointer(trace_id + layout.long_size)
        assert tag is not None
        forged.memory.put(trace_id + layout.long_size, tag | 2)
    else:
        forged.memory.put(trace_id + layout.long_size, -5)
    assert reader_of(forged, layout).active_span(TID) is None


def test_a_thread_list_that_loops_is_bounded(layout: CPythonLayout) -> None:
    # GIVEN a thread state whose next is itself, and no thread with the TID asked
    forged = forge(layout)
    forged.memory.put(forged.tstate + layout.tstate_next, forged.tstate)

    # WHEN / THEN the walk ends, with None
    assert reader_of(forged, layout).active_span(31337) is None


def test_3_9_and_3_10_without_a_tid_offset_are_unsupported() -> None:
    layout = layout_for(3, 9)
    assert layout is not None
    reader = ContextReader.from_parts(ForgedMemory(), layout, BASE)
    assert reader.unsupported is not None
    assert reader.active_span(TID) is None
