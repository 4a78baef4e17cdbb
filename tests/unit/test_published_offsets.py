"""What CPython 3.13+ publishes of its own layout, checked against the generated one.

A forged ``_Py_DebugOffsets`` (3.13-3.15) and a forged ``.AsyncioDebug``
section (3.14, 3.15) agree with the generated layouts or are refused, naming
what differs; and on 3.14+ the running task is the one the thread state
names, read by the offsets the section gives.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from harness.forged_heap import ForgedMemory
from otel_blocksnoop.events import TaskRef
from otel_blocksnoop.process.context import tasks as tasks_module
from otel_blocksnoop.process.context.objects import ObjectReader
from otel_blocksnoop.process.context.published import (
    DEBUG_COOKIE,
    AsyncioOffsets,
    PublishedMismatchError,
    asyncio_offsets,
    check_debug_offsets,
)
from otel_blocksnoop.process.context.tasks import RunningTasks
from otel_blocksnoop.process.cpython import CPythonLayout, layout_for
from otel_blocksnoop.process.elf import ElfSymbols

PUBLISHING = [(3, 13), (3, 14), (3, 15)]
PER_THREAD_TASK = [(3, 14), (3, 15)]
# What Debian sid's builds publish (readelf of _asyncio, ENVIRONMENT.md): running task at
RUNNING_TASK = {(3, 14): 872, (3, 15): 1032}
THREAD_STATE_IMPL = {(3, 14): 936, (3, 15): 1104}


def layout(version: tuple[int, int]) -> CPythonLayout:
    found = layout_for(*version)
    assert found is not None
    return found


def published(found: CPythonLayout, **changes: int) -> tuple[ForgedMemory, int]:
    """A forged _PyRuntime whose _Py_DebugOffsets says what ``found`` says, but ``changes``."""
    memory = ForgedMemory()
    runtime = memory.alloc(4096)
    memory.put_bytes(runtime, DEBUG_COOKIE)
    major, minor = found.version
    memory.put(runtime + (found.debug_offsets_version or 0), major << 24 | minor << 16 | 0xF0)
    memory.put(runtime + (found.debug_offsets_free_threaded or 0), 0)
    for name, at in found.debug_checks:
        memory.put(runtime + at, changes.get(name, getattr(found, name)))
    return memory, runtime


@pytest.mark.parametrize("version", PUBLISHING, ids=lambda v: f"{v[0]}.{v[1]}")
def test_an_interpreter_that_publishes_our_offsets_is_read(version: tuple[int, int]) -> None:
    # GIVEN a runtime whose _Py_DebugOffsets agree with the generated layout
    found = layout(version)
    memory, runtime = published(found)
    # WHEN it is checked THEN nothing is refused, and the thread walk's offsets were compared
    check_debug_offsets(memory, found, runtime)
    checked = {name for name, _ in found.debug_checks}
    assert {"tstate_size", "tstate_native_thread_id", "interp_size", "runtime_size"} <= checked


@pytest.mark.parametrize("version", PUBLISHING, ids=lambda v: f"{v[0]}.{v[1]}")
@pytest.mark.parametrize("field", ["tstate_size", "tstate_native_thread_id", "interp_size"])
def test_a_build_laid_out_otherwise_is_refused_naming_the_field(
    version: tuple[int, int], field: str
) -> None:
    # GIVEN a runtime built otherwise (Debian's JIT moved this field or grew this struct)
    found = layout(version)
    memory, runtime = published(found, **{field: getattr(found, field) + 8})
    # WHEN it is checked THEN it is refused, and the message says what differs
    with pytest.raises(PublishedMismatchError, match=field):
        check_debug_offsets(memory, found, runtime)


def test_another_minor_version_or_a_free_threaded_build_is_refused() -> None:
    found = layout((3, 14))
    memory, runtime = published(found)
    memory.put(runtime + (found.debug_offsets_version or 0), 3 << 24 | 15 << 16)
    with pytest.raises(PublishedMismatchError, match=r"says 3\.15"):
        check_debug_offsets(memory, found, runtime)
    memory, runtime = published(found)
    memory.put(runtime + (found.debug_offsets_free_threaded or 0), 1)
    with pytest.raises(PublishedMismatchError, match="free-threaded"):
        check_debug_offsets(memory, found, runtime)
    memory, runtime = published(found)
    memory.put_bytes(runtime, b"notdebug")
    with pytest.raises(PublishedMismatchError, match="cookie"):
        check_debug_offsets(memory, found, runtime)


def test_before_3_13_there_is_nothing_to_check() -> None:
    found = layout((3, 12))
    assert found.debug_checks == ()
    check_debug_offsets(ForgedMemory(), found, 0)  # reads nothing, refuses nothing


_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION = struct.Struct("<IIQQQQIIQQ")
_PROGRAM = struct.Struct("<IIQQQQQQ")


def elf_with_section(name: bytes, contents: bytes) -> ElfSymbols:
    """A minimal ELF image holding one named section (and the section names)."""
    names = b"\0.shstrtab\0" + name + b"\0"
    names_at = _HEADER.size + _PROGRAM.size
    contents_at = names_at + len(names)
    sections_at = contents_at + len(contents)
    sections = [
        _SECTION.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        _SECTION.pack(1, 3, 0, 0, names_at, len(names), 0, 0, 1, 0),
        _SECTION.pack(11, 1, 3, 0x1000, contents_at, len(contents), 0, 0, 32, 0),
    ]
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = _HEADER.pack(
        ident, 3, 62, 1, 0, _HEADER.size, sections_at, 0, _HEADER.size, _PROGRAM.size, 1, 64, 3, 1
    )
    program = _PROGRAM.pack(1, 5, 0, 0, 0, sections_at, sections_at, 0x1000)
    data = header + program + names + contents + b"".join(sections)
    return ElfSymbols.from_bytes(data)


def asyncio_section(found: CPythonLayout, **changes: int) -> bytes:
    """Py_AsyncioModuleDebugOffsets as Debian's _asyncio has it, but ``changes``."""
    running = RUNNING_TASK[found.version]
    value = {
        "task_size": found.task_basicsize,
        "task_name": found.task_name,
        "task_awaited_by": 96,
        "task_is_task": 108,
        "task_awaited_by_is_set": 109,
        "task_coro": found.task_coro,
        "task_node": 152,
        "interp_size": found.interp_size,
        "interp_tasks_head": 10880,
        "tstate_size": THREAD_STATE_IMPL[found.version],
        "tstate_running_loop": running - 8,
        "tstate_running_task": running,
        "tstate_tasks_head": running + 8,
    } | changes
    return struct.pack("<13Q", *value.values())


@pytest.mark.parametrize("version", PER_THREAD_TASK, ids=lambda v: f"{v[0]}.{v[1]}")
def test_the_asyncio_module_says_where_the_running_task_is(version: tuple[int, int]) -> None:
    # GIVEN an _asyncio whose .AsyncioDebug agrees with the generated layout
    found = layout(version)
    elf = elf_with_section(b".AsyncioDebug", asyncio_section(found))
    # WHEN it is read THEN it gives the running task's offset, and the task's fields
    assert asyncio_offsets(elf, found) == AsyncioOffsets(
        tstate_running_task=RUNNING_TASK[version],
        task_size=found.task_basicsize,
        task_name=found.task_name,
        task_coro=found.task_coro,
        tstate_running_loop=RUNNING_TASK[version] - 8,
        task_awaited_by=96,
        task_awaited_by_is_set=109,
    )


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"task_size": 176}, "task_size"),
        ({"task_name": 144}, "task_name"),
        ({"interp_size": 8}, "interp_size"),
        ({"tstate_running_task": 64}, "running task at 64"),
        ({"tstate_running_task": 4096}, "running task at 4096"),
        ({"tstate_running_loop": 64}, "running loop at 64"),
        ({"task_awaited_by": 168}, "awaiters at 168"),
        ({"task_awaited_by_is_set": 0}, "set flag 0"),
    ],
)
def test_an_asyncio_module_of_another_build_is_refused(change: dict[str, int], said: str) -> None:
    found = layout((3, 15))
    elf = elf_with_section(b".AsyncioDebug", asyncio_section(found, **change))
    with pytest.raises(PublishedMismatchError, match=said):
        asyncio_offsets(elf, found)


def test_a_section_of_another_shape_is_refused_and_none_is_nothing() -> None:
    found = layout((3, 14))
    with pytest.raises(PublishedMismatchError, match="holds 96 bytes"):
        asyncio_offsets(elf_with_section(b".AsyncioDebug", bytes(96)), found)
    assert asyncio_offsets(elf_with_section(b".OtherDebug", asyncio_section(found)), found) is None


@dataclass(frozen=True)
class ForgedTask:
    """A thread state whose running task is a C Task named "Task-7" running handle()."""

    memory: ForgedMemory
    tstate: int
    task: int
    task_type: int
    offsets: AsyncioOffsets


def forged_task(found: CPythonLayout) -> ForgedTask:
    offsets = AsyncioOffsets(RUNNING_TASK[found.version], found.task_basicsize, 136, 128)
    memory = ForgedMemory()

    def make_type(name: str, size: int = 32) -> int:
        text = memory.alloc(len(name) + 1)
        memory.put_bytes(text, name.encode() + b"\0")
        cls = memory.alloc(512)
        memory.put(cls + found.type_name, text)
        memory.put(cls + found.type_basicsize, size)
        return cls

    str_type = make_type("str")

    def string(text: str) -> int:
        address = memory.alloc(found.unicode_ascii_data + len(text) + 1)
        memory.put(address + found.object_type, str_type)
        memory.put(address + found.unicode_length, len(text))
        state = found.unicode_ascii_mask | found.unicode_compact_mask
        memory.put(address + found.unicode_state, state, 4)
        memory.put_bytes(address + found.unicode_ascii_data, text.encode() + b"\0")
        return address

    task_type = make_type("_asyncio.Task", found.task_basicsize)
    coro = memory.alloc(128)
    memory.put(coro + found.object_type, make_type("coroutine"))
    memory.put(coro + found.coro_qualname, string("handle"))
    task = memory.alloc(found.task_basicsize)
    memory.put(task + found.object_type, task_type)
    memory.put(task + offsets.task_name, string("Task-7"))
    memory.put(task + offsets.task_coro, coro)
    tstate = memory.alloc(2048)
    memory.put(tstate + offsets.tstate_running_task, task)
    return ForgedTask(memory, tstate, task, task_type, offsets)


TASK_7 = TaskRef(name="Task-7", coroutine="handle")


@pytest.mark.parametrize("version", PER_THREAD_TASK, ids=lambda v: f"{v[0]}.{v[1]}")
def test_the_running_task_is_the_one_the_thread_state_names(version: tuple[int, int]) -> None:
    # GIVEN a thread state whose running task is a C Task named "Task-7" running handle()
    found = layout(version)
    forged = forged_task(found)
    memory = forged.memory
    tasks = RunningTasks(ObjectReader(memory, found), forged.offsets)

    # WHEN the thread runs it, THEN it is named; WHEN it runs none, THEN there is none
    assert tasks.running(0, 0, forged.tstate) == TASK_7
    memory.put(forged.tstate + forged.offsets.tstate_running_task, 0)
    assert tasks.running(0, 0, forged.tstate) is None
    # AND a task of another size (another build's Task) is not trusted
    memory.put(forged.tstate + forged.offsets.tstate_running_task, forged.task)
    memory.put(forged.task_type + found.type_basicsize, found.task_basicsize + 8)
    assert tasks.running(0, 0, forged.tstate) is None


def test_an_asyncio_loaded_after_the_first_read_is_found_within_half_a_second(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a 3.14 app read before it imported asyncio (no _asyncio mapped yet)
    found = layout((3, 14))
    forged = forged_task(found)
    now = [100.0]
    looks: list[float] = []
    loaded: list[AsyncioOffsets | None] = [None]

    def module_offsets(*_: object) -> AsyncioOffsets | None:
        looks.append(now[0])
        return loaded[0]

    monkeypatch.setattr(tasks_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(tasks_module, "file_mappings", lambda _pid: [])
    monkeypatch.setattr(tasks_module, "asyncio_module_offsets", module_offsets)
    tasks = RunningTasks(ObjectReader(forged.memory, found))
    assert tasks.running(0, 0, forged.tstate) is None
    # WHEN it loads it, THEN reads within the next half second do not look again...
    loaded[0] = forged.offsets
    now[0] += 0.4
    assert tasks.running(0, 0, forged.tstate) is None
    # ...and the first read after it finds it, and names the task, without looking again
    now[0] += 0.2
    assert tasks.running(0, 0, forged.tstate) == TASK_7
    assert tasks.running(0, 0, forged.tstate) == TASK_7
    assert looks == [100.0, pytest.approx(100.6)]

    # AND an _asyncio of another build is said once, and never looked at again
    def refused(*_: object) -> AsyncioOffsets | None:
        looks.append(now[0])
        raise PublishedMismatchError(".AsyncioDebug disagrees (task_size: 1, expected 168)")

    monkeypatch.setattr(tasks_module, "asyncio_module_offsets", refused)
    other = RunningTasks(ObjectReader(forged.memory, found))
    with caplog.at_level(logging.WARNING, logger=tasks_module.__name__):
        for _ in range(3):
            now[0] += 1.0
            assert other.running(0, 0, forged.tstate) is None
    assert len(looks) == 3
    said = "asyncio task names disabled for process 0: .AsyncioDebug disagrees"
    assert [r.getMessage() for r in caplog.records] == [f"{said} (task_size: 1, expected 168)"]
