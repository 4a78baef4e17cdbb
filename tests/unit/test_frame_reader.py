"""The frame reader on a forged CPython 3.13 heap: offsets checked, stacks read, torn ones refused.

The heap is built by hand from the _Py_DebugOffsets values of pyenv's 3.13.0
(those the integration test reads from a live one): _PyRuntime with its
debug offsets, an interpreter, a thread state and a chain of interpreter
frames whose code objects hold real location tables of this process's own
functions. The reader reads it through a RemoteMemory that serves this heap.
"""

from __future__ import annotations

import dis
import shutil
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from otel_blocksnoop.events import Frame
from otel_blocksnoop.process.context.interpreter import UnsupportedInterpreterError
from otel_blocksnoop.process.frames import MAX_DEPTH, FrameReader
from otel_blocksnoop.process.frames.debug_offsets import read_debug_offsets
from otel_blocksnoop.process.frames.reader import MAX_WALK
from otel_blocksnoop.process.frames.runtime import Runtime
from otel_blocksnoop.process.remote_memory import MAX_READ, RemoteMemory, plausible_pointer

ROOT = Path(__file__).resolve().parent.parent.parent
BASE = 0x100000
TID = 4242
CODE_TYPE, UNICODE_TYPE, BYTES_TYPE = 0x7000, 0x7100, 0x7200
HEX_3_13 = 0x030D00F0

# Word index in _Py_DebugOffsets -> value, as CPython 3.13.0 fills them (pycore_runtime.h).
DEBUG_WORDS = {
    1: HEX_3_13,  # version
    2: 0,  # free_threaded
    3: 283320,  # runtime_state.size
    5: 632,  # runtime_state.interpreters_head
    6: 95000,  # interpreter_state.size
    8: 7264,  # interpreter_state.next
    9: 7344,  # interpreter_state.threads_head
    19: 1000,  # thread_state.size
    21: 8,  # .next
    22: 16,  # .interp
    23: 72,  # .current_frame
    24: 152,  # .thread_id
    25: 160,  # .native_thread_id
    28: 80,  # interpreter_frame.size
    29: 8,  # .previous
    30: 0,  # .executable
    31: 56,  # .instr_ptr
    33: 70,  # .owner
    34: 208,  # code_object.size
    35: 112,  # .filename
    36: 120,  # .name
    37: 128,  # .qualname
    38: 136,  # .linetable
    39: 68,  # .firstlineno
    43: 200,  # .co_code_adaptive
    44: 16,  # pyobject.size
    45: 8,  # .ob_type
    64: 40,  # bytes_object.size
    65: 16,  # .ob_size
    66: 32,  # .ob_sval
    67: 64,  # unicode_object.size
    68: 32,  # .state
    69: 16,  # .length
    70: 40,  # .asciiobject_size
}
OWNED_BY_THREAD, OWNED_BY_CSTACK = 0, 3


class ForgedMemory(RemoteMemory):
    """A heap in a bytearray, read like a process; ``after_reads`` runs once after N reads."""

    def __init__(self) -> None:
        super().__init__(pid=0)
        self.heap = bytearray(1 << 20)
        self.top = 0
        self.after_reads: tuple[int, Callable[[], None]] | None = None

    def alloc(self, size: int) -> int:
        address = BASE + self.top
        self.top += (size + 15) & ~15
        return address

    def put(self, address: int, value: int, size: int = 8) -> None:
        self.heap[address - BASE : address - BASE + size] = value.to_bytes(size, "little")

    def put_bytes(self, address: int, data: bytes) -> None:
        self.heap[address - BASE : address - BASE + len(data)] = data

    def read(self, address: int, size: int) -> bytes | None:
        if not 0 < size <= MAX_READ or not plausible_pointer(address, 1):
            return None
        self.reads += 1
        if self.after_reads is not None and self.reads >= self.after_reads[0]:
            change, self.after_reads = self.after_reads[1], None
            change()
        at = address - BASE
        if at < 0 or at + size > len(self.heap):
            return None
        return bytes(self.heap[at : at + size])


class Heap:
    """_PyRuntime, one interpreter, one thread state of TID, and frames pushed on it."""

    def __init__(self, words: dict[int, int] | None = None) -> None:
        self.memory = ForgedMemory()
        self.runtime = self.memory.alloc(284_000)
        self.memory.put_bytes(self.runtime, b"xdebugpy")
        for index, value in (words or DEBUG_WORDS).items():
            self.memory.put(self.runtime + 8 * index, value)
        interp = self.memory.alloc(8000)
        self.memory.put(self.runtime + 632, interp)
        self.tstate = self.memory.alloc(1000)
        self.memory.put(interp + 7344, self.tstate)
        self.memory.put(self.tstate + 16, interp)
        self.memory.put(self.tstate + 160, TID)
        self.top = 0

    def text(self, value: str) -> int:
        obj = self.memory.alloc(40 + len(value) + 1)
        self.memory.put(obj + 8, UNICODE_TYPE)
        self.memory.put(obj + 16, len(value))
        self.memory.put(obj + 32, 1 << 5 | 1 << 6, 4)  # compact, ascii
        self.memory.put_bytes(obj + 40, value.encode())
        return obj

    def code(self, real: types.CodeType, file: str | None = None) -> int:
        table = self.memory.alloc(32 + len(real.co_linetable))
        self.memory.put(table + 8, BYTES_TYPE)
        self.memory.put(table + 16, len(real.co_linetable))
        self.memory.put_bytes(table + 32, real.co_linetable)
        code = self.memory.alloc(208 + len(real.co_code))
        self.memory.put(code + 8, CODE_TYPE)
        self.memory.put(code + 112, self.text(file or real.co_filename))
        self.memory.put(code + 128, self.text(real.co_qualname))
        self.memory.put(code + 136, table)
        self.memory.put(code + 68, real.co_firstlineno, 4)
        return code

    def push(self, code: int, unit: int, owner: int = OWNED_BY_THREAD) -> int:
        """A frame on top of the thread's stack, at code unit ``unit`` of ``code``."""
        frame = self.memory.alloc(80)
        self.memory.put(frame, code)
        self.memory.put(frame + 8, self.top)
        self.memory.put(frame + 56, code + 200 + 2 * unit)
        self.memory.put(frame + 70, owner, 1)
        self.memory.put(self.tstate + 72, frame)
        self.top = frame
        return frame

    def reader(self) -> FrameReader:
        runtime = Runtime((3, 13), self.runtime, CODE_TYPE, UNICODE_TYPE, BYTES_TYPE)
        return FrameReader(0, self.memory, runtime)


def outer() -> None:
    inner()


def inner() -> None:
    pass


def line_of(code: types.CodeType, unit: int) -> int:
    """What CPython itself says is the line of ``code``'s instruction at ``unit``."""
    line = list(code.co_positions())[unit][0]
    assert line is not None
    return line


def call_unit(code: types.CodeType) -> int:
    """The code unit of the first call, where an outer frame waits for its callee."""
    return next(i.offset // 2 for i in dis.get_instructions(code) if i.opname.startswith("CALL"))


OUTER, INNER = outer.__code__, inner.__code__


def two_frames() -> tuple[Heap, int, int]:
    heap = Heap()
    heap.push(heap.code(OUTER, "/app/outer.py"), call_unit(OUTER))
    top = heap.push(heap.code(INNER, "/app/inner.py"), 1)
    return heap, top, call_unit(OUTER)


# The debug offsets


def test_the_debug_offsets_of_3_13_are_read_as_published() -> None:
    # GIVEN _PyRuntime of a 3.13 build
    heap = Heap()
    # WHEN its debug offsets are read
    offsets = read_debug_offsets(heap.memory, heap.runtime, (3, 13))
    # THEN each field is the one CPython put there
    assert offsets.hex_version == HEX_3_13
    assert (offsets.tstate_current_frame, offsets.tstate_native_thread_id) == (72, 160)
    assert (offsets.frame_previous, offsets.frame_instr_ptr, offsets.frame_owner) == (8, 56, 70)
    assert (offsets.code_qualname, offsets.code_linetable, offsets.code_adaptive) == (128, 136, 200)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({1: 0x030C00F0}, "says 3.12"),
        ({2: 1}, "free-threaded"),
        ({28: 0}, "implausible frame_size"),
        ({34: 1 << 20}, "implausible code_size"),
        ({31: 96}, "instr_ptr at 96, past its struct"),
        ({38: 4096}, "linetable at 4096, past its struct"),
    ],
)
def test_offsets_that_do_not_hold_together_are_refused(change: dict[int, int], says: str) -> None:
    # GIVEN debug offsets of another version, build or a corrupt value
    heap = Heap({**DEBUG_WORDS, **change})
    # WHEN they are read, THEN the reader refuses them, saying why
    with pytest.raises(UnsupportedInterpreterError, match=says):
        read_debug_offsets(heap.memory, heap.runtime, (3, 13))


def test_no_cookie_no_offsets() -> None:
    heap = Heap()
    heap.memory.put_bytes(heap.runtime, b"notdebug")
    with pytest.raises(UnsupportedInterpreterError, match="cookie"):
        read_debug_offsets(heap.memory, heap.runtime, (3, 13))


def test_a_version_whose_offsets_shape_is_unknown_is_refused() -> None:
    heap = Heap()
    unknown = r"no _Py_DebugOffsets shape for CPython 3\.16"
    with pytest.raises(UnsupportedInterpreterError, match=unknown):
        read_debug_offsets(heap.memory, heap.runtime, (3, 16))


def test_a_free_threaded_build_of_a_version_without_its_shape_is_refused() -> None:
    # GIVEN a 3.13t: its str bits and stackref tags are not those of 3.13 with a GIL
    heap = Heap({**DEBUG_WORDS, 2: 1})
    # WHEN its debug offsets are read, THEN the reader refuses, naming what it knows
    with pytest.raises(
        UnsupportedInterpreterError,
        match=r"no _Py_DebugOffsets shape for free-threaded CPython 3\.13 \(known: 3\.14\)",
    ):
        read_debug_offsets(heap.memory, heap.runtime, (3, 13), free_threaded=True)


def test_an_unreadable_runtime_is_refused() -> None:
    with pytest.raises(UnsupportedInterpreterError, match="cannot read"):
        read_debug_offsets(ForgedMemory(), 0x10, (3, 13))


# The stack


def test_a_stack_is_read_outermost_first_with_lines_from_the_table() -> None:
    # GIVEN a thread in inner(), called from outer()
    heap, _, outer_unit = two_frames()
    # WHEN its stack is read
    stack = heap.reader().stack(TID)
    # THEN both frames are there, outermost first, each line CPython's for its instruction
    assert stack == (
        Frame("outer", "/app/outer.py", line_of(OUTER, outer_unit)),
        Frame("inner", "/app/inner.py", line_of(INNER, 1)),
    )


def test_shim_frames_of_the_c_stack_are_skipped() -> None:
    # GIVEN a C-stack entry frame between two Python frames
    heap = Heap()
    heap.push(heap.code(OUTER), call_unit(OUTER))
    heap.push(heap.code(OUTER), 0, owner=OWNED_BY_CSTACK)
    heap.push(heap.code(INNER), 1)
    # WHEN the stack is read, THEN only the Python frames are in it
    stack = heap.reader().stack(TID)
    assert stack is not None
    assert [f.function for f in stack] == ["outer", "inner"]


def test_a_thread_without_python_frames_has_an_empty_stack() -> None:
    assert Heap().reader().stack(TID) == ()


def test_a_thread_without_a_thread_state_has_no_stack() -> None:
    heap, _, _ = two_frames()
    assert heap.reader().stack(TID + 1) is None


def test_a_stack_deeper_than_the_bound_keeps_its_innermost_frames() -> None:
    # GIVEN a recursion deeper than MAX_DEPTH, inner() on top
    heap = Heap()
    code = heap.code(OUTER)
    for _ in range(MAX_DEPTH + 10):
        heap.push(code, call_unit(OUTER))
    heap.push(heap.code(INNER), 1)
    # WHEN it is read, THEN the innermost MAX_DEPTH frames are there, inner() last
    stack = heap.reader().stack(TID)
    assert stack is not None
    assert len(stack) == MAX_DEPTH
    assert stack[-1].function == "inner"


def test_an_endless_chain_of_shim_frames_gives_no_stack() -> None:
    # GIVEN more C-stack shim frames in a row than any real stack has
    heap = Heap()
    code = heap.code(OUTER)
    for _ in range(MAX_WALK + 1):
        heap.push(code, 0, owner=OWNED_BY_CSTACK)
    # WHEN read, THEN the walk gives up: no stack
    assert heap.reader().stack(TID) is None


def test_a_frame_whose_executable_is_not_a_code_object_gives_no_stack() -> None:
    # GIVEN a frame whose code pointer points at a str (memory being reused)
    heap, top, _ = two_frames()
    heap.memory.put(top, heap.text("not code"))
    # WHEN read, THEN there is no stack rather than a wrong frame
    assert heap.reader().stack(TID) is None


def test_a_frame_chain_that_loops_gives_no_stack() -> None:
    heap, top, _ = two_frames()
    heap.memory.put(top + 8, top)
    assert heap.reader().stack(TID) is None


def test_an_instruction_pointer_outside_its_code_gives_no_stack() -> None:
    heap, top, _ = two_frames()
    code = int.from_bytes(heap.memory.heap[top - BASE : top - BASE + 8], "little")
    heap.memory.put(top + 56, code + 100)  # before the bytecode
    assert heap.reader().stack(TID) is None


def test_a_corrupt_location_table_gives_no_stack() -> None:
    heap, top, _ = two_frames()
    code = int.from_bytes(heap.memory.heap[top - BASE : top - BASE + 8], "little")
    table = int.from_bytes(heap.memory.heap[code + 136 - BASE : code + 144 - BASE], "little")
    heap.memory.put_bytes(table + 32, b"\x01")  # not the start of an entry
    assert heap.reader().stack(TID) is None


def test_a_stack_that_moves_during_the_read_is_refused() -> None:
    # GIVEN a thread that returns from inner() and calls it again while its stack is read
    heap, top, _ = two_frames()
    reader = heap.reader()
    reader.stack(TID)  # the thread state is known: the next read walks the frames at once
    other = heap.memory.alloc(80)
    heap.memory.put_bytes(other, bytes(heap.memory.heap[top - BASE : top - BASE + 80]))
    heap.memory.after_reads = (
        heap.memory.reads + 5,
        lambda: heap.memory.put(heap.tstate + 72, other),
    )
    # WHEN the stack is read, THEN it is refused, and the next read is whole again
    assert reader.stack(TID) is None
    stack = reader.stack(TID)
    assert stack is not None
    assert [f.function for f in stack] == ["outer", "inner"]


def test_a_top_frame_reused_for_other_code_during_the_read_is_refused() -> None:
    # GIVEN the top frame's memory reused by a call of other code while the stack is read
    heap, top, _ = two_frames()
    reader = heap.reader()
    reader.stack(TID)
    other_code = heap.code(OUTER)
    heap.memory.after_reads = (heap.memory.reads + 5, lambda: heap.memory.put(top, other_code))
    # WHEN the stack is read, THEN it is refused
    assert reader.stack(TID) is None


def test_a_non_ascii_file_name_is_decoded() -> None:
    # GIVEN a code object whose file name is a compact UCS-2 str
    heap = Heap()
    code = heap.code(INNER)
    name = "/app/ünïcødé/€.py"
    obj = heap.memory.alloc(56 + 2 * len(name))
    heap.memory.put(obj + 8, UNICODE_TYPE)
    heap.memory.put(obj + 16, len(name))
    heap.memory.put(obj + 32, 2 << 2 | 1 << 5, 4)  # kind 2, compact, not ascii
    heap.memory.put_bytes(obj + 56, name.encode("utf-16-le"))
    heap.memory.put(code + 112, obj)
    heap.push(code, 1)
    # WHEN read, THEN the file name is the str itself
    stack = heap.reader().stack(TID)
    assert stack is not None
    assert stack[0].file == name


def test_the_generated_debug_offsets_shapes_are_up_to_date() -> None:
    # GIVEN pyenv's CPython headers and a C compiler
    if shutil.which("pyenv") is None or shutil.which("cc") is None:
        pytest.skip("needs pyenv's CPython headers and a C compiler")
    # WHEN the generator compares its output with the committed module
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_debug_offsets.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    # THEN nothing differs, and the module says it is generated
    assert result.returncode == 0, result.stderr
    assert "do not edit" in (ROOT / "otel_blocksnoop/process/frames/debug_shapes.py").read_text()
