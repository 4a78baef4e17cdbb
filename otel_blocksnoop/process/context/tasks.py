"""The asyncio task a thread is running: its name and its coroutine's qualified name.

3.9-3.13: a task runs in its own context (the C Task enters it for each
step), and a context is entered in one thread at most, so of the tasks
asyncio says are running (``asyncio.tasks._current_tasks``, one per loop),
the thread's is the one whose context the thread is in.

3.14+: each thread state holds its running task, at the offset the
``_asyncio`` extension publishes (``published.AsyncioOffsets``), with where
a task keeps its name and coroutine. The extension is looked for in the
process's mappings until found (it is loaded with asyncio, maybe after the
reader was made), unless the interpreter has it built in.

3.14+ also say who awaits a task (``asyncio.graph``, ``python -m asyncio
pstree``): a task keeps the task awaiting it (``await task``, a TaskGroup's
parent, ``gather``'s caller), or a set of them when several do. The chain is
read upwards, breadth first, from the running task: the names of its
awaiters, then of theirs, up to ``MAX_AWAITERS`` names; those found past the
cap (and futures that are not tasks, which have no name) are only counted. A
chain that cannot be read for sure (an awaiter that is not asyncio's C Task
or Future, a set that changed while read) gives none, counted in
``awaited_by_unsure``: no name rather than a wrong one.

Between tasks (a plain callback) there is none.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import TaskRef
from otel_blocksnoop.process.context.objects import ObjectReader
from otel_blocksnoop.process.context.published import (
    ASYNCIO_FIRST_VERSION,
    AsyncioOffsets,
    PublishedMismatchError,
    asyncio_module_offsets,
)
from otel_blocksnoop.process.context.threads import MAX_INTERPRETERS
from otel_blocksnoop.process.elf import file_mappings

log = logging.getLogger(__name__)

MAX_MODULES = 16384
"""Entries of sys.modules looked through for asyncio's, once per process."""
MAX_MODULE_NAMES = 4096
TASKS_RETRY_S = 5.0
"""How long to wait before looking for asyncio's current tasks again, when not found."""
ASYNCIO_RETRY_S = 0.5
"""3.14+: the same for the _asyncio extension among the mappings (0.7 ms a look, 157 mappings).

Shorter: an app read before it imported asyncio (its start-up, a block) would
otherwise go 5 s without task names, and looks happen only during blocks."""

_ASYNCIO_TASKS = "asyncio.tasks"
_CURRENT_TASKS = "_current_tasks"
"""The dict of loop -> running task that asyncio's C module keeps (3.9-3.13)."""
_TASK_TYPE = "_asyncio.Task"
_FUTURE_TYPE = "_asyncio.Future"

MAX_AWAITERS = 8
"""Tasks named in a task's awaited-by chain; those found past it are only counted."""
MAX_SET_SLOTS = 256
"""Slots of an awaited-by set read (one 4 KiB read); a bigger set's tasks are counted, not named."""
_DUMMY_TYPE = "<dummy key> type"
"""The type of the object a set leaves in a slot whose entry was removed (Objects/setobject.c)."""


class RunningTasks:
    """Finds the running task of a context, through one process's ``ObjectReader``."""

    def __init__(self, objects: ObjectReader, asyncio: AsyncioOffsets | None = None) -> None:
        self._objects = objects
        # asyncio's running-tasks dict of each interpreter, once found (3.9-3.13).
        self._tasks_dicts: BoundedDict[int, int] = BoundedDict(MAX_INTERPRETERS)
        self._retry_at = 0.0
        self._asyncio_retry_at = 0.0
        # 3.14+: the _asyncio module's offsets, given (built in) or once found in the mappings.
        self._asyncio = asyncio
        self._asyncio_refused = False
        self._per_thread = objects.layout.version >= ASYNCIO_FIRST_VERSION
        self.awaited_by_unsure = 0
        """3.14+: awaited-by chains given up because a read could not be sure."""

    def running(self, interp: int, context: int, tstate: int) -> TaskRef | None:
        """The task of interpreter ``interp`` running in ``context`` on thread state ``tstate``."""
        if self._per_thread:
            return self._thread_task(tstate)
        entry = self._running_entry(interp, context)
        if entry is None:
            return None
        objects = self._objects
        task = entry[1]
        if not self._is_c_task(task, objects.layout.task_basicsize):
            return None
        return self._task_ref(task, objects.layout.task_name, objects.layout.task_coro)

    def running_loop(self, interp: int, context: int, tstate: int) -> int | None:
        """The event loop running on thread state ``tstate``, or None when not known.

        3.14+: the thread state's own. Before: asyncio's running tasks are
        keyed by their loop, so the loop is known while a task runs in
        ``context``, not in a plain callback.
        """
        if self._per_thread:
            offsets = self._asyncio_offsets()
            if offsets is None or not offsets.tstate_running_loop:
                return None
            return self._objects.memory.pointer(tstate + offsets.tstate_running_loop) or None
        entry = self._running_entry(interp, context)
        return entry[0] if entry is not None else None

    def _running_entry(self, interp: int, context: int) -> tuple[int, int] | None:
        """3.9-3.13: (loop, task) of the task asyncio says runs in ``context``."""
        tasks = self._current_tasks(interp)
        if tasks is None:
            return None
        objects = self._objects
        for loop, task in objects.dict_items(tasks) or []:
            if objects.memory.pointer(task + objects.layout.task_context) == context:
                return loop, task
        return None

    def _thread_task(self, tstate: int) -> TaskRef | None:
        """3.14+: the task the thread state says it runs; None if it changed while being read."""
        offsets = self._asyncio_offsets()
        if offsets is None:
            return None
        memory = self._objects.memory
        at = tstate + offsets.tstate_running_task
        task = memory.pointer(at)
        if not task or not self._is_c_task(task, offsets.task_size):
            return None
        found = self._task_ref(task, offsets.task_name, offsets.task_coro)
        if found is not None and offsets.task_awaited_by:
            chain = self._awaited_by(task, offsets)
            if chain is None:
                self.awaited_by_unsure += 1
            else:
                found = dataclasses.replace(found, awaited_by=chain[0], awaited_by_more=chain[1])
        return found if memory.pointer(at) == task else None

    def _awaited_by(self, task: int, offsets: AsyncioOffsets) -> tuple[tuple[str, ...], int] | None:
        """The names of the tasks awaiting ``task``, breadth first, and how many more; None: unsure.

        Names of one level are sorted (a set's order is its hashes'), so that
        every read of one block gives the same answer.
        """
        names: list[str] = []
        more = 0
        seen = {task}
        level = [task]
        while level:
            named: list[tuple[str, int]] = []
            for awaited in level:
                found = self._awaiters(awaited, offsets)
                if found is None:
                    return None
                awaiters, uncounted = found
                more += uncounted
                for awaiter in awaiters:
                    if awaiter in seen:
                        continue
                    seen.add(awaiter)
                    if len(names) + len(named) >= MAX_AWAITERS:
                        more += 1
                        continue
                    if not self._is_c_task(awaiter, offsets.task_size):
                        if self._objects.base_named(awaiter, _FUTURE_TYPE) is None:
                            return None  # neither a task nor a future: not what we think
                        more += 1  # a future awaiting it: nameless
                        continue
                    name = self._task_name(awaiter, offsets.task_name)
                    if name is None:
                        return None
                    named.append((name, awaiter))
            named.sort()
            names.extend(name for name, _ in named)
            level = [awaiter for _, awaiter in named]
        return tuple(names), more

    def _awaiters(self, task: int, offsets: AsyncioOffsets) -> tuple[list[int], int] | None:
        """What awaits ``task`` (objects to check), and how many more there are; None: unsure."""
        memory = self._objects.memory
        pointer_at, flag_at = offsets.task_awaited_by, offsets.task_awaited_by_is_set
        first = min(pointer_at, flag_at)
        raw = memory.read(task + first, max(pointer_at + 8, flag_at + 1) - first)
        if raw is None:
            return None
        awaiter = int.from_bytes(raw[pointer_at - first : pointer_at - first + 8], "little")
        is_set = raw[flag_at - first]
        if not awaiter:
            return [], 0
        if is_set == 0:
            return [awaiter], 0
        if is_set != 1 or self._objects.type_name(awaiter) != "set":
            return None
        return self._set_members(awaiter)

    def _set_members(self, obj: int) -> tuple[list[int], int] | None:
        """The members of the set at ``obj`` and 0, or none and its size when it is too big.

        Removed entries leave a dummy in their slot: the live ones must number
        what the set says it holds (``used``), else it changed while read.
        """
        objects = self._objects
        memory, layout = objects.memory, objects.layout
        header_at = layout.set_used
        header_size = max(layout.set_mask, layout.set_table) + 8 - header_at

        def header() -> tuple[int, int, int] | None:
            raw = memory.read(obj + header_at, header_size)
            if raw is None:
                return None
            used, mask, table = (
                int.from_bytes(raw[at - header_at : at - header_at + 8], "little")
                for at in (layout.set_used, layout.set_mask, layout.set_table)
            )
            return used, mask, table

        before = header()
        if before is None:
            return None
        used, mask, table = before
        slots = mask + 1
        if slots & mask or not 0 <= used <= slots:
            return None
        if slots > MAX_SET_SLOTS:
            return [], used
        raw = memory.read_table(table, slots * layout.set_entry_size)
        if raw is None or header() != before:
            return None
        at = layout.set_entry_key
        size = layout.set_entry_size
        keys = [
            int.from_bytes(raw[i + at : i + at + 8], "little") for i in range(0, len(raw), size)
        ]
        members = [key for key in keys if key and objects.type_name(key) != _DUMMY_TYPE]
        return (members, 0) if len(members) == used else None

    def _asyncio_offsets(self) -> AsyncioOffsets | None:
        """The offsets of the target's _asyncio: given, or looked for every ASYNCIO_RETRY_S."""
        if self._asyncio is not None or self._asyncio_refused:
            return self._asyncio
        now = time.monotonic()
        if now < self._asyncio_retry_at:
            return None
        self._asyncio_retry_at = now + ASYNCIO_RETRY_S
        pid = self._objects.memory.pid
        try:
            self._asyncio = asyncio_module_offsets(pid, file_mappings(pid), self._objects.layout)
        except PublishedMismatchError as error:
            self._asyncio_refused = True
            log.warning("asyncio task names disabled for process %d: %s", pid, error)
        except OSError as error:
            log.debug("asyncio module of %d unreadable: %s", pid, error)
        return self._asyncio

    def _current_tasks(self, interp: int) -> int | None:
        """The dict of running tasks asyncio keeps: looked up in sys.modules once, then kept."""
        known = self._tasks_dicts.get(interp)
        if known is not None and self._objects.type_name(known) == "dict":
            return known
        now = time.monotonic()
        if now < self._retry_at:
            return None
        self._retry_at = now + TASKS_RETRY_S
        layout = self._objects.layout
        module = self._entry(interp + layout.interp_modules, _ASYNCIO_TASKS, MAX_MODULES, "module")
        if module is None:
            return None
        tasks = self._entry(module + layout.module_dict, _CURRENT_TASKS, MAX_MODULE_NAMES, "dict")
        if tasks is not None:
            self._tasks_dicts[interp] = tasks
        return tasks

    def _entry(self, dict_at: int, key: str, limit: int, type_name: str) -> int | None:
        """The object of type ``type_name`` under ``key`` in the dict pointed to at ``dict_at``."""
        objects = self._objects
        mapping = objects.memory.pointer(dict_at)
        found = objects.dict_value(mapping, key, limit) if mapping else None
        return found if found is not None and objects.type_name(found) == type_name else None

    def _is_c_task(self, task: int, size: int) -> bool:
        """An ``_asyncio.Task`` (or subclass) of ``size`` bytes, the layout it was measured with."""
        layout = self._objects.layout
        cls = self._objects.base_named(task, _TASK_TYPE)
        if cls is None:
            return False
        return self._objects.memory.ssize(cls + layout.type_basicsize) == size

    def _task_name(self, task: int, name_at: int) -> str | None:
        objects = self._objects
        name_obj = objects.memory.pointer(task + name_at)
        if not name_obj:
            return None
        name = objects.ascii(name_obj)
        if name is None:
            # 3.13+ name tasks lazily: an int N stands for "Task-N".
            number = objects.small_int(name_obj)
            name = f"Task-{number}" if number is not None else None
        return name

    def _task_ref(self, task: int, name_at: int, coro_at: int) -> TaskRef | None:
        objects = self._objects
        memory, layout = objects.memory, objects.layout
        name = self._task_name(task, name_at)
        if name is None:
            return None
        coro = memory.pointer(task + coro_at)
        qualname = None
        if coro and objects.type_name(coro) == "coroutine":
            qualname_obj = memory.pointer(coro + layout.coro_qualname)
            qualname = objects.ascii(qualname_obj) if qualname_obj else None
        return TaskRef(name=name, coroutine=qualname)


__all__ = ["MAX_AWAITERS", "RunningTasks"]
