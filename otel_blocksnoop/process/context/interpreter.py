"""Finding the target's interpreter: its image, CPython version, layout and ``_PyRuntime``.

Done once per process. The version comes from the image's name (libpython
if mapped, else the executable) or, where the name has none, from the file
itself; ``_PyRuntime`` from its ELF symbols; and both are checked against
what the interpreter says in its memory where it can (``Py_Version`` on
3.11+, ``_Py_DebugOffsets`` on 3.13+, which must also agree with the
generated layout: ``published``). On 3.14+ an ``_asyncio`` built into the
image says where the running task is (``.AsyncioDebug``). Anything this
reader does not know raises ``UnsupportedInterpreterError``, saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from otel_blocksnoop.process.context.published import (
    ASYNCIO_FIRST_VERSION,
    DEBUG_COOKIE,
    AsyncioOffsets,
    PublishedMismatchError,
    asyncio_offsets,
    check_debug_offsets,
)
from otel_blocksnoop.process.context.threads import ThreadStates, pthread_tid_offset
from otel_blocksnoop.process.cpython import SUPPORTED_VERSIONS, CPythonLayout, layout_for
from otel_blocksnoop.process.elf import (
    ElfError,
    ElfSymbols,
    Mapping,
    file_mappings,
    load_base,
    mapped_file,
)
from otel_blocksnoop.process.pidns import NamespaceIds
from otel_blocksnoop.process.pythons import VersionError, file_version, not_known, python_name
from otel_blocksnoop.process.remote_memory import RemoteMemory


class UnsupportedInterpreterError(Exception):
    """The target's interpreter cannot be read by this reader; the message says why."""


@dataclass(frozen=True, slots=True)
class Interpreter:
    """Where a target's interpreter is, and how to read it."""

    layout: CPythonLayout
    runtime: int  # the address of _PyRuntime
    image: tuple[tuple[int, int], ...] = ()  # where its file is mapped (its static types)
    tid_offset: int | None = None  # 3.9/3.10: glibc's TID offset in struct pthread
    asyncio: AsyncioOffsets | None = None  # 3.14+, when _asyncio is built into the image


@dataclass(frozen=True, slots=True)
class Image:
    """The file a target's interpreter runs from (libpython if mapped, else the executable)."""

    path: str
    version: tuple[int, int]
    free_threaded: bool
    mappings: list[Mapping]  # every file mapping of the process


def interpreter_image(pid: int) -> Image:
    """Which file of ``pid`` is its CPython, and which version it is.

    The version is the one its name says or, where the name has none
    (``python3`` of a venv made with ``--copies``, a renamed interpreter),
    the one the file itself says (``pythons.file_version``).
    UnsupportedInterpreterError when neither gives one, or they disagree;
    OSError when the process cannot be inspected.
    """
    mappings = file_mappings(pid)
    exe = str(Path(f"/proc/{pid}/exe").readlink())
    libpython = next((m.path for m in mappings if "libpython" in Path(m.path).name), None)
    path = libpython or exe
    try:
        if (name := python_name(path)) is not None and name.version is not None:
            found = file_version(path, None)
        else:
            with _open_to_learn(pid, path, mappings) as elf:
                found = file_version(path, elf)
    except VersionError as error:
        raise UnsupportedInterpreterError(str(error)) from error
    return Image(path, found.version, found.free_threaded, mappings)


def _open_to_learn(pid: int, path: str, mappings: list[Mapping]) -> ElfSymbols:
    """The file of an image whose name says no version: unreadable, it is no CPython known.

    So is the executable of a process caught in its exec, not mapped yet.
    """
    try:
        return _open(pid, path, mappings)
    except UnsupportedInterpreterError as error:
        raise UnsupportedInterpreterError(f"{not_known(path)}: {error}") from error


def open_image(pid: int, image: Image) -> ElfSymbols:
    """The interpreter's file, opened as the process sees it (its root, else map_files)."""
    return _open(pid, image.path, image.mappings)


def _open(pid: int, path: str, mappings: list[Mapping]) -> ElfSymbols:
    mapping = next((m for m in mappings if m.path == path and m.offset == 0), None)
    if mapping is None:
        raise UnsupportedInterpreterError(f"{path} is not mapped from its start")
    try:
        return ElfSymbols(mapped_file(pid, mapping))
    except (ElfError, ValueError, FileNotFoundError) as error:
        raise UnsupportedInterpreterError(str(error)) from error


def find_interpreter(memory: RemoteMemory) -> Interpreter:
    """The interpreter of ``memory``'s process (OSError: the process cannot be inspected)."""
    pid = memory.pid
    image = interpreter_image(pid)
    if image.free_threaded:
        raise UnsupportedInterpreterError(f"{image.path} is a free-threaded build")
    layout = layout_for(*image.version)
    if layout is None:
        supported = ", ".join(f"{a}.{b}" for a, b in SUPPORTED_VERSIONS)
        major, minor = image.version
        raise UnsupportedInterpreterError(f"CPython {major}.{minor} (supported: {supported})")
    with open_image(pid, image) as elf:
        return _at_runtime(memory, layout, elf, image.mappings, image.path)


def _at_runtime(
    memory: RemoteMemory,
    layout: CPythonLayout,
    elf: ElfSymbols,
    mappings: list[Mapping],
    image: str,
) -> Interpreter:
    runtime = elf.symbol("_PyRuntime")
    base = load_base(mappings, image, elf)
    if runtime is None or base is None:
        raise UnsupportedInterpreterError(f"{image} has no _PyRuntime symbol (stripped or static)")
    mismatch = _version_mismatch(memory, layout, elf, base)
    if mismatch is not None:
        raise UnsupportedInterpreterError(mismatch)
    try:
        check_debug_offsets(memory, layout, base + runtime)
        asyncio = asyncio_offsets(elf, layout) if layout.version >= ASYNCIO_FIRST_VERSION else None
    except PublishedMismatchError as error:
        raise UnsupportedInterpreterError(str(error)) from error
    found = Interpreter(
        layout=layout,
        runtime=base + runtime,
        image=tuple((m.start, m.end) for m in mappings if m.path == image),
        asyncio=asyncio,
    )
    if layout.tstate_native_thread_id is not None:
        return found
    tid_offset = pthread_tid_offset()
    if tid_offset is None:
        raise UnsupportedInterpreterError("cannot find the TID in glibc's struct pthread")
    tids = set(NamespaceIds().sidecar_tids(memory.pid))  # as the app's thread states hold them
    if not ThreadStates(memory, layout, found.runtime, tid_offset).any_of(tids):
        raise UnsupportedInterpreterError("no thread state maps to a TID (another glibc?)")
    return replace(found, tid_offset=tid_offset)


def _version_mismatch(
    memory: RemoteMemory, layout: CPythonLayout, elf: ElfSymbols, base: int
) -> str | None:
    """3.11+ has Py_Version (PY_VERSION_HEX): in memory it must agree with the version found."""
    symbol = elf.symbol("Py_Version")
    hex_version = memory.u32(base + symbol) if symbol is not None else None
    if hex_version is None:
        return None
    found = (hex_version >> 24, hex_version >> 16 & 0xFF)
    return None if found == layout.version else f"Py_Version says {found[0]}.{found[1]}"


__all__ = [
    "DEBUG_COOKIE",
    "Image",
    "Interpreter",
    "UnsupportedInterpreterError",
    "find_interpreter",
    "interpreter_image",
    "open_image",
]
