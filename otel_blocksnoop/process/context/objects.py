"""Python objects of another process, decoded from its memory: type names, str, int, dict.

``ObjectReader`` is bound once to the target's memory and its CPython layout.
Its memory is untrusted: every object is checked by type name before it is
decoded, every size is bounded, and anything unexpected gives None (or False),
never an exception and never a guess.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from otel_blocksnoop.process.cpython import CPythonLayout
from otel_blocksnoop.process.remote_memory import RemoteMemory, plausible_pointer

MAX_DICT_ENTRIES = 64
MAX_NAME_LENGTH = 256
MAX_STATIC_TYPES = 64
"""Type names kept for good: those of the static types inside the interpreter's image."""
MAX_BASES = 8
"""Types looked at up a class's bases before giving up."""

_SHORT_STRING = 64
"""Characters read with a str's header, so that a short one takes a single read."""


def _word(data: bytes, at: int, signed: bool = False) -> int:
    """The 8-byte word at ``at`` of bytes read from the app."""
    return int.from_bytes(data[at : at + 8], "little", signed=signed)


class ObjectReader:
    """Decodes the objects of one process by one CPython version's layout.

    Type names are kept for one walk (``new_walk`` forgets them: heap types
    may be freed and their memory reused between walks), and for good when the
    type is static, inside the interpreter's image (``image``: its mappings).
    """

    def __init__(
        self, memory: RemoteMemory, layout: CPythonLayout, image: Iterable[tuple[int, int]] = ()
    ) -> None:
        self.memory = memory
        self.layout = layout
        self._image = tuple(image)
        self._type_names: dict[int, str | None] = {}
        self._static_type_names: dict[int, str | None] = {}

    def new_walk(self) -> None:
        """Forget the names of heap types (types outlive the objects of one walk, not more)."""
        self._type_names.clear()

    # Types

    def type_name(self, obj: int) -> str | None:
        """The name of the object's type (``tp_name``)."""
        if not plausible_pointer(obj):
            return None
        cls = self.memory.pointer(obj + self.layout.object_type)
        return self.name_of_type(cls) if cls else None

    def name_of_type(self, cls: int) -> str | None:
        if cls in self._static_type_names:
            return self._static_type_names[cls]
        if cls in self._type_names:
            return self._type_names[cls]
        if not plausible_pointer(cls):
            return None
        pointer = self.memory.pointer(cls + self.layout.type_name)
        name = self.memory.c_string(pointer) if pointer else None
        static = any(start <= cls < end for start, end in self._image)
        if static and name is not None and len(self._static_type_names) < MAX_STATIC_TYPES:
            self._static_type_names[cls] = name
        else:
            self._type_names[cls] = name
        return name

    def is_subclass(self, obj: int, name: str, base: str) -> bool:
        """The object's type is ``name`` itself, or named ``name`` with ``base`` above it."""
        if not plausible_pointer(obj):
            return False
        cls = self.memory.pointer(obj + self.layout.object_type)
        return self.type_is_subclass(cls, name, base)

    def type_is_subclass(self, cls: int | None, name: str, base: str) -> bool:
        for _ in range(MAX_BASES):
            if not cls:
                return False
            cls_name = self.name_of_type(cls)
            if cls_name == base:
                return True
            if name not in (cls_name, base):
                return False
            cls = self.memory.pointer(cls + self.layout.type_base)
        return False

    def base_named(self, obj: int, name: str) -> int | None:
        """The type named ``name`` among the object's type and its bases, or None."""
        cls = self.memory.pointer(obj + self.layout.object_type)
        for _ in range(MAX_BASES):
            if not cls or not plausible_pointer(cls):
                return None
            if self.name_of_type(cls) == name:
                return cls
            cls = self.memory.pointer(cls + self.layout.type_base)
        return None

    # str and int

    def ascii(self, obj: int) -> str | None:
        """A compact ASCII str (every name compared here is one), else None."""
        layout = self.layout
        # Header and a short string's characters in one read; two near a mapping's end.
        header = self.memory.read(obj, layout.unicode_ascii_data + _SHORT_STRING)
        if header is None:
            header = self.memory.read(obj, layout.unicode_ascii_data)
        if header is None:
            return None
        cls = _word(header, layout.object_type)
        length = _word(header, layout.unicode_length)
        state = int.from_bytes(header[layout.unicode_state : layout.unicode_state + 4], "little")
        if (
            not state & layout.unicode_ascii_mask
            or not state & layout.unicode_compact_mask
            or not 0 <= length <= MAX_NAME_LENGTH
            or self.name_of_type(cls) != "str"
        ):
            return None
        start = layout.unicode_ascii_data
        if start + length <= len(header):
            return header[start : start + length].decode("ascii", "replace")
        data = self.memory.read(obj + start, length)
        return data.decode("ascii", "replace") if data is not None else None

    def small_int(self, obj: int) -> int | None:
        """A non-negative int (or int subclass) of at most 5 digits."""
        layout = self.layout
        # The header and up to 5 digits in one read, header then digits near a mapping's end.
        most = layout.long_digits + 5 * layout.long_digit_size
        raw = self.memory.read(obj, most) or self.memory.read(obj, layout.long_digits)
        if raw is None or not self.type_is_subclass(_word(raw, layout.object_type), "int", "int"):
            return None
        if layout.long_lv_tag:
            tag = _word(raw, layout.long_size)
            if tag & 3 == 2:  # negative
                return None
            digits = tag >> layout.long_non_size_bits
        else:
            digits = _word(raw, layout.long_size, signed=True)
        if not 0 <= digits <= 5:
            return None
        size = digits * layout.long_digit_size
        if len(raw) < layout.long_digits + size:
            raw = self.memory.read(obj, layout.long_digits + size) if digits else raw
            if raw is None:
                return None
        value = 0
        for i in range(digits):
            at = layout.long_digits + i * layout.long_digit_size
            digit = int.from_bytes(raw[at : at + layout.long_digit_size], "little")
            value |= digit << (layout.long_digit_bits * i)
        return value

    # dict and instance attributes

    def dict_value(self, obj: int, name: str, limit: int = MAX_DICT_ENTRIES) -> int | None:
        """The value under the str key ``name`` of the dict at ``obj``, looked at key by key."""
        if self.type_name(obj) != "dict":
            return None
        return self._value_of(self.dict_items(obj, limit), name)

    def dict_items(self, obj: int, limit: int = MAX_DICT_ENTRIES) -> list[tuple[int, int]] | None:
        """(key, value) of each entry of the dict (or dict subclass) at ``obj``."""
        layout = self.layout
        # ma_keys and ma_values side by side (3.9-3.13), in one read
        pair = self.memory.pointers(obj + layout.dict_keys, 2)
        if pair is None or layout.dict_values != layout.dict_keys + 8:
            return None
        keys, values = pair
        if not keys:
            return None
        return self._keys_items(keys, values, limit)

    def attribute(self, obj: int, name: str) -> int | None:
        """An instance attribute, from the object's own __dict__ or inline values."""
        memory, layout = self.memory, self.layout
        cls = memory.pointer(obj + layout.object_type)
        if not cls or not plausible_pointer(cls):
            return None
        flags = memory.pointer(cls + layout.type_flags)
        if flags is None:
            return None
        if flags & layout.tpflags_managed_dict and layout.managed_dict_offset is not None:
            items = self._managed_items(obj, cls, flags, layout.managed_dict_offset)
        else:
            offset = memory.ssize(cls + layout.type_dictoffset)
            if offset is None or offset <= 0:
                return None
            instance_dict = memory.pointer(obj + offset)
            items = self.dict_items(instance_dict) if instance_dict else None
        return self._value_of(items, name)

    def _managed_items(
        self, obj: int, cls: int, flags: int, dict_offset: int
    ) -> list[tuple[int, int]] | None:
        """3.11+: the items of a managed __dict__, or of the values stored without one."""
        memory, layout = self.memory, self.layout
        word = memory.pointer(obj + dict_offset)
        if word is None:
            return None
        values = 0
        if layout.managed_values_tagged:
            # 3.12: one word holds either the dict or the values pointer minus one.
            values, word = (word + 1, 0) if word & 1 else (0, word)
        elif layout.managed_values_offset is not None:
            values = memory.pointer(obj + layout.managed_values_offset) or 0
        elif not word and flags & layout.tpflags_inline_values:
            values = self._inline_values(obj, cls) or 0
        if word:
            return self.dict_items(word)
        if values:
            keys = memory.pointer(cls + layout.heaptype_cached_keys)
            return self._keys_items(keys, values) if keys else None
        return None

    def _inline_values(self, obj: int, cls: int) -> int | None:
        """3.13: the values embedded after the object, when still valid."""
        basicsize = self.memory.ssize(cls + self.layout.type_basicsize)
        if basicsize is None or not 0 < basicsize <= 1024 or self.layout.values_valid is None:
            return None
        values = obj + basicsize
        return values if self.memory.u8(values + self.layout.values_valid) else None

    def _value_of(self, items: list[tuple[int, int]] | None, name: str) -> int | None:
        return next((value for key, value in items or [] if self.ascii(key) == name), None)

    def _keys_items(
        self, keys: int, values: int, limit: int = MAX_DICT_ENTRIES
    ) -> list[tuple[int, int]] | None:
        """(key, value) of each entry of a dict keys object; split values come from ``values``."""
        memory, layout = self.memory, self.layout
        header = memory.read(keys, layout.keys_indices)  # the keys object up to its indices
        if header is None:
            return None
        count = _word(header, layout.keys_nentries, signed=True)
        if not 0 <= count <= limit:
            return None
        entry = self._entry_layout(header)
        if entry is None:
            return None
        index_bytes, entry_size, key_at, value_at = entry
        if count == 0:
            return []
        # All entries, and all split values, in as few reads as their size allows.
        raw = memory.read_table(keys + layout.keys_indices + index_bytes, count * entry_size)
        table = memory.read_table(values + layout.values_items, 8 * count) if values else b""
        if raw is None or table is None:
            return None
        split = struct.unpack(f"<{count}Q", table) if values else None
        items = []
        for i in range(count):
            key = _word(raw, i * entry_size + key_at)
            value = split[i] if split is not None else _word(raw, i * entry_size + value_at)
            if key and value:
                items.append((key, value))
        return items

    def _entry_layout(self, header: bytes) -> tuple[int, int, int, int] | None:
        """Size of the indices, then size, key and value offsets of an entry, from the header."""
        layout = self.layout
        general = (layout.entry_size, layout.entry_key, layout.entry_value)
        if layout.keys_size is not None:  # 3.9, 3.10
            size = _word(header, layout.keys_size, signed=True)
            if not 0 < size <= 1 << 16 or size & (size - 1):
                return None
            return (size * (1 if size <= 0xFF else 2 if size <= 0xFFFF else 4), *general)
        log2_index_bytes = header[layout.keys_log2_index_bytes or 0]
        if log2_index_bytes > 20:
            return None
        if header[layout.keys_kind or 0] == layout.keys_kind_general:
            return (1 << log2_index_bytes, *general)
        return (
            1 << log2_index_bytes,
            layout.unicode_entry_size or 0,
            layout.unicode_entry_key or 0,
            layout.unicode_entry_value or 0,
        )


__all__ = ["MAX_DICT_ENTRIES", "ObjectReader"]
