"""What CPython says of its own layout at run time, checked against the layout generated for it.

Two places, both meant for readers outside the process (``python -m asyncio
ps PID`` uses them):

- ``_Py_DebugOffsets`` (3.13+) at the start of ``_PyRuntime``: the cookie,
  ``PY_VERSION_HEX``, whether the build is free-threaded, and the sizes and
  offsets of the runtime, interpreter and thread states, objects, types, str,
  tuple (and from 3.14 int and dict). It has no entry for the thread's
  context or the HAMT, so the generated layout is still needed: each of its
  fields that the interpreter also publishes must agree with it
  (``CPythonLayout.debug_checks`` says where each sits), and the struct
  sizes catch a build whose fields moved where nothing is published (Debian
  builds 3.14 and 3.15 with the JIT, which changes them).
- ``Py_AsyncioModuleDebugOffsets`` (3.14+), the ``.AsyncioDebug`` section of
  the ``_asyncio`` extension, or of the interpreter where it is built in
  (Debian's 3.15): where a thread state keeps its running task, and where a
  Task keeps its name, its coroutine and who awaits it. From 3.14 the running task is no longer
  in ``asyncio.tasks._current_tasks`` but in each thread state.

A disagreement is a reason not to read the target at all: no link rather
than a wrong one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from otel_blocksnoop.process.cpython import CPythonLayout
from otel_blocksnoop.process.elf import ElfError, ElfSymbols, Mapping, mapped_file
from otel_blocksnoop.process.remote_memory import RemoteMemory

DEBUG_COOKIE = b"xdebugpy"
"""_Py_Debug_Cookie (Include/internal/pycore_runtime.h, 3.13+)."""

ASYNCIO_SECTION = ".AsyncioDebug"
ASYNCIO_FIRST_VERSION = (3, 14)

# Py_AsyncioModuleDebugOffsets, Modules/_asynciomodule.c (3.14 and 3.15 alike):
# in no installed header, so its shape is mirrored here, and checked by its size
# and by the fields the generated layout measured too.
_ASYNCIO_WORDS = (
    "task_size",  # asyncio_task_object: sizeof(TaskObj)
    "task_name",
    "task_awaited_by",
    "task_is_task",
    "task_awaited_by_is_set",
    "task_coro",
    "task_node",
    "interp_size",  # asyncio_interpreter_state: sizeof(PyInterpreterState)
    "interp_tasks_head",
    "tstate_size",  # asyncio_thread_state: sizeof(_PyThreadStateImpl)
    "tstate_running_loop",
    "tstate_running_task",
    "tstate_tasks_head",
)
_ASYNCIO_STRUCT = struct.Struct(f"<{len(_ASYNCIO_WORDS)}Q")


class PublishedMismatchError(Exception):
    """What the interpreter publishes disagrees with our layout, or is not there; says how."""


@dataclass(frozen=True, slots=True)
class AsyncioOffsets:
    """Where a 3.14+ interpreter keeps a thread's running task and loop, and a task's fields.

    And who awaits a task: ``task_awaited_by`` holds one task (or future), or a
    set of them when the byte at ``task_awaited_by_is_set`` is 1.
    """

    tstate_running_task: int  # in the thread state (_PyThreadStateImpl)
    task_size: int  # sizeof(TaskObj), the basic size of _asyncio.Task
    task_name: int
    task_coro: int
    tstate_running_loop: int = 0  # in the thread state too (0: not known)
    task_awaited_by: int = 0  # 0: not known (the awaited-by chain is not read)
    task_awaited_by_is_set: int = 0


def check_debug_offsets(memory: RemoteMemory, layout: CPythonLayout, runtime: int) -> None:
    """Raise PublishedMismatchError unless ``_Py_DebugOffsets`` at ``runtime`` agrees with us.

    Nothing to check before 3.13 (``layout.runtime_debug_offsets`` is None).
    """
    if layout.runtime_debug_offsets is None:
        return
    start = runtime + layout.runtime_debug_offsets
    if memory.read(start, len(DEBUG_COOKIE)) != DEBUG_COOKIE:
        msg = "_PyRuntime does not start with the _Py_DebugOffsets cookie"
        raise PublishedMismatchError(msg)
    hex_version = memory.pointer(start + (layout.debug_offsets_version or 0))
    if hex_version is None:
        msg = "_PyRuntime does not start with the _Py_DebugOffsets cookie"
        raise PublishedMismatchError(msg)
    if (hex_version >> 24, hex_version >> 16 & 0xFF) != layout.version:
        msg = f"_Py_DebugOffsets says {hex_version >> 24}.{hex_version >> 16 & 0xFF}"
        raise PublishedMismatchError(msg)
    if memory.pointer(start + (layout.debug_offsets_free_threaded or 0)):
        msg = "a free-threaded build"
        raise PublishedMismatchError(msg)
    for name, at in layout.debug_checks:
        theirs = memory.pointer(start + at)
        ours = getattr(layout, name)
        if theirs != ours:
            major, minor = layout.version
            msg = (
                f"this CPython {major}.{minor} was built otherwise than the one its layout"
                f" was generated from ({name}: {theirs}, expected {ours})"
            )
            raise PublishedMismatchError(msg)


def asyncio_offsets(elf: ElfSymbols, layout: CPythonLayout) -> AsyncioOffsets | None:
    """The ``.AsyncioDebug`` offsets in ``elf``, checked against ``layout``; None if it has none.

    Raises PublishedMismatchError when they are there and disagree.
    """
    raw = elf.section(ASYNCIO_SECTION)
    if raw is None:
        return None
    if len(raw) != _ASYNCIO_STRUCT.size:
        msg = f"{ASYNCIO_SECTION} holds {len(raw)} bytes, not {_ASYNCIO_STRUCT.size}"
        raise PublishedMismatchError(msg)
    value = dict(zip(_ASYNCIO_WORDS, _ASYNCIO_STRUCT.unpack(raw), strict=True))
    expected = {
        "task_size": layout.task_basicsize,
        "task_name": layout.task_name,
        "task_coro": layout.task_coro,
        "interp_size": layout.interp_size,
    }
    for name, ours in expected.items():
        if value[name] != ours:
            msg = (
                f"{ASYNCIO_SECTION} disagrees with the generated layout"
                f" ({name}: {value[name]}, expected {ours})"
            )
            raise PublishedMismatchError(msg)
    # The running task and loop are in the thread state's private part, after the public
    # PyThreadState.
    for name, what in (("tstate_running_task", "task"), ("tstate_running_loop", "loop")):
        if not layout.tstate_size <= value[name] < value["tstate_size"]:
            msg = f"{ASYNCIO_SECTION} puts the running {what} at {value[name]}"
            raise PublishedMismatchError(msg)
    # Who awaits a task: a pointer, and the byte saying whether it is a set, inside the task.
    awaited_by, is_set = value["task_awaited_by"], value["task_awaited_by_is_set"]
    if not (8 <= awaited_by <= value["task_size"] - 8 and 8 <= is_set < value["task_size"]):
        msg = f"{ASYNCIO_SECTION} puts a task's awaiters at {awaited_by} (set flag {is_set})"
        raise PublishedMismatchError(msg)
    return AsyncioOffsets(
        tstate_running_task=value["tstate_running_task"],
        task_size=value["task_size"],
        task_name=value["task_name"],
        task_coro=value["task_coro"],
        tstate_running_loop=value["tstate_running_loop"],
        task_awaited_by=awaited_by,
        task_awaited_by_is_set=is_set,
    )


def asyncio_module_offsets(
    pid: int, mappings: list[Mapping], layout: CPythonLayout
) -> AsyncioOffsets | None:
    """The offsets of the ``_asyncio`` extension ``pid`` has loaded, if it has loaded one.

    Raises PublishedMismatchError when they disagree with ``layout``, OSError
    when the file cannot be opened.
    """
    for mapping in mappings:
        name = Path(mapping.path).name
        if mapping.offset != 0 or not (name.startswith("_asyncio.") and name.endswith(".so")):
            continue
        try:
            with ElfSymbols(mapped_file(pid, mapping)) as elf:
                return asyncio_offsets(elf, layout)
        except (ElfError, ValueError) as error:
            msg = f"cannot read {mapping.path}: {error}"
            raise PublishedMismatchError(msg) from error
    return None


__all__ = [
    "ASYNCIO_FIRST_VERSION",
    "ASYNCIO_SECTION",
    "DEBUG_COOKIE",
    "AsyncioOffsets",
    "PublishedMismatchError",
    "asyncio_module_offsets",
    "asyncio_offsets",
    "check_debug_offsets",
]
