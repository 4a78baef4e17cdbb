"""A thread's Python stack, read from the target's memory (CPython 3.11 and later).

The stack source for interpreters Austin cannot read (3.15 and later, or an
app in a mount namespace Austin may not enter), with the offsets the target
publishes (``_Py_DebugOffsets``, 3.13+) or, for 3.11 and 3.12, its generated
layout checked against it (``layouts``): the thread state's current frame
(through its ``_PyCFrame`` before 3.13), then each interpreter frame's ``previous``,
skipping the C stack's shim frames; each frame's code object gives the
function (``co_qualname``, as Austin names it), the file and, through its
location table and the frame's ``instr_ptr``, the line. The target runs on
while it is read: every read may fail or see memory being rewritten, so a
stack that does not hold together (a pointer of the wrong type, a table that
does not decode, a top frame that moved during the walk) is None for that
read, never a wrong frame.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import Frame
from otel_blocksnoop.process.context.threads import ThreadStates
from otel_blocksnoop.process.frames.debug_offsets import DebugOffsets, read_debug_offsets
from otel_blocksnoop.process.frames.layouts import layout_offsets
from otel_blocksnoop.process.frames.linetable import LineTable
from otel_blocksnoop.process.frames.runtime import DEBUG_OFFSETS_VERSION, Runtime, locate_runtime
from otel_blocksnoop.process.pidns import NamespaceIds
from otel_blocksnoop.process.remote_memory import RemoteMemory, plausible_pointer

MAX_DEPTH = 256
"""Frames read per stack; a deeper one keeps its innermost frames (where it blocks)."""
MAX_WALK = 4 * MAX_DEPTH
"""Frames looked at per stack, shims included."""
MAX_NAME = 256
"""Characters of a function's qualified name."""
MAX_PATH = 1024
"""Characters of a file name."""
MAX_LINETABLE = 1 << 16
"""Bytes of a location table (CPython's own are a few hundred)."""
MAX_CODES = 1024
"""Code objects kept decoded between reads."""

MAX_TLBC = 1 << 16
"""Copies of one code object's bytecode a free-threaded build may hold (one per thread index)."""
_CODE_UNIT = 2  # sizeof(_Py_CODEUNIT)
_SHORT_TEXT = 128  # characters read with a str's header, so that most names take one read


@dataclass(frozen=True, slots=True)
class _Code:
    """What a code object gives each frame of it: name, file and line table."""

    function: str
    file: str
    lines: LineTable


class FrameReader:
    """Python stacks of the threads of one process, by native thread id.

    Made once per target: raises UnsupportedInterpreterError (saying why)
    when the interpreter's debug offsets are missing, of another version or
    implausible, or (3.11, 3.12) it does not fit its generated layout, and
    OSError when the process cannot be inspected. Tests pass ``memory``,
    ``runtime`` and ``tids`` (its threads, as its thread states hold them)
    to read a forged heap instead.
    """

    def __init__(
        self,
        pid: int,
        memory: RemoteMemory | None = None,
        runtime: Runtime | None = None,
        tids: Collection[int] | None = None,
    ) -> None:
        self.pid = pid
        self._memory = memory or RemoteMemory(pid)
        self._runtime: Runtime = runtime or locate_runtime(pid)
        if self._runtime.version >= DEBUG_OFFSETS_VERSION:
            self.offsets: DebugOffsets = read_debug_offsets(
                self._memory,
                self._runtime.runtime,
                self._runtime.version,
                free_threaded=self._runtime.free_threaded,
            )
        else:
            if tids is None:
                tids = NamespaceIds().sidecar_tids(pid)  # keyed as the app numbers them
            self.offsets = layout_offsets(self._memory, self._runtime, tids)
        self._threads = ThreadStates(self._memory, self.offsets, self._runtime.runtime)
        offsets = self.offsets
        # One read of each frame and each code object, up to the last field used.
        self._frame_span = 8 + max(
            offsets.frame_previous,
            offsets.frame_executable,
            offsets.frame_instr_ptr,
            offsets.frame_owner,
            offsets.frame_tlbc_index or 0,
        )
        self._code_span = 8 + max(
            offsets.object_type,
            offsets.code_filename,
            offsets.code_qualname,
            offsets.code_linetable,
            offsets.code_firstlineno,
        )
        # Keyed by the code object's address and the pointers it was decoded from.
        self._codes: BoundedDict[tuple[int, int, int, int, int], _Code] = BoundedDict(MAX_CODES)

    @property
    def reads(self) -> int:
        return self._memory.reads

    def has_thread(self, tid: int) -> bool:
        """Whether thread ``tid`` has a thread state here (runs Python) now."""
        return self._threads.find(tid) is not None

    def stack(self, tid: int) -> tuple[Frame, ...] | None:
        """The Python stack of thread ``tid``, outermost frame first.

        () when the thread runs no Python code; None when it has no thread
        state here, or the stack could not be read whole and consistent.
        """
        found = self._threads.find(tid)
        if found is None:
            return None
        tstate = found[0]
        top = self._top(tstate)
        if top is None:
            return None
        walked = self._walk(top)
        if walked is None:
            return None
        frames, top_code = walked
        # The thread may have returned and called again during the walk: the
        # walk holds only if its top frame is still there, running the same code.
        if self._top(tstate) != top:
            return None
        if top and self._executable(top) != top_code:
            return None
        return tuple(reversed(frames))

    def _top(self, tstate: int) -> int | None:
        """The thread's current frame (0: none), through its _PyCFrame on 3.11 and 3.12."""
        holder = tstate
        if self.offsets.tstate_cframe is not None:
            cframe = self._memory.pointer(tstate + self.offsets.tstate_cframe)
            if not cframe or not plausible_pointer(cframe):
                return None
            holder = cframe
        return self._memory.pointer(holder + self.offsets.tstate_current_frame)

    def _walk(self, frame: int) -> tuple[list[Frame], int | None] | None:
        """Frames innermost first from ``frame``, and the top frame's code; None if torn."""
        offsets, memory = self.offsets, self._memory
        constants = offsets.constants
        frames: list[Frame] = []
        seen: set[int] = set()
        top_code: int | None = None
        for _ in range(MAX_WALK):
            if not frame or len(frames) == MAX_DEPTH:
                break
            if not plausible_pointer(frame) or frame in seen:
                return None
            seen.add(frame)
            raw = memory.read(frame, self._frame_span)
            if raw is None:
                return None
            previous = _word(raw, offsets.frame_previous)
            code = _word(raw, offsets.frame_executable) & ~constants.executable_tag_mask
            if top_code is None:
                top_code = code
            if raw[offsets.frame_owner] not in constants.owner_skipped:
                found = self._frame(code, _word(raw, offsets.frame_instr_ptr), self._tlbc(raw))
                if found is None:
                    return None
                frames.append(found)
            frame = previous
        else:
            return None  # a chain of shims longer than any real one
        return frames, top_code

    def _executable(self, frame: int) -> int | None:
        word = self._memory.pointer(frame + self.offsets.frame_executable)
        return None if word is None else word & ~self.offsets.constants.executable_tag_mask

    def _tlbc(self, frame: bytes) -> int:
        """Which copy of its code's bytecode a free-threaded build's frame runs (0 elsewhere)."""
        at = self.offsets.frame_tlbc_index
        return 0 if at is None else int.from_bytes(frame[at : at + 4], "little", signed=True)

    def _bytecode(self, code: int, tlbc_index: int) -> int | None:
        """Where the bytecode the frame runs starts: the code's own, or its thread's copy.

        A free-threaded build gives each thread that specializes code a copy of
        its own (``co_tlbc->entries[tlbc_index]``; entry 0 is the code's own).
        None when the copy cannot be found whole: no line rather than a wrong one.
        """
        own = code + self.offsets.code_adaptive
        if tlbc_index == 0:
            return own
        at = self.offsets.code_tlbc
        array = None if at is None else self._memory.pointer(code + at)
        if not array or not plausible_pointer(array):
            return None
        size = self._memory.pointer(array)  # _PyCodeArray: Py_ssize_t size; char *entries[]
        if size is None or not 0 < tlbc_index < min(size, MAX_TLBC):
            return None
        copy = self._memory.pointer(array + 8 * (1 + tlbc_index))
        return copy if copy and plausible_pointer(copy) else None

    def _frame(self, code: int, instr_ptr: int, tlbc_index: int = 0) -> Frame | None:
        decoded = self._code(code)
        if decoded is None:
            return None
        bytecode = self._bytecode(code, tlbc_index)
        if bytecode is None:
            return None
        unit, odd = divmod(instr_ptr - bytecode, _CODE_UNIT)
        if odd or unit < self.offsets.constants.first_instr_unit:
            return None
        line = decoded.lines.line(unit)
        if line is None:
            return None
        return Frame(decoded.function, decoded.file, line)

    def _code(self, code: int) -> _Code | None:
        """The code object at ``code``, decoded once and kept while its fields stay the same."""
        offsets = self.offsets
        raw = self._memory.read(code, self._code_span) if plausible_pointer(code) else None
        if raw is None or _word(raw, offsets.object_type) != self._runtime.code_type:
            return None
        filename = _word(raw, offsets.code_filename)
        qualname = _word(raw, offsets.code_qualname)
        linetable = _word(raw, offsets.code_linetable)
        first_line = int.from_bytes(
            raw[offsets.code_firstlineno : offsets.code_firstlineno + 4], "little", signed=True
        )
        key = (code, filename, qualname, linetable, first_line)
        known = self._codes.get(key)
        if known is not None:
            return known
        function = self._text(qualname, MAX_NAME)
        file = self._text(filename, MAX_PATH)
        table = self._bytes(linetable, MAX_LINETABLE)
        if function is None or file is None or table is None:
            return None
        try:
            lines = LineTable(table, first_line)
        except ValueError:
            return None
        decoded = _Code(function, file, lines)
        self._codes[key] = decoded
        return decoded

    def _text(self, obj: int, limit: int) -> str | None:
        """A compact str (ASCII, or UCS-1/2/4) of at most ``limit`` characters."""
        offsets, constants = self.offsets, self.offsets.constants
        ascii_size = offsets.unicode_ascii_size
        # PyCompactUnicodeObject: the ASCII header, then utf8_length and utf8 (and wstr_length).
        compact_size = ascii_size + constants.unicode_compact_extra
        header = (
            self._memory.read(obj, compact_size + _SHORT_TEXT) if plausible_pointer(obj) else None
        )
        if header is None:
            header = self._memory.read(obj, compact_size) if plausible_pointer(obj) else None
        if header is None or _word(header, offsets.object_type) != self._runtime.unicode_type:
            return None
        length = _word(header, offsets.unicode_length)
        state = int.from_bytes(header[offsets.unicode_state : offsets.unicode_state + 4], "little")
        if not state & constants.unicode_compact_bit or not 0 <= length <= limit:
            return None
        if state & constants.unicode_ascii_bit:
            start, width, codec = ascii_size, 1, "ascii"
        else:
            width = (state >> constants.unicode_kind_shift) & 7
            codecs = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}
            if width not in codecs:
                return None
            start, codec = compact_size, codecs[width]
        size = length * width
        if start + size <= len(header):
            data: bytes | None = header[start : start + size]
        else:
            data = self._memory.read_table(obj + start, size)
        if data is None:
            return None
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            return None

    def _bytes(self, obj: int, limit: int) -> bytes | None:
        """The contents of a bytes object of at most ``limit`` bytes."""
        offsets = self.offsets
        header = self._memory.read(obj, offsets.bytes_sval) if plausible_pointer(obj) else None
        if header is None or _word(header, offsets.object_type) != self._runtime.bytes_type:
            return None
        size = _word(header, offsets.bytes_ob_size)
        if not 0 < size <= limit:
            return None
        return self._memory.read_table(obj + offsets.bytes_sval, size)


def _word(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<Q", data, at)[0])


__all__ = ["MAX_DEPTH", "FrameReader"]
