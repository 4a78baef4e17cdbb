"""``_Py_DebugOffsets``: the offsets CPython 3.13+ publishes at the start of ``_PyRuntime``.

They are read from the target at run time, so the frame reader needs no
header of the interpreter it watches (and follows builds whose structs differ,
such as Debian's 3.15 with its JIT). What is version-specific here is only
where each field sits inside ``_Py_DebugOffsets`` itself (the struct grows
from one minor version to the next) and a few constants it does not carry,
generated from each version's headers into ``debug_shapes``: adding a version
is adding it to scripts/gen_debug_offsets.py's ``VERSIONS`` and running it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from otel_blocksnoop.process.context.interpreter import DEBUG_COOKIE, UnsupportedInterpreterError
from otel_blocksnoop.process.frames.debug_shapes import FREE_THREADED_SHAPES, SHAPES
from otel_blocksnoop.process.remote_memory import MAX_READ, RemoteMemory


@dataclass(frozen=True, slots=True)
class VersionConstants:
    """What a version's frame reader needs that ``_Py_DebugOffsets`` does not say."""

    owner_skipped: frozenset[int]  # frame owners that are not Python frames (the C stack's shims)
    executable_tag_mask: int  # bits of f_executable that are tags, not address (a _PyStackRef)
    unicode_kind_shift: int  # where PyASCIIObject.state keeps the kind (1, 2 or 4 bytes a char)
    unicode_compact_bit: int
    unicode_ascii_bit: int
    unicode_compact_extra: int  # from a str's ASCII header to where a non-ASCII one's text starts
    first_instr_unit: int = 0
    """The lowest code unit a frame's instruction pointer may be at: -1 on 3.11 and 3.12,
    whose ``prev_instr`` is the instruction last started (one before the first in a
    frame not started yet), 0 from 3.13 (``instr_ptr``, the one running)."""


_CONSTANT_NAMES = frozenset(
    {
        "owner_cstack",
        "owner_interpreter",
        "executable_tag_mask",
        "unicode_kind_shift",
        "unicode_compact_bit",
        "unicode_ascii_bit",
        "unicode_compact_extra",
    }
)

SUPPORTED_VERSIONS = tuple(sorted(SHAPES))
"""Minor versions whose _Py_DebugOffsets this reader knows the shape of (debug_shapes)."""
FREE_THREADED_VERSIONS = tuple(sorted(FREE_THREADED_SHAPES))
"""Those whose free-threaded build's it knows too (its str bits and stackref tags differ)."""
_TLBC_NAMES = ("frame_tlbc_index", "code_tlbc")


def _constants(shape: dict[str, int]) -> VersionConstants:
    owners = {shape["owner_cstack"], shape.get("owner_interpreter", shape["owner_cstack"])}
    return VersionConstants(
        owner_skipped=frozenset(owners),
        executable_tag_mask=shape["executable_tag_mask"],
        unicode_kind_shift=shape["unicode_kind_shift"],
        unicode_compact_bit=shape["unicode_compact_bit"],
        unicode_ascii_bit=shape["unicode_ascii_bit"],
        unicode_compact_extra=shape["unicode_compact_extra"],
    )


# Bounds that any real build stays far within: a value outside is not an offset.
_MAX_STRUCT = 1 << 22
_MAX_SMALL_STRUCT = 1024


@dataclass(frozen=True, slots=True)
class DebugOffsets:
    """The fields of one target's ``_Py_DebugOffsets`` that the frame reader uses.

    The thread-state names match ``CPythonLayout``'s, so that the same thread
    state walk (``context.threads.ThreadStates``) serves both. CPython 3.11
    and 3.12 publish none: ``frames.layouts`` fills this record from their
    generated layouts instead, and ``tstate_cframe`` says where their thread
    state points to the ``_PyCFrame`` that holds ``current_frame`` (at
    ``tstate_current_frame`` in it); ``frame_executable`` is then ``f_code``,
    ``frame_instr_ptr`` ``prev_instr``.
    """

    version: tuple[int, int]
    hex_version: int
    runtime_interpreters_head: int
    interp_next: int
    interp_threads_head: int
    tstate_next: int
    tstate_interp: int
    tstate_current_frame: int
    tstate_thread_id: int
    tstate_native_thread_id: int
    frame_size: int
    frame_previous: int
    frame_executable: int
    frame_instr_ptr: int
    frame_owner: int
    code_size: int
    code_filename: int
    code_name: int
    code_qualname: int
    code_linetable: int
    code_firstlineno: int
    code_adaptive: int
    object_type: int
    bytes_ob_size: int
    bytes_sval: int
    unicode_state: int
    unicode_length: int
    unicode_ascii_size: int
    constants: VersionConstants
    tstate_cframe: int | None = None
    frame_tlbc_index: int | None = None
    """A free-threaded build's: which copy of the bytecode the frame runs (0: the code's
    own), an index into the code object's array of them at ``code_tlbc``; None elsewhere."""
    code_tlbc: int | None = None


def read_debug_offsets(
    memory: RemoteMemory, runtime: int, version: tuple[int, int], *, free_threaded: bool = False
) -> DebugOffsets:
    """The debug offsets at ``runtime`` (``_PyRuntime``) of a CPython ``version`` target.

    ``free_threaded``: the image says it is such a build (``3.14t``), whose
    constants differ; its own ``_Py_DebugOffsets`` must say so too.
    Raises UnsupportedInterpreterError, saying why, when the version (or build)
    is not one this reader knows, the cookie, version or build differ from what
    was expected, or any offset is implausible: better no stack than a wrong one.
    """
    shape = (FREE_THREADED_SHAPES if free_threaded else SHAPES).get(version)
    if shape is None:
        known = ", ".join(
            f"{a}.{b}" for a, b in (FREE_THREADED_VERSIONS if free_threaded else SUPPORTED_VERSIONS)
        )
        build = "free-threaded " if free_threaded else ""
        msg = (
            f"no _Py_DebugOffsets shape for {build}CPython {version[0]}.{version[1]} "
            f"(known: {known or 'none'})"
        )
        raise UnsupportedInterpreterError(msg)
    fields = {name: index for name, index in shape.items() if name not in _CONSTANT_NAMES}
    size = 8 * (max(fields.values()) + 1)
    raw = memory.read(runtime, size) if size <= MAX_READ else None
    if raw is None:
        msg = "cannot read _Py_DebugOffsets at _PyRuntime"
        raise UnsupportedInterpreterError(msg)
    if raw[:8] != DEBUG_COOKIE:
        msg = "_PyRuntime does not start with the _Py_DebugOffsets cookie"
        raise UnsupportedInterpreterError(msg)
    words = struct.unpack(f"<{size // 8}Q", raw)
    value = {name: words[index] for name, index in fields.items()}
    return _checked(value, version, _constants(shape), free_threaded=free_threaded)


def _checked(
    value: dict[str, int],
    version: tuple[int, int],
    constants: VersionConstants,
    *,
    free_threaded: bool,
) -> DebugOffsets:
    hex_version = value["version"]
    found = (hex_version >> 24, hex_version >> 16 & 0xFF)
    if found != version:
        msg = f"_Py_DebugOffsets says {found[0]}.{found[1]}, the image {version[0]}.{version[1]}"
        raise UnsupportedInterpreterError(msg)
    if bool(value["free_threaded"]) != free_threaded:
        if free_threaded:
            msg = "_Py_DebugOffsets says a build with a GIL, its file a free-threaded one"
        else:
            msg = "_Py_DebugOffsets says a free-threaded build, its file one with a GIL"
        raise UnsupportedInterpreterError(msg)
    # Each struct's fields must lie inside it, and the small structs be small.
    within = {
        "runtime_size": ("runtime_interpreters_head",),
        "interp_size": ("interp_next", "interp_threads_head"),
        "tstate_size": (
            "tstate_next",
            "tstate_interp",
            "tstate_current_frame",
            "tstate_thread_id",
            "tstate_native_thread_id",
        ),
        "frame_size": (
            "frame_previous",
            "frame_executable",
            "frame_instr_ptr",
            "frame_owner",
            *(name for name in _TLBC_NAMES[:1] if name in value),
        ),
        "code_size": (
            "code_filename",
            "code_name",
            "code_qualname",
            "code_linetable",
            "code_firstlineno",
            "code_adaptive",
            *(name for name in _TLBC_NAMES[1:] if name in value),
        ),
        "object_size": ("object_type",),
        "bytes_size": ("bytes_ob_size", "bytes_sval"),
        "unicode_size": ("unicode_state", "unicode_length", "unicode_ascii_size"),
    }
    for size_name, names in within.items():
        size = value[size_name]
        small = size_name not in ("runtime_size", "interp_size")
        if not 0 < size <= (_MAX_SMALL_STRUCT if small else _MAX_STRUCT):
            msg = f"_Py_DebugOffsets has an implausible {size_name} ({size})"
            raise UnsupportedInterpreterError(msg)
        outside = next((name for name in names if value[name] >= size), None)
        if outside is not None:
            msg = f"_Py_DebugOffsets puts {outside} at {value[outside]}, past its struct ({size})"
            raise UnsupportedInterpreterError(msg)
    return DebugOffsets(
        version=version,
        hex_version=hex_version,
        constants=constants,
        **{name: value[name] for name in _OFFSET_NAMES},
        **{name: value[name] for name in _TLBC_NAMES if name in value},
    )


_OFFSET_NAMES = tuple(
    name
    for name in DebugOffsets.__dataclass_fields__
    if name not in ("version", "hex_version", "constants", "tstate_cframe", *_TLBC_NAMES)
)

__all__ = [
    "FREE_THREADED_VERSIONS",
    "SUPPORTED_VERSIONS",
    "DebugOffsets",
    "VersionConstants",
    "read_debug_offsets",
]
