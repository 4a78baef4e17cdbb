"""The asyncio task a thread is running: its name and its coroutine's qualified name.

A task runs in its own context (the C Task enters it for each step), and a
context is entered in one thread at most, so of the tasks asyncio says are
running, one per loop, the thread's is the one whose context the thread is
in. Between tasks (a plain callback) there is none.
"""

from __future__ import annotations

import time

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import TaskRef
from otel_blocksnoop.process.context.objects import ObjectReader
from otel_blocksnoop.process.context.threads import MAX_INTERPRETERS

MAX_MODULES = 16384
"""Entries of sys.modules looked through for asyncio's, once per process."""
MAX_MODULE_NAMES = 4096
TASKS_RETRY_S = 5.0
"""How long to wait before looking for asyncio's current tasks again, when not found."""

_ASYNCIO_TASKS = "asyncio.tasks"
_CURRENT_TASKS = "_current_tasks"
"""The dict of loop -> running task that asyncio's C module keeps (3.9-3.13)."""
_TASK_TYPE = "_asyncio.Task"


class RunningTasks:
    """Finds the running task of a context, through one process's ``ObjectReader``."""

    def __init__(self, objects: ObjectReader) -> None:
        self._objects = objects
        # asyncio's running-tasks dict of each interpreter, once found.
        self._tasks_dicts: BoundedDict[int, int] = BoundedDict(MAX_INTERPRETERS)
        self._retry_at = 0.0

    def running(self, interp: int, context: int) -> TaskRef | None:
        """The task of interpreter ``interp`` running in ``context``, or None."""
        tasks = self._current_tasks(interp)
        if tasks is None:
            return None
        objects = self._objects
        for _, task in objects.dict_items(tasks) or []:
            if objects.memory.pointer(task + objects.layout.task_context) == context:
                return self._task_ref(task) if self._is_c_task(task) else None
        return None

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

    def _is_c_task(self, task: int) -> bool:
        """An ``_asyncio.Task`` (or subclass) of the layout this version was measured with."""
        layout = self._objects.layout
        cls = self._objects.base_named(task, _TASK_TYPE)
        if cls is None:
            return False
        return self._objects.memory.ssize(cls + layout.type_basicsize) == layout.task_basicsize

    def _task_ref(self, task: int) -> TaskRef | None:
        objects = self._objects
        memory, layout = objects.memory, objects.layout
        name_obj = memory.pointer(task + layout.task_name)
        if not name_obj:
            return None
        name = objects.ascii(name_obj)
        if name is None:
            # 3.13 names tasks lazily: an int N stands for "Task-N".
            number = objects.small_int(name_obj)
            name = f"Task-{number}" if number is not None else None
        if name is None:
            return None
        coro = memory.pointer(task + layout.task_coro)
        qualname = None
        if coro and objects.type_name(coro) == "coroutine":
            qualname_obj = memory.pointer(coro + layout.coro_qualname)
            qualname = objects.ascii(qualname_obj) if qualname_obj else None
        return TaskRef(name=name, coroutine=qualname)


__all__ = ["RunningTasks"]
