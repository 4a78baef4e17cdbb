"""The variables of a ``contextvars.Context``: its HAMT (Python/hamt.c), read from outside.

Two ways in: ``find`` follows one key's hash down the tree as CPython does
(a few reads), ``items`` walks the whole tree. Both are bounded in depth,
nodes and slots, so that a tree that loops or lies ends the walk with nothing.
"""

from __future__ import annotations

from otel_blocksnoop.process.context.objects import ObjectReader
from otel_blocksnoop.process.remote_memory import plausible_pointer

MAX_HAMT_NODES = 256
MAX_HAMT_DEPTH = 8
MAX_HAMT_NODE_SLOTS = 64

HAMT_TYPE = "hamt"
CONTEXT_TYPES = frozenset({"Context", "_contextvars.Context"})
"""What a contextvars Context's type is called (the C type, as it names itself)."""
_BITMAP_NODE = "hamt_bitmap_node"
_ARRAY_NODE = "hamt_array_node"
_COLLISION_NODE = "hamt_collision_node"


class HamtReader:
    """Reads HAMTs through one process's ``ObjectReader``."""

    def __init__(self, objects: ObjectReader) -> None:
        self._objects = objects

    def find(self, hamt: int, key: int) -> int | None:  # noqa: C901, PLR0911 (one early exit per check of untrusted memory)
        """The value of ``key`` (a ContextVar) in a HAMT, following its hash (Python/hamt.c)."""
        memory, layout = self._objects.memory, self._objects.layout
        hash64 = memory.ssize(key + layout.contextvar_hash)
        if hash64 is None:
            return None
        # hamt_hash(): the 64-bit hash folded to 32 bits, -1 being kept for errors.
        folded = (hash64 ^ hash64 >> 32) & 0xFFFFFFFF
        folded = 0xFFFFFFFE if folded == 0xFFFFFFFF else folded
        node = memory.pointer(hamt + layout.hamt_root)
        for depth in range(MAX_HAMT_DEPTH + 1):
            if not node or not plausible_pointer(node):
                return None
            kind = self._objects.type_name(node)
            index = folded >> 5 * depth & 0x1F
            if kind == _ARRAY_NODE:
                node = memory.pointer(node + layout.array_array + 8 * index)
                continue
            if kind == _COLLISION_NODE:
                slots = self._slots(node)
                if slots is None:
                    return None
                array = memory.pointers(node + layout.collision_array, slots) or ()
                pairs = zip(array[0::2], array[1::2], strict=True)
                return next((value for found, value in pairs if found == key), None)
            if kind != _BITMAP_NODE:
                return None
            bitmap = memory.u32(node + layout.bitmap_bitmap)
            slots = memory.ssize(node + layout.var_size)
            if bitmap is None or slots is None or not bitmap >> index & 1:
                return None
            position = (bitmap & (1 << index) - 1).bit_count()
            if not 0 <= 2 * position + 1 < min(slots, MAX_HAMT_NODE_SLOTS):
                return None
            pair = memory.pointers(node + layout.bitmap_array + 16 * position, 2)
            if pair is None:
                return None
            found, value = pair
            if found:
                return value if found == key else None
            node = value  # no key: the value is the node one level down
        return None

    def items(self, hamt: int) -> list[tuple[int, int]]:
        """Every (key, value) of a HAMT, bounded in depth, nodes and slots."""
        memory, layout = self._objects.memory, self._objects.layout
        root = memory.pointer(hamt + layout.hamt_root)
        items: list[tuple[int, int]] = []
        stack = [(root, 0)] if root else []
        visited = 0
        while stack:
            node, depth = stack.pop()
            visited += 1
            if visited > MAX_HAMT_NODES or depth > MAX_HAMT_DEPTH or not plausible_pointer(node):
                return []
            kind = self._objects.type_name(node)
            if kind == _ARRAY_NODE:
                children = memory.pointers(node + layout.array_array, 32)
                if children is None:
                    return []
                stack.extend((child, depth + 1) for child in children if child)
                continue
            if kind not in {_BITMAP_NODE, _COLLISION_NODE}:
                return []
            slots = self._slots(node)
            start = layout.bitmap_array if kind == _BITMAP_NODE else layout.collision_array
            array = memory.pointers(node + start, slots) if slots is not None else None
            if array is None:
                return []
            for key, value in zip(array[0::2], array[1::2], strict=True):
                if key:
                    items.append((key, value))
                elif kind == _BITMAP_NODE and value:
                    stack.append((value, depth + 1))
        return items

    def _slots(self, node: int) -> int | None:
        """The key and value slots of a bitmap or collision node: pairs, and not too many."""
        slots = self._objects.memory.ssize(node + self._objects.layout.var_size)
        if slots is None or not 0 <= slots <= MAX_HAMT_NODE_SLOTS or slots % 2:
            return None
        return slots


__all__ = ["HAMT_TYPE", "HamtReader"]
