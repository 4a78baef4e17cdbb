"""Where a target's ``_PyRuntime`` and the static types the frame reader checks against are.

The version comes from ``interpreter_image`` (the image's name, else the
file itself); the frame reader then takes every offset from
``_Py_DebugOffsets`` (3.13+) or from the generated layout (3.11, 3.12:
``frames.layouts``, checked against ``Py_Version`` and the static types). The
static types (code, str, bytes) are checked by address, one word compare per
object.
"""

from __future__ import annotations

from dataclasses import dataclass

from otel_blocksnoop.process.context.interpreter import (
    UnsupportedInterpreterError,
    interpreter_image,
    open_image,
)
from otel_blocksnoop.process.elf import load_base


@dataclass(frozen=True, slots=True)
class Runtime:
    """A target interpreter's version and the addresses the frame reader starts from."""

    version: tuple[int, int]
    runtime: int  # _PyRuntime
    code_type: int  # PyCode_Type
    unicode_type: int  # PyUnicode_Type
    bytes_type: int  # PyBytes_Type
    py_version: int | None = None  # Py_Version (3.11+: PY_VERSION_HEX), when the image has it
    free_threaded: bool = False  # the image says a build without a GIL (``3.14t``)


FIRST_VERSION = (3, 11)
"""The first CPython whose frames the reader knows (interpreter frames, location tables)."""
DEBUG_OFFSETS_VERSION = (3, 13)
"""The first CPython with _Py_DebugOffsets at the start of _PyRuntime."""

_SYMBOLS = ("_PyRuntime", "PyCode_Type", "PyUnicode_Type", "PyBytes_Type")


def locate_runtime(pid: int) -> Runtime:
    """The runtime of process ``pid``.

    Raises UnsupportedInterpreterError (not CPython, stripped, a free-threaded
    build before 3.13: none has _Py_DebugOffsets) or OSError (the process
    cannot be inspected). A free-threaded 3.13+ build is the debug offsets' to refuse
    or read (``debug_offsets.FREE_THREADED_VERSIONS``).
    """
    image = interpreter_image(pid)
    if image.version < FIRST_VERSION:
        major, minor = image.version
        msg = f"CPython {major}.{minor}'s frames are not read from memory (3.11 and later are)"
        raise UnsupportedInterpreterError(msg)
    if image.free_threaded and image.version < DEBUG_OFFSETS_VERSION:
        raise UnsupportedInterpreterError(f"{image.path} is a free-threaded build")
    with open_image(pid, image) as elf:
        base = load_base(image.mappings, image.path, elf)
        symbols = [elf.symbol(symbol) for symbol in _SYMBOLS]
        py_version = elf.symbol("Py_Version")
    missing = [s for s, value in zip(_SYMBOLS, symbols, strict=True) if value is None]
    if base is None or missing:
        what = ", ".join(missing) or "its load address"
        raise UnsupportedInterpreterError(f"{image.path} has no {what} (stripped or static)")
    runtime, code_type, unicode_type, bytes_type = (base + (s or 0) for s in symbols)
    return Runtime(
        image.version,
        runtime,
        code_type,
        unicode_type,
        bytes_type,
        None if py_version is None else base + py_version,
        image.free_threaded,
    )


__all__ = ["DEBUG_OFFSETS_VERSION", "FIRST_VERSION", "Runtime", "locate_runtime"]
