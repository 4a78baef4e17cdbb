"""Frame offsets of CPython 3.11 and 3.12, which publish none: generated, then checked.

Before 3.13 an interpreter says nothing of its own layout, so the frame
reader takes it from the layout generated from that version's headers
(``process.cpython``, scripts/gen_cpython_offsets.py), as the context reader
does. A build whose structs differ from those headers would be read wrong,
so the layout is first checked against what the running interpreter says of
itself: its version (``Py_Version``), the sizes its code, str and bytes types
give their objects (``tp_basicsize``; a code object's is where its bytecode
starts), and a thread state of one of its threads where the layout puts it.
A mismatch raises UnsupportedInterpreterError saying which: no stack, never a
wrong one. Each read then checks every object's type, as on 3.13+.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from otel_blocksnoop.process.context.interpreter import UnsupportedInterpreterError
from otel_blocksnoop.process.context.threads import ThreadStates
from otel_blocksnoop.process.cpython import CPythonLayout, layout_for
from otel_blocksnoop.process.frames.debug_offsets import DebugOffsets, VersionConstants
from otel_blocksnoop.process.frames.runtime import Runtime
from otel_blocksnoop.process.remote_memory import RemoteMemory

_FRAME_FIELDS = (
    "tstate_cframe",
    "cframe_current_frame",
    "frame_size",
    "frame_previous",
    "frame_code",
    "frame_prev_instr",
    "frame_owner",
    "code_size",
    "code_filename",
    "code_name",
    "code_qualname",
    "code_linetable",
    "code_firstlineno",
    "code_adaptive",
    "code_unit_size",
    "bytes_ob_size",
    "bytes_sval",
    "unicode_compact_size",
    "unicode_object_size",
    "unicode_kind_shift",
)
"""What a layout must have for frames (only 3.11's and 3.12's do)."""


def frame_offsets(layout: CPythonLayout) -> DebugOffsets:
    """The frame reader's offsets from a generated layout, unchecked.

    Raises UnsupportedInterpreterError when the layout has no frame fields.
    """
    values = {name: getattr(layout, name) for name in _FRAME_FIELDS}
    missing = [name for name, value in values.items() if value is None]
    if missing or layout.tstate_native_thread_id is None:
        major, minor = layout.version
        msg = f"no generated frame layout for CPython {major}.{minor}"
        raise UnsupportedInterpreterError(msg)
    v = {name: value for name, value in values.items() if value is not None}
    owners = set() if layout.frame_owner_cstack is None else {layout.frame_owner_cstack}
    constants = VersionConstants(
        owner_skipped=frozenset(owners),
        executable_tag_mask=0,
        unicode_kind_shift=v["unicode_kind_shift"],
        unicode_compact_bit=layout.unicode_compact_mask,
        unicode_ascii_bit=layout.unicode_ascii_mask,
        unicode_compact_extra=v["unicode_compact_size"] - layout.unicode_ascii_data,
        first_instr_unit=-1,
    )
    return DebugOffsets(
        version=layout.version,
        hex_version=0,
        runtime_interpreters_head=layout.runtime_interpreters_head,
        interp_next=layout.interp_next,
        interp_threads_head=layout.interp_threads_head,
        tstate_next=layout.tstate_next,
        tstate_interp=layout.tstate_interp,
        tstate_current_frame=v["cframe_current_frame"],
        tstate_thread_id=layout.tstate_thread_id,
        tstate_native_thread_id=layout.tstate_native_thread_id,
        frame_size=v["frame_size"],
        frame_previous=v["frame_previous"],
        frame_executable=v["frame_code"],
        frame_instr_ptr=v["frame_prev_instr"],
        frame_owner=v["frame_owner"],
        code_size=v["code_size"],
        code_filename=v["code_filename"],
        code_name=v["code_name"],
        code_qualname=v["code_qualname"],
        code_linetable=v["code_linetable"],
        code_firstlineno=v["code_firstlineno"],
        code_adaptive=v["code_adaptive"],
        object_type=layout.object_type,
        bytes_ob_size=v["bytes_ob_size"],
        bytes_sval=v["bytes_sval"],
        unicode_state=layout.unicode_state,
        unicode_length=layout.unicode_length,
        unicode_ascii_size=layout.unicode_ascii_data,
        constants=constants,
        tstate_cframe=v["tstate_cframe"],
    )


def layout_offsets(memory: RemoteMemory, runtime: Runtime, tids: Collection[int]) -> DebugOffsets:
    """The checked offsets of a CPython 3.11 or 3.12 target whose threads have ``tids``.

    ``tids`` as the target's thread states hold them (its own PID namespace's).
    Raises UnsupportedInterpreterError, saying why, when the version has no
    generated layout or the running interpreter does not fit it.
    """
    major, minor = runtime.version
    layout = layout_for(major, minor)
    if layout is None:
        msg = f"no generated layout for CPython {major}.{minor}"
        raise UnsupportedInterpreterError(msg)
    offsets = frame_offsets(layout)
    name = f"the CPython {major}.{minor} layout"
    if runtime.py_version is None:
        msg = "the interpreter has no Py_Version symbol to check its layout by"
        raise UnsupportedInterpreterError(msg)
    hex_version = memory.u32(runtime.py_version)
    if hex_version is None:
        msg = "cannot read Py_Version"
        raise UnsupportedInterpreterError(msg)
    if (hex_version >> 24, hex_version >> 16 & 0xFF) != runtime.version:
        msg = f"Py_Version says {hex_version >> 24}.{hex_version >> 16 & 0xFF}, not {major}.{minor}"
        raise UnsupportedInterpreterError(msg)
    for what, type_object, expected in (
        ("code", runtime.code_type, offsets.code_adaptive),
        ("str", runtime.unicode_type, layout.unicode_object_size),
        ("bytes", runtime.bytes_type, offsets.bytes_sval + 1),
    ):
        size = memory.ssize(type_object + layout.type_basicsize)
        if size != expected:
            msg = (
                f"{name} does not fit this interpreter: its {what} objects are "
                f"{'unreadable' if size is None else f'{size} bytes'}, the layout's {expected}"
            )
            raise UnsupportedInterpreterError(msg)
    if not ThreadStates(memory, offsets, runtime.runtime).any_of(set(tids)):
        msg = f"{name} does not fit this interpreter: no thread state of its threads where it says"
        raise UnsupportedInterpreterError(msg)
    return replace(offsets, hex_version=hex_version)


__all__ = ["frame_offsets", "layout_offsets"]
