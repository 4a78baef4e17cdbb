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

Between tasks (a plain callback) there is none.
"""

from __future__ import annotations

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

    def running(self, interp: int, context: int, tstate: int) -> TaskRef | None:
        """The task of interpreter ``interp`` running in ``context`` on thread state ``tstate``."""
        if self._per_thread:
            return self._thread_task(tstate)
        tasks = self._current_tasks(interp)
        if tasks is None:
            return None
        objects = self._objects
        for _, task in objects.dict_items(tasks) or []:
            if objects.memory.pointer(task + objects.layout.task_context) == context:
                if not self._is_c_task(task, objects.layout.task_basicsize):
                    return None
                return self._task_ref(task, objects.layout.task_name, objects.layout.task_coro)
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
        return found if memory.pointer(at) == task else None

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

    def _task_ref(self, task: int, name_at: int, coro_at: int) -> TaskRef | None:
        objects = self._objects
        memory, layout = objects.memory, objects.layout
        name_obj = memory.pointer(task + name_at)
        if not name_obj:
            return None
        name = objects.ascii(name_obj)
        if name is None:
            # 3.13 names tasks lazily: an int N stands for "Task-N".
            number = objects.small_int(name_obj)
            name = f"Task-{number}" if number is not None else None
        if name is None:
            return None
        coro = memory.pointer(task + coro_at)
        qualname = None
        if coro and objects.type_name(coro) == "coroutine":
            qualname_obj = memory.pointer(coro + layout.coro_qualname)
            qualname = objects.ascii(qualname_obj) if qualname_obj else None
        return TaskRef(name=name, coroutine=qualname)


__all__ = ["RunningTasks"]
