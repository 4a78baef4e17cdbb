"""The span an app had active on a thread, and the task it ran, read from outside the process.

``ContextReader`` is the face of this package. It follows, in the target's memory:

    _PyRuntime -> interpreters -> thread state of the TID -> tstate.context
    -> ctx_vars (HAMT) -> the ContextVar "current_context" -> OTel Context
    -> its "current-span-*" value -> span.__dict__["_context"] (a SpanContext
    tuple) -> trace_id, span_id, trace_flags (ints)

with the layouts generated per CPython version (``otel_blocksnoop.process.cpython``),
checked from 3.13 against the offsets the running interpreter publishes
(``published``), one module per step: interpreter (finding it), threads
(TID -> thread state), objects (decoding), hamt (context variables), otel
(the span) and tasks (the running asyncio task: found from the same context
up to 3.13, in the thread state from 3.14).
Every object is checked by type name before it is trusted, every loop is
bounded, and the thread's context pointer is read again after the walk: when
it moved (the thread switched task or set a context variable meanwhile), the
walk is redone once, and then given up. ``None`` is the answer whenever
anything is not as expected: a missing link is better than a wrong one.

The cost of one call (median and p99 per CPython version, against
harness/targets/otel_target.py with one context variable and with 41) is
measured by ``bench/run.py --only linking`` and given in BENCHMARKS.md,
"Trace links"; rerun it after changing the walk. The target is never stopped
(no ptrace, no signal); what the reads cost it (page-table lock contention at
most) is in the same section, as the throughput of a traced HTTP server with
links on and off.

Unsupported, with the reason in ``unsupported``: CPython outside 3.9-3.15, builds
whose published offsets disagree with the generated layout (3.13+),
free-threaded (``3.13t``) builds, other interpreters, and interpreters without
a ``_PyRuntime`` symbol (stripped or static). uvloop needs nothing of its own:
it runs tasks in their contexts as asyncio does. On 3.9 and 3.10,
thread states hold ``pthread_self()`` only; the TID is taken from glibc's
``struct pthread`` at an offset found in the sidecar's own process, so the
target must use the same glibc (a container with another one may not match:
no thread is then found, and the answer is None).
"""

from __future__ import annotations

import logging

from otel_blocksnoop.events import ReadyWork, SpanRef, ThreadContext
from otel_blocksnoop.process.context.hamt import CONTEXT_TYPES, HamtReader
from otel_blocksnoop.process.context.interpreter import (
    Interpreter,
    UnsupportedInterpreterError,
    find_interpreter,
)
from otel_blocksnoop.process.context.objects import ObjectReader
from otel_blocksnoop.process.context.otel import CONTEXT_VAR_NAME, SPAN_KEY_PREFIX, CurrentSpans
from otel_blocksnoop.process.context.ready import ReadyQueues
from otel_blocksnoop.process.context.tasks import RunningTasks
from otel_blocksnoop.process.context.threads import ThreadStates
from otel_blocksnoop.process.cpython import CPythonLayout
from otel_blocksnoop.process.pidns import NamespaceIds
from otel_blocksnoop.process.remote_memory import RemoteMemory

log = logging.getLogger(__name__)

ATTEMPTS = 2
"""Walks per call: one, and one more if the thread's context moved during the first."""

NOTHING = ThreadContext(span=None, task=None)


class _Stale(Exception):  # noqa: N818 (internal control flow, not an error)
    """The context moved under the reader: start the walk again."""


class _Walk:
    """One thread's context, from its thread state to its span and task, in one interpreter."""

    def __init__(self, memory: RemoteMemory, interpreter: Interpreter) -> None:
        layout = interpreter.layout
        self.memory = memory
        self.layout = layout
        self.objects = ObjectReader(memory, layout, interpreter.image)
        self.threads = ThreadStates(memory, layout, interpreter.runtime, interpreter.tid_offset)
        self.spans = CurrentSpans(self.objects, HamtReader(self.objects))
        self.tasks = RunningTasks(self.objects, interpreter.asyncio)
        self.queues = ReadyQueues(self.objects, self.spans)

    def read(self, tid: int) -> ThreadContext:
        """The span and task of ``tid``; raises _Stale when its context moved meanwhile."""
        memory, layout = self.memory, self.layout
        self.objects.new_walk()
        found = self.threads.find(tid)
        if found is None:
            return NOTHING
        tstate, interp = found
        context = memory.pointer(tstate + layout.tstate_context)
        if not context or self.objects.type_name(context) not in CONTEXT_TYPES:
            return NOTHING
        variables = memory.pointer(context + layout.context_vars)
        span = self.spans.span_in(variables) if variables else None
        task = self.tasks.running(interp, context, tstate)
        # Same context, same variables after the walk: nothing it read was replaced.
        if (
            memory.pointer(tstate + layout.tstate_context) != context
            or memory.pointer(context + layout.context_vars) != variables
        ):
            raise _Stale
        return ThreadContext(span=span, task=task, context=context)

    def ready(self, tid: int, again: bool) -> ReadyWork | None:
        """The ready callbacks of the loop ``tid`` runs, if it is known which loop that is."""
        self.objects.new_walk()
        found = self.threads.find(tid)
        if found is None:
            return None
        tstate, interp = found
        context = self.memory.pointer(tstate + self.layout.tstate_context)
        loop = self.tasks.running_loop(interp, context or 0, tstate)
        return self.queues.ready(loop, again) if loop else None

    def context_address(self, tid: int) -> int | None:
        """Where ``tid``'s current context pointer is (its thread state's field), if found."""
        self.objects.new_walk()
        found = self.threads.find(tid)
        return None if found is None else found[0] + self.layout.tstate_context


class ContextReader:
    """Reads the active OpenTelemetry span of a thread of another CPython process.

    Construction looks the interpreter up once (version, ``_PyRuntime``); when
    the target cannot be read, ``unsupported`` says why (the caller decides
    whether to warn), and ``active_span`` returns None. Neither raises. Make it once the target's
    interpreter runs (libpython mapped, main thread state made), e.g. at its
    first block when the sidecar launched it, not at its first instruction.
    """

    pid: int
    unsupported: str | None
    """Why this target cannot be read, or None."""
    layout: CPythonLayout | None

    def __init__(self, pid: int) -> None:
        memory = RemoteMemory(pid)
        interpreter: Interpreter | None = None
        unsupported: str | None = None
        try:
            interpreter = find_interpreter(memory)
        except UnsupportedInterpreterError as error:
            unsupported = str(error)
        except OSError as error:
            unsupported = f"cannot inspect process {pid}: {error}"
        except Exception as error:  # a corrupt or odd file must not take the caller down  # noqa: BLE001
            unsupported = f"cannot read the interpreter of process {pid}: {error!r}"
        self._start(memory, interpreter, unsupported)

    @classmethod
    def from_parts(
        cls,
        memory: RemoteMemory,
        layout: CPythonLayout,
        runtime: int,
        tid_offset: int | None = None,
    ) -> ContextReader:
        """A reader whose interpreter is already known: ``_PyRuntime`` at ``runtime``.

        For callers that found the interpreter another way, and for tests that
        give a memory of their own making. ``tid_offset`` is glibc's TID offset
        in ``struct pthread``, needed on 3.9 and 3.10.
        """
        unsupported = None
        if layout.tstate_native_thread_id is None and tid_offset is None:
            unsupported = "3.9 and 3.10 need glibc's TID offset"
        reader = cls.__new__(cls)
        interpreter = Interpreter(layout=layout, runtime=runtime, tid_offset=tid_offset)
        reader._start(memory, interpreter, unsupported)  # noqa: SLF001 (its own class)
        return reader

    def _start(
        self, memory: RemoteMemory, interpreter: Interpreter | None, unsupported: str | None
    ) -> None:
        self.pid = memory.pid
        self.unsupported = unsupported
        self.layout = interpreter.layout if interpreter is not None else None
        self._memory = memory
        self._walk = _Walk(memory, interpreter) if interpreter and not unsupported else None
        # Thread states hold the tid the app sees (its own PID namespace), callers ours.
        self._ids = NamespaceIds()
        self.moved = 0
        """Reads given up because the context moved under every attempt."""
        self.errors = 0
        """Reads given up on an unexpected error (a bug, or memory beyond belief)."""

    @property
    def reads(self) -> int:
        """``process_vm_readv`` calls made so far."""
        return self._memory.reads

    @property
    def awaited_by_unsure(self) -> int:
        """3.14+: reads whose task's awaited-by chain could not be read for sure (none given)."""
        return self._walk.tasks.awaited_by_unsure if self._walk is not None else 0

    @property
    def unknown_spans(self) -> int:
        """Current spans found whose SpanContext could not be (an unknown OpenTelemetry)."""
        return self._walk.spans.unknown_spans if self._walk is not None else 0

    def active_span(self, tid: int) -> SpanRef | None:
        """The span active on native thread ``tid`` now, or None (none, or not readable)."""
        return self.thread_context(tid).span

    def context_address(self, tid: int) -> int | None:
        """Address of the field of ``tid``'s thread state that points to its current context.

        The kernel reads it at each sighting of a blocked loop to tell the
        requests of one iteration apart. None when the thread has no thread
        state (not Python, or not found) or the target cannot be read.
        """
        if self._walk is None or self.unsupported is not None:
            return None
        try:
            return self._walk.context_address(self._ids.app_tid(self.pid, tid))
        except Exception:  # the target's memory is untrusted: never fail the caller
            self.errors += 1
            log.debug("thread state of %d/%d unreadable", self.pid, tid, exc_info=True)
            return None

    def ready_work(self, tid: int, again: bool = False) -> ReadyWork | None:
        """The callbacks the loop of native thread ``tid`` has ready to run, when known.

        Those are what a block of the thread delays. ``again``: the thread is in
        the same block as at the last call (what was read of the queue's
        contexts then still holds). None when its loop is not known (uvloop,
        a plain callback before 3.14) or the queue cannot be read for sure.
        """
        if self._walk is None or self.unsupported is not None:
            return None
        try:
            return self._walk.ready(self._ids.app_tid(self.pid, tid), again)
        except Exception:  # the target's memory is untrusted: never fail the caller
            self.errors += 1
            log.debug("ready queue of %d/%d unreadable", self.pid, tid, exc_info=True)
            return None

    def thread_context(self, tid: int) -> ThreadContext:
        """The span active on native thread ``tid`` now and the asyncio task it runs.

        Either is None when there is none or it cannot be read.
        """
        if self._walk is None or self.unsupported is not None:
            return NOTHING
        app_tid = self._ids.app_tid(self.pid, tid)
        try:
            for _ in range(ATTEMPTS):
                try:
                    return self._walk.read(app_tid)
                except _Stale:
                    continue
            self.moved += 1
        except Exception:  # the target's memory is untrusted: never fail the caller
            self.errors += 1
            log.debug("context of %d/%d unreadable", self.pid, tid, exc_info=True)
        return NOTHING


__all__ = [
    "CONTEXT_VAR_NAME",
    "NOTHING",
    "SPAN_KEY_PREFIX",
    "ContextReader",
]
