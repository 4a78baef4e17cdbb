"""The running task's awaited-by chain (3.14+), read from a forged heap.

A task keeps what awaits it as one object, or as a set when several do
(``Py_AsyncioModuleDebugOffsets.task_awaited_by``/``_is_set``). The reader
names the tasks up the chain, breadth first, up to a cap, and counts the
rest; what it cannot be sure of gives no chain at all, counted.
"""

from __future__ import annotations

import dataclasses

import pytest

from harness.forged_heap import ForgedMemory
from otel_blocksnoop.process.context.objects import ObjectReader
from otel_blocksnoop.process.context.published import AsyncioOffsets
from otel_blocksnoop.process.context.tasks import MAX_AWAITERS, RunningTasks
from otel_blocksnoop.process.cpython import CPythonLayout, layout_for

VERSIONS = [(3, 14), (3, 15)]
RUNNING_TASK = 872
AWAITED_BY, IS_SET = 96, 109  # where Debian's 3.14 and 3.15 keep them


class Heap:
    """Tasks, futures and sets laid out as ``layout`` says, in a forged memory."""

    def __init__(self, layout: CPythonLayout) -> None:
        self.layout = layout
        self.memory = ForgedMemory()
        self.offsets = AsyncioOffsets(
            RUNNING_TASK,
            layout.task_basicsize,
            136,
            128,
            task_awaited_by=AWAITED_BY,
            task_awaited_by_is_set=IS_SET,
        )
        self.str_type = self.make_type("str")
        self.task_type = self.make_type("_asyncio.Task", layout.task_basicsize)
        self.future_type = self.make_type("_asyncio.Future", 96)
        self.set_type = self.make_type("set")
        self.dummy = self.memory.alloc(32)
        self.memory.put(self.dummy + layout.object_type, self.make_type("<dummy key> type"))
        self.tstate = self.memory.alloc(2048)

    def make_type(self, name: str, size: int = 32) -> int:
        memory, layout = self.memory, self.layout
        text = memory.alloc(len(name) + 1)
        memory.put_bytes(text, name.encode() + b"\0")
        cls = memory.alloc(512)
        memory.put(cls + layout.type_name, text)
        memory.put(cls + layout.type_basicsize, size)
        return cls

    def string(self, text: str) -> int:
        memory, layout = self.memory, self.layout
        address = memory.alloc(layout.unicode_ascii_data + len(text) + 1)
        memory.put(address + layout.object_type, self.str_type)
        memory.put(address + layout.unicode_length, len(text))
        memory.put(address + layout.unicode_state, layout.unicode_ascii_mask | 32, 4)
        memory.put_bytes(address + layout.unicode_ascii_data, text.encode() + b"\0")
        return address

    def task(self, name: str, *awaiters: int) -> int:
        task = self.memory.alloc(self.layout.task_basicsize)
        self.memory.put(task + self.layout.object_type, self.task_type)
        self.memory.put(task + self.offsets.task_name, self.string(name))
        self.awaited_by(task, *awaiters)
        return task

    def future(self) -> int:
        future = self.memory.alloc(96)
        self.memory.put(future + self.layout.object_type, self.future_type)
        return future

    def awaited_by(self, task: int, *awaiters: int, dummies: int = 0, used: int = -1) -> None:
        """``awaiters`` await ``task``: one as itself, several as a set (``dummies`` removed)."""
        memory = self.memory
        if len(awaiters) <= 1 and not dummies:
            memory.put(task + AWAITED_BY, awaiters[0] if awaiters else 0)
            memory.put(task + IS_SET, 0, 1)
            return
        layout = self.layout
        slots = 8
        while slots < 2 * (len(awaiters) + dummies):
            slots *= 2
        table = memory.alloc(slots * layout.set_entry_size)
        for i, key in enumerate([*awaiters, *[self.dummy] * dummies]):
            slot = (i * 5 + 3) % slots  # scattered, as hashes place them
            memory.put(table + slot * layout.set_entry_size + layout.set_entry_key, key)
        members = memory.alloc(256)
        memory.put(members + layout.object_type, self.set_type)
        memory.put(members + layout.set_used, len(awaiters) if used < 0 else used)
        memory.put(members + layout.set_mask, slots - 1)
        memory.put(members + layout.set_table, table)
        memory.put(task + AWAITED_BY, members)
        memory.put(task + IS_SET, 1, 1)

    def running(self, task: int) -> RunningTasks:
        self.memory.put(self.tstate + RUNNING_TASK, task)
        return RunningTasks(ObjectReader(self.memory, self.layout), self.offsets)


def heap(version: tuple[int, int]) -> Heap:
    found = layout_for(*version)
    assert found is not None
    return Heap(found)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_the_chain_is_named_nearest_first_and_each_level_sorted(version: tuple[int, int]) -> None:
    # GIVEN root awaiting request-b and request-a (gather), each awaiting the blocked task
    h = heap(version)
    root = h.task("root")
    blocked = h.task("blocked")
    h.awaited_by(blocked, h.task("request-b", root), h.task("request-a", root), dummies=2)
    tasks = h.running(blocked)

    # WHEN the running task is read THEN its awaiters come first, sorted, root once after them
    found = tasks.running(0, 0, h.tstate)
    assert found is not None
    assert (found.awaited_by, found.awaited_by_more) == (("request-a", "request-b", "root"), 0)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_no_awaiter_is_an_empty_chain(version: tuple[int, int]) -> None:
    h = heap(version)
    found = h.running(h.task("alone")).running(0, 0, h.tstate)
    assert found is not None
    assert found.awaited_by == ()


def test_past_the_cap_awaiters_are_counted_and_a_future_is_counted_unnamed() -> None:
    # GIVEN a task awaited by a future (no name) and by more tasks than the cap
    h = heap((3, 14))
    waiters = [h.task(f"waiter-{i:02}") for i in range(MAX_AWAITERS + 3)]
    blocked = h.task("blocked", h.future(), *waiters)

    found = h.running(blocked).running(0, 0, h.tstate)

    assert found is not None
    assert found.awaited_by is not None
    assert len(found.awaited_by) == MAX_AWAITERS
    assert found.awaited_by_more == 3 + 1


@pytest.mark.parametrize(
    "spoil",
    [
        "set says more than it holds",
        "an awaiter of another type",
        "a set flag that is neither 0 nor 1",
        "a set object that is not a set",
    ],
)
def test_a_chain_that_cannot_be_read_for_sure_gives_none_and_is_counted(spoil: str) -> None:
    # GIVEN a blocked task whose awaiters are not what they should be
    h = heap((3, 14))
    first, second = h.task("request-1"), h.task("request-2")
    blocked = h.task("blocked")
    if spoil == "set says more than it holds":
        h.awaited_by(blocked, first, second, used=3)
    elif spoil == "an awaiter of another type":
        h.awaited_by(blocked, first, h.string("not a task"))
    elif spoil == "a set flag that is neither 0 nor 1":
        h.awaited_by(blocked, first, second)
        h.memory.put(blocked + IS_SET, 2, 1)
    else:
        h.awaited_by(blocked, first, second)
        members = h.memory.pointer(blocked + AWAITED_BY) or 0
        h.memory.put(members + h.layout.object_type, h.future_type)
    tasks = h.running(blocked)

    # WHEN it is read THEN the task is still named, with no chain, and that is counted
    found = tasks.running(0, 0, h.tstate)
    assert found is not None
    assert (found.name, found.awaited_by) == ("blocked", None)
    assert tasks.awaited_by_unsure == 1


def test_offsets_without_the_awaited_by_fields_read_no_chain() -> None:
    # GIVEN offsets that do not say where a task's awaiters are
    h = heap((3, 14))
    h.running(h.task("blocked", h.task("request-1")))
    tasks = RunningTasks(
        ObjectReader(h.memory, h.layout), dataclasses.replace(h.offsets, task_awaited_by=0)
    )
    found = tasks.running(0, 0, h.tstate)
    assert found is not None
    assert found.awaited_by is None
    assert tasks.awaited_by_unsure == 0
