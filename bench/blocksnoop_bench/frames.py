# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""A prototype of the third stack source: the frames read from the target's memory.

Not product code: what the benchmark needs to know what reading the frame
chain ourselves would cost and how often it names the right function,
against Austin. It reuses the context reader's parts (the interpreter, the
thread state of a TID, the remote memory reader) and adds the frame fields,
compiled here from each interpreter's own headers with ``offsetof()`` the
way scripts/gen_cpython_offsets.py does it (``frame_fields``).

The walk (CPython 3.11-3.13 only; 3.9 and 3.10 chain ``PyFrameObject``s
through ``f_back`` instead, see ``FIELDS_BY_VERSION``):

    thread state -> current frame (3.11/3.12 through ``cframe``) -> for each
    _PyInterpreterFrame: code object (``f_code``, 3.13 ``f_executable``), the
    instruction (``prev_instr``, 3.13 ``instr_ptr``), ``previous``; frames
    owned by the C stack (3.12+ ``owner == 3``) are shims and skipped
    -> code: ``co_qualname``, ``co_filename``, ``co_firstlineno``,
    ``co_linetable`` (3.11+ location table), ``co_code_adaptive`` (the
    instruction's index is its distance from there)

Code objects live as long as their functions: one is decoded once and kept
by address, checked again by its name, file and table pointers at each use.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from otel_blocksnoop.events import Frame
from otel_blocksnoop.process.context.interpreter import find_interpreter
from otel_blocksnoop.process.context.objects import ObjectReader
from otel_blocksnoop.process.context.threads import ThreadStates
from otel_blocksnoop.process.remote_memory import RemoteMemory, plausible_pointer

MAX_FRAMES = 256
MAX_TABLE = 1 << 16
OWNED_BY_CSTACK = 3

FIELDS_BY_VERSION = {
    (3, 9): (
        "tstate.frame",
        "frame.f_back",
        "frame.f_code",
        "frame.f_lasti (bytes)",
        "code.co_name",
        "code.co_filename",
        "code.co_firstlineno",
        "code.co_lnotab",
        "bytes.ob_sval",
    ),
    (3, 10): (
        "tstate.frame",
        "frame.f_back",
        "frame.f_code",
        "frame.f_lasti (code units)",
        "code.co_name",
        "code.co_filename",
        "code.co_firstlineno",
        "code.co_linetable",
        "bytes.ob_sval",
    ),
    (3, 11): (
        "tstate.cframe",
        "cframe.current_frame",
        "iframe.previous",
        "iframe.f_code",
        "iframe.prev_instr",
        "code.co_qualname",
        "code.co_filename",
        "code.co_firstlineno",
        "code.co_linetable",
        "code.co_code_adaptive",
        "bytes.ob_sval",
    ),
    (3, 12): (
        "tstate.cframe",
        "cframe.current_frame",
        "iframe.previous",
        "iframe.f_code",
        "iframe.prev_instr",
        "iframe.owner",
        "code.co_qualname",
        "code.co_filename",
        "code.co_firstlineno",
        "code.co_linetable",
        "code.co_code_adaptive",
        "bytes.ob_sval",
    ),
    (3, 13): (
        "tstate.current_frame",
        "iframe.previous",
        "iframe.f_executable",
        "iframe.instr_ptr",
        "iframe.owner",
        "code.co_qualname",
        "code.co_filename",
        "code.co_firstlineno",
        "code.co_linetable",
        "code.co_code_adaptive",
        "bytes.ob_sval",
    ),
}
"""What a frame reader needs per version beyond what the context reader has."""

_C_FRAME_FIELDS = r"""
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stdio.h>
#include <stddef.h>
#if PY_MINOR_VERSION >= 11
#include "internal/pycore_frame.h"
#else
#include "frameobject.h"
#endif
#define P(name, value) printf("%s=%lld\n", name, (long long)(value))
int main(void) {
#if PY_MINOR_VERSION >= 13
    P("tstate.current_frame", offsetof(PyThreadState, current_frame));
    P("iframe.f_executable", offsetof(_PyInterpreterFrame, f_executable));
    P("iframe.instr_ptr", offsetof(_PyInterpreterFrame, instr_ptr));
#elif PY_MINOR_VERSION >= 11
    P("tstate.cframe", offsetof(PyThreadState, cframe));
    P("cframe.current_frame", offsetof(_PyCFrame, current_frame));
    P("iframe.f_code", offsetof(_PyInterpreterFrame, f_code));
    P("iframe.prev_instr", offsetof(_PyInterpreterFrame, prev_instr));
#else
    P("tstate.frame", offsetof(PyThreadState, frame));
    P("frame.f_back", offsetof(PyFrameObject, f_back));
    P("frame.f_code", offsetof(PyFrameObject, f_code));
    P("frame.f_lasti", offsetof(PyFrameObject, f_lasti));
#endif
#if PY_MINOR_VERSION >= 11
    P("iframe.previous", offsetof(_PyInterpreterFrame, previous));
    P("iframe.owner", offsetof(_PyInterpreterFrame, owner));
    P("iframe.size", sizeof(_PyInterpreterFrame));
    P("code.co_qualname", offsetof(PyCodeObject, co_qualname));
    P("code.co_linetable", offsetof(PyCodeObject, co_linetable));
    P("code.co_code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
#elif PY_MINOR_VERSION == 10
    P("code.co_linetable", offsetof(PyCodeObject, co_linetable));
#else
    P("code.co_lnotab", offsetof(PyCodeObject, co_lnotab));
#endif
    P("code.co_name", offsetof(PyCodeObject, co_name));
    P("code.co_filename", offsetof(PyCodeObject, co_filename));
    P("code.co_firstlineno", offsetof(PyCodeObject, co_firstlineno));
    P("bytes.ob_sval", offsetof(PyBytesObject, ob_sval));
    return 0;
}
"""


def frame_fields(python: str) -> dict[str, int]:
    """Offsets of the frame fields in ``python``'s own headers (``offsetof`` compiled)."""
    include = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "frames.c"
        source.write_text(_C_FRAME_FIELDS)
        binary = Path(tmp) / "frames"
        command = ["cc", "-DNDEBUG", "-I", include, "-I", f"{include}/internal"]
        subprocess.run([*command, "-o", str(binary), str(source)], check=True)
        out = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, _, value in (x.partition("=") for x in out.splitlines())}


def _varint(table: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = table[at]
        at += 1
        value |= (byte & 63) << shift
        shift += 6
        if not byte & 64:
            return value, at


def _svarint(table: bytes, at: int) -> tuple[int, int]:
    value, at = _varint(table, at)
    return (-(value >> 1) if value & 1 else value >> 1), at


def line_of(table: bytes, first_line: int, index: int) -> int | None:
    """Line of code unit ``index`` from a 3.11+ location table (Objects/locations.md)."""
    line, address, at = first_line, 0, 0
    while at < len(table):
        head = table[at]
        at += 1
        code, length = (head >> 3) & 15, (head & 7) + 1
        delta = 0
        if code == 15:  # no location
            located = False
        elif code == 14:  # long form: line delta, end line, column, end column
            delta, at = _svarint(table, at)
            _, at = _varint(table, at)
            _, at = _varint(table, at)
            _, at = _varint(table, at)
            located = True
        elif code == 13:  # no column
            delta, at = _svarint(table, at)
            located = True
        elif code >= 10:  # one-line forms: two column bytes
            delta, at = code - 10, at + 2
            located = True
        else:  # short form: one column byte
            at += 1
            located = True
        line += delta
        if address <= index < address + length:
            return line if located else None
        address += length
    return None


@dataclass(frozen=True, slots=True)
class _Code:
    header: bytes  # the pointers it was decoded from, checked again at each use
    name: str
    file: str
    first_line: int
    table: bytes


class FrameReader:
    """The Python stack of a thread of a CPython 3.11-3.13 process, read from its memory."""

    def __init__(self, pid: int, fields: dict[str, int]) -> None:
        self.memory = RemoteMemory(pid)
        interpreter = find_interpreter(self.memory)
        self.version = interpreter.layout.version
        if self.version < (3, 11):
            msg = "the prototype reads 3.11-3.13 only"
            raise ValueError(msg)
        self.layout = interpreter.layout
        self.fields = fields
        self.objects = ObjectReader(self.memory, interpreter.layout, interpreter.image)
        self.threads = ThreadStates(self.memory, interpreter.layout, interpreter.runtime)
        self._codes: dict[int, _Code] = {}
        code_field = "iframe.f_executable" if self.version >= (3, 13) else "iframe.f_code"
        instr_field = "iframe.instr_ptr" if self.version >= (3, 13) else "iframe.prev_instr"
        self._code_at = fields[code_field]
        self._instr_at = fields[instr_field]
        self._previous_at = fields["iframe.previous"]
        self._owner_at = fields["iframe.owner"]
        self._frame_size = self._owner_at + 1
        self._code_header = fields["code.co_code_adaptive"]

    def stack(self, tid: int) -> tuple[Frame, ...] | None:
        """Frames of ``tid``, outermost first; None when its thread state is not found."""
        found = self.threads.find(tid)
        if found is None:
            return None
        tstate = found[0]
        if self.version >= (3, 13):
            frame = self.memory.pointer(tstate + self.fields["tstate.current_frame"])
        else:
            cframe = self.memory.pointer(tstate + self.fields["tstate.cframe"])
            frame = (
                self.memory.pointer(cframe + self.fields["cframe.current_frame"])
                if cframe
                else None
            )
        frames: list[Frame] = []
        for _ in range(MAX_FRAMES):
            if not frame or not plausible_pointer(frame):
                break
            raw = self.memory.read(frame, self._frame_size)
            if raw is None:
                break
            code_at = _word(raw, self._code_at)
            previous = _word(raw, self._previous_at)
            if raw[self._owner_at] != OWNED_BY_CSTACK:
                decoded = self._frame(code_at, _word(raw, self._instr_at))
                if decoded is not None:
                    frames.append(decoded)
            frame = previous
        frames.reverse()
        return tuple(frames)

    def _frame(self, code_at: int, instr: int) -> Frame | None:
        code = self._code(code_at)
        if code is None:
            return None
        index = (instr - (code_at + self._code_header)) // 2
        line = line_of(code.table, code.first_line, index) if index >= 0 else None
        return Frame(code.name, code.file, line if line is not None else code.first_line)

    def _code(self, address: int) -> _Code | None:
        if not plausible_pointer(address):
            return None
        fields = self.fields
        header = self.memory.read(address, self._code_header)
        if header is None:
            return None
        pointers = header[fields["code.co_qualname"] : fields["code.co_qualname"] + 8] + (
            header[fields["code.co_filename"] : fields["code.co_filename"] + 8]
            + header[fields["code.co_linetable"] : fields["code.co_linetable"] + 8]
        )
        known = self._codes.get(address)
        if known is not None and known.header == pointers:
            return known
        if self.objects.type_name(address) != "code":
            return None
        name = self.objects.ascii(_word(header, fields["code.co_qualname"]))
        file = self.objects.ascii(_word(header, fields["code.co_filename"]))
        first = int.from_bytes(header[fields["code.co_firstlineno"] :][:4], "little", signed=True)
        table = self._bytes(_word(header, fields["code.co_linetable"]))
        if name is None or file is None or table is None:
            return None
        code = self._codes[address] = _Code(pointers, name, file, first, table)
        return code

    def _bytes(self, address: int) -> bytes | None:
        size = self.memory.ssize(address + self.layout.var_size)
        if size is None or not 0 <= size <= MAX_TABLE:
            return None
        if size == 0:
            return b""
        return self.memory.read_table(address + self.fields["bytes.ob_sval"], size)

    def forget(self) -> None:
        """Drop the decoded code objects (to time a cold read)."""
        self._codes.clear()


def _word(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 8], "little")


def timed_stack(reader: FrameReader, tid: int) -> tuple[int, tuple[Frame, ...] | None]:
    """(monotonic ns at the middle of the read, the stack)."""
    before = time.monotonic_ns()
    stack = reader.stack(tid)
    return (before + time.monotonic_ns()) // 2, stack
