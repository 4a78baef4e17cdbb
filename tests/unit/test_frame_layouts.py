"""The frame reader on forged CPython 3.11 and 3.12 heaps, laid out by their generated layouts.

Neither version publishes _Py_DebugOffsets: the reader takes the generated
layout (process/cpython/v3_11.py, v3_12.py) and first checks it against what
the interpreter says of itself. Each heap is built from that layout: a
thread state whose _PyCFrame holds the current frame, interpreter frames
pointing at the instruction last started, and code objects holding real
location tables of this process's own functions.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from otel_blocksnoop.events import Frame
from otel_blocksnoop.process.context.interpreter import UnsupportedInterpreterError
from otel_blocksnoop.process.cpython import CPythonLayout, layout_for
from otel_blocksnoop.process.frames import FrameReader
from otel_blocksnoop.process.frames.layouts import frame_offsets
from otel_blocksnoop.process.frames.runtime import Runtime
from tests.unit.test_frame_reader import INNER, OUTER, TID, ForgedMemory, call_unit, line_of

VERSIONS = [(3, 11), (3, 12)]
OWNED_BY_THREAD, OWNED_BY_CSTACK = 0, 3


def layout(version: tuple[int, int]) -> CPythonLayout:
    found = layout_for(*version)
    assert found is not None
    return found


@dataclass
class Types:
    code: int
    unicode: int
    bytes: int


class LayoutHeap:
    """_PyRuntime, one interpreter, one thread state of TID with its _PyCFrame, and frames."""

    def __init__(self, version: tuple[int, int]) -> None:
        self.version = version
        self.layout = shape = layout(version)
        self.memory = memory = ForgedMemory()
        self.runtime = memory.alloc(shape.runtime_interpreters_head + 8)
        interp = memory.alloc(shape.interp_threads_head + 8)
        memory.put(self.runtime + shape.runtime_interpreters_head, interp)
        self.tstate = memory.alloc(shape.tstate_size)
        memory.put(interp + shape.interp_threads_head, self.tstate)
        memory.put(self.tstate + shape.tstate_interp, interp)
        assert shape.tstate_native_thread_id is not None
        memory.put(self.tstate + shape.tstate_native_thread_id, TID)
        self.cframe = memory.alloc(24)
        memory.put(self.tstate + (shape.tstate_cframe or 0), self.cframe)
        self.py_version = memory.alloc(8)
        memory.put(self.py_version, version[0] << 24 | version[1] << 16 | 0xF0, 4)
        # Each static type with the size it gives its objects (tp_basicsize).
        self.types = Types(*(memory.alloc(shape.type_basicsize + 8) for _ in range(3)))
        sizes = (shape.code_adaptive, shape.unicode_object_size, (shape.bytes_sval or 0) + 1)
        for type_object, size in zip(
            (self.types.code, self.types.unicode, self.types.bytes), sizes, strict=True
        ):
            memory.put(type_object + shape.type_basicsize, size or 0)
        self.top = 0

    def at(self, name: str) -> int:
        value = getattr(self.layout, name)
        assert isinstance(value, int), name
        return value

    def text(self, value: str) -> int:
        """A compact str: ASCII, or one byte a character (latin-1) after the compact header."""
        shape, memory = self.layout, self.memory
        ascii_only = value.isascii()
        start = shape.unicode_ascii_data if ascii_only else self.at("unicode_compact_size")
        obj = memory.alloc(start + len(value) + 1)
        memory.put(obj + shape.object_type, self.types.unicode)
        memory.put(obj + shape.unicode_length, len(value))
        kind = 1 << self.at("unicode_kind_shift")
        state = shape.unicode_compact_mask | (shape.unicode_ascii_mask if ascii_only else kind)
        memory.put(obj + shape.unicode_state, state, 4)
        memory.put_bytes(obj + start, value.encode("latin-1"))
        return obj

    def code(self, real: types.CodeType, file: str, qualname: str | None = None) -> int:
        memory = self.memory
        sval = self.at("bytes_sval")
        table = memory.alloc(sval + len(real.co_linetable))
        memory.put(table + self.layout.object_type, self.types.bytes)
        memory.put(table + self.at("bytes_ob_size"), len(real.co_linetable))
        memory.put_bytes(table + sval, real.co_linetable)
        code = memory.alloc(self.at("code_adaptive") + len(real.co_code))
        memory.put(code + self.layout.object_type, self.types.code)
        memory.put(code + self.at("code_filename"), self.text(file))
        memory.put(code + self.at("code_qualname"), self.text(qualname or real.co_qualname))
        memory.put(code + self.at("code_linetable"), table)
        memory.put(code + self.at("code_firstlineno"), real.co_firstlineno, 4)
        return code

    def push(self, code: int, unit: int, owner: int = OWNED_BY_THREAD) -> int:
        """A frame on top of the thread's stack, its last instruction started at ``unit``."""
        memory = self.memory
        frame = memory.alloc(self.at("frame_size"))
        memory.put(frame + self.at("frame_code"), code)
        memory.put(frame + self.at("frame_previous"), self.top)
        memory.put(frame + self.at("frame_prev_instr"), code + self.at("code_adaptive") + 2 * unit)
        memory.put(frame + self.at("frame_owner"), owner, 1)
        memory.put(self.cframe + self.at("cframe_current_frame"), frame)
        self.top = frame
        return frame

    def reader(self, tids: tuple[int, ...] = (TID,)) -> FrameReader:
        runtime = Runtime(
            self.version,
            self.runtime,
            self.types.code,
            self.types.unicode,
            self.types.bytes,
            self.py_version,
        )
        return FrameReader(0, self.memory, runtime, tids)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_a_stack_is_read_through_the_thread_states_cframe_with_each_frames_line(
    version: tuple[int, int],
) -> None:
    # GIVEN a thread in inner(), called from outer()
    heap = LayoutHeap(version)
    heap.push(heap.code(OUTER, "/app/outer.py"), call_unit(OUTER))
    heap.push(heap.code(INNER, "/app/inner.py"), 1)
    # WHEN its stack is read, THEN each frame has its function, file and line
    assert heap.reader().stack(TID) == (
        Frame("outer", "/app/outer.py", line_of(OUTER, call_unit(OUTER))),
        Frame("inner", "/app/inner.py", line_of(INNER, 1)),
    )


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_a_frame_not_yet_started_is_at_its_first_line(version: tuple[int, int]) -> None:
    # GIVEN a frame whose prev_instr is one before its first instruction (as pushed)
    heap = LayoutHeap(version)
    heap.push(heap.code(INNER, "/app/inner.py"), -1)
    # THEN it reads as its function's first line, as CPython says
    assert heap.reader().stack(TID) == (Frame("inner", "/app/inner.py", INNER.co_firstlineno),)


def test_a_frame_pointing_before_its_code_is_refused() -> None:
    heap = LayoutHeap((3, 12))
    heap.push(heap.code(INNER, "/app/inner.py"), -2)
    assert heap.reader().stack(TID) is None


def test_the_c_stacks_entry_frames_of_3_12_are_not_python_frames() -> None:
    # GIVEN outer() calling into C, which called inner() through an entry shim frame
    heap = LayoutHeap((3, 12))
    heap.push(heap.code(OUTER, "/app/outer.py"), call_unit(OUTER))
    heap.push(heap.code(INNER, "<shim>"), 0, owner=OWNED_BY_CSTACK)
    heap.push(heap.code(INNER, "/app/inner.py"), 1)
    # THEN the stack holds the two Python frames only
    stack = heap.reader().stack(TID)
    assert stack is not None
    assert [frame.file for frame in stack] == ["/app/outer.py", "/app/inner.py"]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_a_non_ascii_name_is_read_after_the_versions_compact_header(
    version: tuple[int, int],
) -> None:
    # GIVEN a function named in latin-1 (3.11's compact header still has wstr_length)
    heap = LayoutHeap(version)
    heap.push(heap.code(INNER, "/app/café.py", qualname="grüße"), 1)
    # THEN its name and file read whole
    assert heap.reader().stack(TID) == (Frame("grüße", "/app/café.py", line_of(INNER, 1)),)


def test_a_thread_with_no_python_running_has_an_empty_stack() -> None:
    heap = LayoutHeap((3, 11))
    assert heap.reader().stack(TID) == ()


def corrupt_version(heap: LayoutHeap) -> None:
    heap.memory.put(heap.py_version, 0x030C01F0, 4)


def corrupt_code_type(heap: LayoutHeap) -> None:
    heap.memory.put(heap.types.code + heap.layout.type_basicsize, heap.at("code_adaptive") + 8)


def corrupt_str_type(heap: LayoutHeap) -> None:
    heap.memory.put(heap.types.unicode + heap.layout.type_basicsize, 72)


def corrupt_thread_state(heap: LayoutHeap) -> None:
    assert heap.layout.tstate_native_thread_id is not None
    heap.memory.put(heap.tstate + heap.layout.tstate_native_thread_id, 0)


@pytest.mark.parametrize(
    ("corrupt", "said"),
    [
        (corrupt_version, r"Py_Version says 3\.12, not 3\.11"),
        (corrupt_code_type, r"3\.11 layout does not fit .* code objects are 192 bytes, .* 184"),
        (corrupt_str_type, r"3\.11 layout does not fit .* str objects are 72 bytes, .* 80"),
        (corrupt_thread_state, r"3\.11 layout does not fit .* no thread state of its threads"),
    ],
)
def test_an_interpreter_that_does_not_fit_its_layout_is_refused_saying_why(
    corrupt: Callable[[LayoutHeap], None], said: str
) -> None:
    # GIVEN a 3.11 interpreter that differs from the 3.11 headers the layout came from
    heap = LayoutHeap((3, 11))
    corrupt(heap)
    # WHEN a reader is made for it, THEN it is refused, saying what differs: no stack
    # rather than a wrong one
    with pytest.raises(UnsupportedInterpreterError, match=said):
        heap.reader()


def test_an_image_without_py_version_is_not_read_by_an_unchecked_layout() -> None:
    heap = LayoutHeap((3, 12))
    runtime = Runtime((3, 12), heap.runtime, heap.types.code, heap.types.unicode, heap.types.bytes)
    with pytest.raises(UnsupportedInterpreterError, match="no Py_Version"):
        FrameReader(0, heap.memory, runtime, (TID,))


@pytest.mark.parametrize("minor", [9, 10, 13, 14, 15])
def test_only_3_11_and_3_12_take_their_frame_offsets_from_a_generated_layout(minor: int) -> None:
    # (3.13+ publish theirs; 3.9 and 3.10 chain PyFrameObjects, which this reader does not walk)
    with pytest.raises(
        UnsupportedInterpreterError, match=rf"no generated frame layout .* 3\.{minor}"
    ):
        frame_offsets(layout((3, minor)))


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_the_generated_frame_layouts_agree_with_what_each_interpreter_says_of_its_objects(
    version: tuple[int, int],
) -> None:
    # What the headers gave, against the sizes each version's types report (pyenv's and
    # Debian's builds alike: 3.11 184/80/33, 3.12 192/64/33) and the struct facts relied on.
    offsets = frame_offsets(layout(version))
    sizes = {(3, 11): (184, 80), (3, 12): (192, 64)}[version]
    assert (offsets.code_adaptive, layout(version).unicode_object_size) == sizes
    assert offsets.bytes_sval + 1 == 33
    assert offsets.constants.first_instr_unit == -1
    assert offsets.constants.executable_tag_mask == 0
    assert offsets.constants.owner_skipped == ({OWNED_BY_CSTACK} if version == (3, 12) else set())
    assert offsets.constants.unicode_compact_extra == {(3, 11): 24, (3, 12): 16}[version]
