"""CPython struct layouts per minor version, for reading another process's memory.

The per-version modules (``v3_9`` ... ``v3_15``) are written by
scripts/gen_cpython_offsets.py from each interpreter's own headers (and, from
3.14, the build flags of the interpreter they were made for); this module
holds the record they fill and the one place that picks a layout by version.
Offsets are in bytes from the start of the struct; ``None`` marks a field the
version does not have.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

SUPPORTED_VERSIONS: tuple[tuple[int, int], ...] = (
    (3, 9),
    (3, 10),
    (3, 11),
    (3, 12),
    (3, 13),
    (3, 14),
    (3, 15),
)
"""The CPython versions with a generated layout: listed here only."""


@dataclass(frozen=True)
class CPythonLayout:
    """What the context reader needs to know about one CPython minor version."""

    version: tuple[int, int]
    # sizeof(_PyRuntimeState), sizeof(PyInterpreterState), sizeof(PyThreadState): from 3.13
    # the running interpreter says its own (_Py_DebugOffsets), and they must agree
    runtime_size: int
    interp_size: int
    tstate_size: int
    # _PyRuntime -> interpreters -> thread states
    runtime_interpreters_head: int
    # 3.13+: _PyRuntime starts with _Py_DebugOffsets ("xdebugpy", PY_VERSION_HEX, ...)
    runtime_debug_offsets: int | None
    debug_offsets_version: int | None
    debug_offsets_free_threaded: int | None
    interp_next: int
    interp_threads_head: int
    tstate_next: int
    tstate_interp: int
    tstate_thread_id: int
    tstate_native_thread_id: int | None
    tstate_context: int
    # sys.modules, module dicts, coroutines and asyncio's C Task (for the running task)
    interp_modules: int
    module_dict: int
    coro_qualname: int
    task_basicsize: int
    task_coro: int
    task_name: int
    task_context: int
    # objects and types
    object_type: int
    var_size: int
    type_name: int
    type_flags: int
    type_base: int
    type_basicsize: int
    type_dictoffset: int
    heaptype_cached_keys: int
    # instance dicts: managed (3.11+), tagged values pointer (3.12), inline values (3.13)
    tpflags_managed_dict: int
    managed_dict_offset: int | None
    managed_values_offset: int | None
    managed_values_tagged: int
    tpflags_inline_values: int
    values_valid: int | None
    values_items: int
    # str (compact ASCII only)
    unicode_length: int
    unicode_state: int
    unicode_ascii_data: int
    unicode_ascii_mask: int
    unicode_compact_mask: int
    # tuple
    tuple_items: int
    # int
    long_size: int
    long_digits: int
    long_lv_tag: int
    long_non_size_bits: int
    long_digit_bits: int
    long_digit_size: int
    # dict
    dict_used: int
    dict_keys: int
    dict_values: int
    keys_size: int | None
    keys_log2_size: int | None
    keys_log2_index_bytes: int | None
    keys_kind: int | None
    keys_kind_general: int | None
    unicode_entry_size: int | None
    unicode_entry_key: int | None
    unicode_entry_value: int | None
    keys_nentries: int
    keys_indices: int
    entry_size: int
    entry_key: int
    entry_value: int
    # set (3.14+: a task's awaited-by set)
    set_used: int
    set_mask: int
    set_table: int
    set_entry_size: int
    set_entry_key: int
    # contextvars and their HAMT
    context_vars: int
    contextvar_name: int
    contextvar_hash: int
    hamt_root: int
    bitmap_bitmap: int
    bitmap_array: int
    array_array: int
    array_count: int
    collision_array: int
    # 3.11 and 3.12 frames, for the frame reader (3.13+ publish theirs: frames.debug_offsets):
    # thread state -> _PyCFrame -> current _PyInterpreterFrame -> previous ...; prev_instr is
    # the instruction last started (one before the first, in a frame not yet started); frames
    # owned by the C stack (3.12) are the eval loop's entry shims, no Python code
    tstate_cframe: int | None
    cframe_current_frame: int | None
    frame_size: int | None
    frame_previous: int | None
    frame_code: int | None
    frame_prev_instr: int | None
    frame_owner: int | None
    frame_owner_cstack: int | None
    code_size: int | None
    code_filename: int | None
    code_name: int | None
    code_qualname: int | None
    code_linetable: int | None
    code_firstlineno: int | None
    code_adaptive: int | None  # also PyCode_Type's tp_basicsize: checked in the target
    code_unit_size: int | None
    bytes_ob_size: int | None
    bytes_sval: int | None  # PyBytes_Type's tp_basicsize is one more: checked
    unicode_compact_size: int | None  # sizeof(PyCompactUnicodeObject): where UCS-1/2/4 text starts
    unicode_object_size: int | None  # PyUnicode_Type's tp_basicsize: checked
    unicode_kind_shift: int | None
    # 3.13+: (field, where _Py_DebugOffsets keeps the running interpreter's value of it),
    # for each field of ours it also publishes: a target whose values differ was built
    # otherwise than the headers these offsets came from, and is not read
    debug_checks: tuple[tuple[str, int], ...]


def layout_for(major: int, minor: int) -> CPythonLayout | None:
    """The generated layout of CPython major.minor, or None when it has none."""
    if (major, minor) not in SUPPORTED_VERSIONS:
        return None
    module = importlib.import_module(f"otel_blocksnoop.process.cpython.v{major}_{minor}")
    layout: CPythonLayout = module.LAYOUT
    return layout
