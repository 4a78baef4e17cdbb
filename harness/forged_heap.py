"""A CPython heap forged by hand, for each generated layout, read like a process.

_PyRuntime, an interpreter, two thread states, a context, a HAMT with an
array node, a bitmap node and a collision node (the last never appears in a
real test, hashes rarely collide), the OpenTelemetry Context dict, a span and
its SpanContext, built with each version's offsets in a bytearray that a
``RemoteMemory`` serves instead of a process. The context reader's unit tests
(``tests/unit/test_context_reader_forged.py``) and its fuzzing
(``harness/fuzz/context_reader.py``) walk it.
"""

from __future__ import annotations

from dataclasses import dataclass

from otel_blocksnoop.process.context import ContextReader
from otel_blocksnoop.process.cpython import SUPPORTED_VERSIONS, CPythonLayout, layout_for
from otel_blocksnoop.process.remote_memory import MAX_READ, RemoteMemory, plausible_pointer

BASE = 0x10000
TID = 4242
TID_OFFSET = 720
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
FLAGS = 1
DECOY_TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
DECOY_SPAN_ID = 0xEEE19B7EC3C1B174


class ForgedMemory(RemoteMemory):
    """A heap in a bytearray, read like a process; ``flip`` changes a word after N reads."""

    def __init__(self) -> None:
        super().__init__(pid=0)
        self.heap = bytearray(1 << 16)
        self.top = 0
        self.flip: tuple[int, int, int] | None = None  # (after reads, address, new value)
        self.objects: list[int] = []  # every address alloc gave, in order

    def alloc(self, size: int) -> int:
        address = BASE + self.top
        self.objects.append(address)
        self.top += (size + 15) & ~15
        return address

    def put(self, address: int, value: int, size: int = 8) -> None:
        at = address - BASE
        self.heap[at : at + size] = value.to_bytes(size, "little", signed=value < 0)

    def put_bytes(self, address: int, data: bytes) -> None:
        self.heap[address - BASE : address - BASE + len(data)] = data

    def read(self, address: int, size: int) -> bytes | None:
        if not 0 < size <= MAX_READ or not plausible_pointer(address, 1):
            return None
        self.reads += 1
        if self.flip is not None and self.reads >= self.flip[0]:
            _, where, value = self.flip
            self.put(where, value)
        at = address - BASE
        if at < 0 or at + size > len(self.heap):
            return None
        return bytes(self.heap[at : at + size])


@dataclass
class Forged:
    memory: ForgedMemory
    runtime: int
    tstate: int
    context: int
    span_context: int
    types: dict[str, int]
    chains: tuple[frozenset[int], ...] = ()
    """The objects of each thread's context, from the Context to its span's ids: its own."""


def forge(layout: CPythonLayout, decoy: bool = False) -> Forged:  # noqa: C901, PLR0915 (one heap, built step by step)
    """The heap; with ``decoy``, the other thread (TID + 1) has a span of its own (DECOY ids)."""
    m = ForgedMemory()
    types: dict[str, int] = {}

    def make_type(name: str, base: str | None = None, dictoffset: int = 0) -> int:
        text = m.alloc(len(name) + 1)
        m.put_bytes(text, name.encode() + b"\0")
        cls = m.alloc(512)
        m.put(cls + layout.type_name, text)
        m.put(cls + layout.type_base, types[base] if base else 0)
        m.put(cls + layout.type_basicsize, 32)
        m.put(cls + layout.type_dictoffset, dictoffset)
        types[name] = cls
        return cls

    def obj(type_name: str, size: int) -> int:
        address = m.alloc(size)
        m.put(address + layout.object_type, types[type_name])
        return address

    def string(text: str) -> int:
        address = obj("str", layout.unicode_ascii_data + len(text) + 1)
        m.put(address + layout.unicode_length, len(text))
        m.put(
            address + layout.unicode_state,
            layout.unicode_ascii_mask | layout.unicode_compact_mask,
            4,
        )
        m.put_bytes(address + layout.unicode_ascii_data, text.encode() + b"\0")
        return address

    def integer(value: int, type_name: str = "int") -> int:
        digits = []
        while value:
            digits.append(value & ((1 << layout.long_digit_bits) - 1))
            value >>= layout.long_digit_bits
        address = obj(type_name, layout.long_digits + 4 * max(1, len(digits)))
        if layout.long_lv_tag:
            sign = 0 if digits else 1
            m.put(address + layout.long_size, len(digits) << layout.long_non_size_bits | sign)
        else:
            m.put(address + layout.long_size, len(digits))
        for i, digit in enumerate(digits):
            m.put(address + layout.long_digits + layout.long_digit_size * i, digit, 4)
        return address

    def dictionary(type_name: str, items: list[tuple[int, int]]) -> int:
        keys = m.alloc(layout.keys_indices + 8 + layout.entry_size * len(items))
        m.put(keys + layout.keys_nentries, len(items))
        if layout.keys_size is not None:
            m.put(keys + layout.keys_size, 8)
        else:
            m.put(keys + (layout.keys_log2_size or 0), 3, 1)
            m.put(keys + (layout.keys_log2_index_bytes or 0), 3, 1)
            m.put(keys + (layout.keys_kind or 0), layout.keys_kind_general or 0, 1)
        entries = keys + layout.keys_indices + 8
        for i, (key, value) in enumerate(items):
            m.put(entries + i * layout.entry_size + layout.entry_key, key)
            m.put(entries + i * layout.entry_size + layout.entry_value, value)
        address = obj(type_name, 64)
        m.put(address + layout.dict_used, len(items))
        m.put(address + layout.dict_keys, keys)
        m.put(address + layout.dict_values, 0)
        return address

    def hamt_node(kind: str, slots: list[int], start: int) -> int:
        address = obj(kind, start + 8 * len(slots))
        m.put(address + layout.var_size, len(slots))
        for i, slot in enumerate(slots):
            m.put(address + start + 8 * i, slot)
        return address

    for name in ("str", "int", "tuple", "dict", "hamt", "hamt_bitmap_node"):
        make_type(name)
    for name in ("hamt_array_node", "hamt_collision_node", "_contextvars.Context"):
        make_type(name)
    make_type("_contextvars.ContextVar")
    make_type("TraceFlags", base="int")
    make_type("SpanContext", base="tuple")
    make_type("Context", base="dict")
    make_type("_Span", dictoffset=16)

    def otel_context_of(trace_id: int, span_id: int) -> tuple[int, int]:
        """An OpenTelemetry Context holding a span with these ids, and its SpanContext."""
        span_context = obj("SpanContext", layout.tuple_items + 8 * 6)
        m.put(span_context + layout.var_size, 6)
        fields = [integer(trace_id), integer(span_id), 0, integer(FLAGS, "TraceFlags"), 0, 0]
        for i, field in enumerate(fields):
            m.put(span_context + layout.tuple_items + 8 * i, field)
        span_dict = dictionary(
            "dict", [(string("_name"), string("GET /")), (string("_context"), span_context)]
        )
        span = obj("_Span", 32)
        m.put(span + 16, span_dict)
        otel_context = dictionary(
            "Context",
            [(string("current-baggage-1"), string("x")), (string("current-span-7f3a"), span)],
        )
        return otel_context, span_context

    first = len(m.objects)
    otel_context, span_context = otel_context_of(TRACE_ID, SPAN_ID)

    def var(name: str) -> int:
        address = obj("_contextvars.ContextVar", 64)
        m.put(address + layout.contextvar_name, string(name))
        return address

    # array node -> bitmap node (one pair, one subnode) -> collision node (two pairs)
    otel_var = var("current_context")
    collision = hamt_node(
        "hamt_collision_node",
        [var("request_id"), string("r1"), otel_var, otel_context],
        layout.collision_array,
    )
    bitmap = hamt_node(
        "hamt_bitmap_node", [var("other"), string("o"), 0, collision], layout.bitmap_array
    )
    array = obj("hamt_array_node", layout.array_array + 8 * 33)
    m.put(array + layout.array_array + 8 * 5, bitmap)
    m.put(array + layout.array_count, 1)
    hamt = obj("hamt", 48)
    m.put(hamt + layout.hamt_root, array)
    context = obj("_contextvars.Context", 64)
    m.put(context + layout.context_vars, hamt)
    chains = [frozenset(m.objects[first:])]
    decoy_context = 0
    if decoy:  # the same ContextVar, in a HAMT of one bitmap node, with another span
        first = len(m.objects)
        decoy_otel, _ = otel_context_of(DECOY_TRACE_ID, DECOY_SPAN_ID)
        node = hamt_node("hamt_bitmap_node", [otel_var, decoy_otel], layout.bitmap_array)
        m.put(node + layout.bitmap_bitmap, 1, 4)
        decoy_hamt = obj("hamt", 48)
        m.put(decoy_hamt + layout.hamt_root, node)
        decoy_context = obj("_contextvars.Context", 64)
        m.put(decoy_context + layout.context_vars, decoy_hamt)
        chains.append(frozenset(m.objects[first:]))

    runtime = m.alloc(1024)
    interp = m.alloc(2048)
    m.put(runtime + layout.runtime_interpreters_head, interp)
    other = m.alloc(512)  # another thread first, without a context (but with decoy)
    tstate = m.alloc(512)
    m.put(interp + layout.interp_threads_head, other)
    m.put(other + layout.tstate_next, tstate)
    for state, tid in ((other, TID + 1), (tstate, TID)):
        m.put(state + layout.tstate_interp, interp)
        if layout.tstate_native_thread_id is not None:
            m.put(state + layout.tstate_native_thread_id, tid)
        else:
            pthread = m.alloc(1024)
            m.put(state + layout.tstate_thread_id, pthread)
            m.put(pthread + TID_OFFSET, tid, 4)
    m.put(tstate + layout.tstate_context, context)
    m.put(other + layout.tstate_context, decoy_context)
    return Forged(m, runtime, tstate, context, span_context, types, tuple(chains))


def reader_of(forged: Forged, layout: CPythonLayout) -> ContextReader:
    return ContextReader.from_parts(forged.memory, layout, forged.runtime, TID_OFFSET)


LAYOUTS = [layout_for(*v) for v in SUPPORTED_VERSIONS]
IDS = [f"{a}.{b}" for a, b in SUPPORTED_VERSIONS]
