"""Where a target's ``_PyRuntime`` and the static types the frame reader checks against are.

Unlike ``context.interpreter.find_interpreter``, nothing here needs a
generated layout: the version comes from the image's name, and the frame
reader then takes every offset from ``_Py_DebugOffsets``. The static types
(code, str, bytes) are checked by address, one word compare per object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from otel_blocksnoop.process.context.interpreter import UnsupportedInterpreterError
from otel_blocksnoop.process.elf import (
    ElfError,
    ElfSymbols,
    file_mappings,
    load_base,
    mapped_file,
)
from otel_blocksnoop.process.pythons import python_name


@dataclass(frozen=True, slots=True)
class Runtime:
    """A target interpreter's version and the addresses the frame reader starts from."""

    version: tuple[int, int]
    runtime: int  # _PyRuntime
    code_type: int  # PyCode_Type
    unicode_type: int  # PyUnicode_Type
    bytes_type: int  # PyBytes_Type


FIRST_VERSION = (3, 13)
"""The first CPython with _Py_DebugOffsets at the start of _PyRuntime."""

_SYMBOLS = ("_PyRuntime", "PyCode_Type", "PyUnicode_Type", "PyBytes_Type")


def locate_runtime(pid: int) -> Runtime:
    """The runtime of process ``pid``.

    Raises UnsupportedInterpreterError (not CPython, free-threaded, stripped)
    or OSError (the process cannot be inspected).
    """
    mappings = file_mappings(pid)
    exe = str(Path(f"/proc/{pid}/exe").readlink())
    libpython = next((m.path for m in mappings if "libpython" in Path(m.path).name), None)
    image = libpython or exe
    name = python_name(image)
    if name is None or name.version is None:
        raise UnsupportedInterpreterError(f"{image} is not a CPython interpreter this reader knows")
    if name.version < FIRST_VERSION:
        major, minor = name.version
        msg = f"CPython {major}.{minor} publishes no _Py_DebugOffsets (3.13 and later do)"
        raise UnsupportedInterpreterError(msg)
    if name.free_threaded:
        raise UnsupportedInterpreterError(f"{image} is a free-threaded build")
    mapping = next((m for m in mappings if m.path == image and m.offset == 0), None)
    if mapping is None:
        raise UnsupportedInterpreterError(f"{image} is not mapped from its start")
    try:
        elf = ElfSymbols(mapped_file(pid, mapping))
    except (ElfError, ValueError, FileNotFoundError) as error:
        raise UnsupportedInterpreterError(str(error)) from error
    with elf:
        base = load_base(mappings, image, elf)
        symbols = [elf.symbol(symbol) for symbol in _SYMBOLS]
    missing = [s for s, value in zip(_SYMBOLS, symbols, strict=True) if value is None]
    if base is None or missing:
        what = ", ".join(missing) or "its load address"
        raise UnsupportedInterpreterError(f"{image} has no {what} (stripped or static)")
    runtime, code_type, unicode_type, bytes_type = (base + (s or 0) for s in symbols)
    return Runtime(name.version, runtime, code_type, unicode_type, bytes_type)


__all__ = ["FIRST_VERSION", "Runtime", "locate_runtime"]
