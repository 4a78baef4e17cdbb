"""The span an app had active on a thread, read from outside the process.

OpenTelemetry Python keeps the current ``Context`` (a dict subclass) in a
``contextvars.ContextVar`` named ``current_context``; the span sits under the
key ``current-span-<uuid>``. ``ContextReader`` follows, in the target's memory:

    _PyRuntime -> interpreters -> thread state of the TID -> tstate.context
    -> ctx_vars (HAMT) -> the ContextVar "current_context" -> OTel Context
    -> its "current-span-*" value -> span.__dict__["_context"] (a SpanContext
    tuple) -> trace_id, span_id, trace_flags (ints)

with the layouts generated per CPython version (``otel_blocksnoop.process.cpython``).
Every object is checked by type name before it is trusted, every loop is
bounded, and the thread's context pointer is read again after the walk: when
it moved (the thread switched task or set a context variable meanwhile), the
walk is redone once, and then given up. ``None`` is the answer whenever
anything is not as expected: a missing link is better than a wrong one.

The cost of one call (median and p99 per CPython version, against
tests/targets/otel_target.py with one context variable and with 41) is
measured by ``bench/run.py --only linking`` and given in BENCHMARKS.md,
"Trace links"; rerun it after changing the walk. The target is never stopped
(no ptrace, no signal); what the reads cost it (page-table lock contention at
most) is in the same section, as the throughput of a traced HTTP server with
links on and off.

Unsupported, with the reason in ``unsupported``: CPython outside 3.9-3.13,
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
import struct
import time
from pathlib import Path

from otel_blocksnoop.events import SpanRef, TaskRef, ThreadContext
from otel_blocksnoop.process.cpython import SUPPORTED_VERSIONS, CPythonLayout, layout_for
from otel_blocksnoop.process.elf import (
    ElfError,
    ElfSymbols,
    Mapping,
    file_mappings,
    load_base,
    process_root,
)
from otel_blocksnoop.process.pythons import python_name
from otel_blocksnoop.process.remote_memory import (
    RemoteMemory,
    plausible_pointer,
    pthread_tid_offset,
)

log = logging.getLogger(__name__)

CONTEXT_VAR_NAME = "current_context"
"""The name OpenTelemetry gives its ContextVar (opentelemetry.context.contextvars_context)."""

DEBUG_COOKIE = b"xdebugpy"
"""_Py_Debug_Cookie (Include/internal/pycore_runtime.h, 3.13+)."""

SPAN_KEY_PREFIX = "current-span-"
"""The start of the Context key the current span is stored under."""

SPAN_CONTEXT_ATTRIBUTE = "_context"
"""The span attribute holding its SpanContext (SDK spans and NonRecordingSpan)."""

MAX_INTERPRETERS = 16
MAX_THREADS = 1024
MAX_HAMT_NODES = 256
MAX_HAMT_DEPTH = 8
MAX_HAMT_NODE_SLOTS = 64
MAX_DICT_ENTRIES = 64
MAX_NAME_LENGTH = 256
MAX_STATIC_TYPES = 64
MAX_MODULES = 16384
"""Entries of sys.modules looked through for asyncio's, once per process."""
MAX_MODULE_NAMES = 4096
TASKS_RETRY_S = 5.0
"""How long to wait before looking for asyncio's current tasks again, when not found."""
ATTEMPTS = 2
UNKNOWN_SPANS_WARNING = 3
"""Spans of a shape not understood before the user is told (one could be a race)."""
"""Walks per call: one, and one more if the thread's context moved during the first."""

_CONTEXT_TYPES = frozenset({"Context", "_contextvars.Context"})
_CONTEXT_VAR_TYPES = frozenset({"ContextVar", "_contextvars.ContextVar"})
_HAMT_TYPES = frozenset({"hamt"})
_BITMAP_NODE = "hamt_bitmap_node"
_ARRAY_NODE = "hamt_array_node"
_COLLISION_NODE = "hamt_collision_node"
_SHORT_STRING = 64
_ASYNCIO_TASKS = "asyncio.tasks"
_CURRENT_TASKS = "_current_tasks"
"""The dict of loop -> running task that asyncio's C module keeps (3.9-3.13)."""
_TASK_TYPE = "_asyncio.Task"


def _word(data: bytes, at: int, signed: bool = False) -> int:
    """The 8-byte word at ``at`` of bytes read from the app."""
    return int.from_bytes(data[at : at + 8], "little", signed=signed)


NOTHING = ThreadContext(span=None, task=None)


class _Stale(Exception):  # noqa: N818 (internal control flow, not an error)
    """The context moved under the reader: start the walk again."""


class ContextReader:
    """Reads the active OpenTelemetry span of a thread of another CPython process.

    Construction looks the interpreter up once (version, ``_PyRuntime``); when
    the target cannot be read, ``unsupported`` says why, one warning is logged,
    and ``active_span`` returns None. Neither raises. Make it once the target's
    interpreter runs (libpython mapped, main thread state made), e.g. at its
    first block when the sidecar launched it, not at its first instruction.
    """

    pid: int
    unsupported: str | None
    """Why this target cannot be read, or None."""
    layout: CPythonLayout | None

    def __init__(self, pid: int) -> None:
        self._start(RemoteMemory(pid))
        try:
            self._locate()
        except OSError as error:
            self.unsupported = f"cannot inspect process {pid}: {error}"
        except Exception as error:  # a corrupt or odd file must not take the caller down  # noqa: BLE001
            self.unsupported = f"cannot read the interpreter of process {pid}: {error!r}"
        if self.unsupported is not None:
            log.warning("trace links disabled for process %d: %s", pid, self.unsupported)

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
        reader = cls.__new__(cls)
        reader._start(memory)  # noqa: SLF001 (its own class)
        reader.layout = layout
        reader._runtime = runtime  # noqa: SLF001
        reader._tid_offset = tid_offset  # noqa: SLF001
        if layout.tstate_native_thread_id is None and tid_offset is None:
            reader.unsupported = "3.9 and 3.10 need glibc's TID offset"
        return reader

    def _start(self, memory: RemoteMemory) -> None:
        self.pid = memory.pid
        self.unsupported = None
        self.layout = None
        self._runtime = 0
        self._tid_offset: int | None = None
        self._memory = memory
        self.moved = 0
        """Reads given up because the context moved under every attempt."""
        self.errors = 0
        """Reads given up on an unexpected error (a bug, or memory beyond belief)."""
        self.unknown_spans = 0
        """Current spans found whose SpanContext could not be (an unknown OpenTelemetry)."""
        # Type names seen during one walk (types outlive the objects read in it),
        # and for good those of the static types inside the interpreter's image.
        self._type_names: dict[int, str | None] = {}
        self._static_type_names: dict[int, str | None] = {}
        self._image: list[tuple[int, int]] = []
        self._var: int | None = None
        # Thread state and interpreter of each TID seen, checked again before each use.
        self._tstates: dict[int, tuple[int, int]] = {}
        # asyncio's running-tasks dict of each interpreter, once found.
        self._tasks_dicts: dict[int, int] = {}
        self._tasks_retry_at = 0.0

    def _locate(self) -> None:
        mappings = file_mappings(self.pid)
        exe = str(Path(f"/proc/{self.pid}/exe").readlink())
        libpython = next((m.path for m in mappings if "libpython" in Path(m.path).name), None)
        image = libpython or exe
        name = python_name(image)
        if name is None or name.version is None:
            self.unsupported = f"{image} is not a CPython interpreter this reader knows"
            return
        major, minor = name.version
        if name.free_threaded:
            self.unsupported = f"{image} is a free-threaded build"
            return
        self.layout = layout_for(major, minor)
        if self.layout is None:
            supported = ", ".join(f"{a}.{b}" for a, b in SUPPORTED_VERSIONS)
            self.unsupported = f"CPython {major}.{minor} (supported: {supported})"
            return
        try:
            elf = ElfSymbols(process_root(self.pid) + image)
        except (ElfError, ValueError) as error:
            self.unsupported = str(error)
            return
        with elf:
            self._find_runtime(elf, mappings, image, (major, minor))

    def _find_runtime(
        self, elf: ElfSymbols, mappings: list[Mapping], image: str, version: tuple[int, int]
    ) -> None:
        runtime = elf.symbol("_PyRuntime")
        base = load_base(mappings, image, elf)
        if runtime is None or base is None:
            self.unsupported = f"{image} has no _PyRuntime symbol (stripped or static)"
            return
        self._runtime = base + runtime
        self._image = [(m.start, m.end) for m in mappings if m.path == image]
        self.unsupported = self._version_mismatch(elf, base, version) or self._debug_mismatch(
            version
        )
        if self.unsupported is not None:
            return
        if self.layout is not None and self.layout.tstate_native_thread_id is None:
            self._tid_offset = pthread_tid_offset()
            if self._tid_offset is None:
                self.unsupported = "cannot find the TID in glibc's struct pthread"
            elif not self._thread_ids_match(self.layout):
                self.unsupported = "no thread state maps to a TID (another glibc?)"

    def _version_mismatch(self, elf: ElfSymbols, base: int, version: tuple[int, int]) -> str | None:
        """3.11+ has Py_Version (PY_VERSION_HEX): it must agree with the file name."""
        symbol = elf.symbol("Py_Version")
        hex_version = self._memory.u32(base + symbol) if symbol is not None else None
        if hex_version is None:
            return None
        found = (hex_version >> 24, hex_version >> 16 & 0xFF)
        return None if found == version else f"Py_Version says {found[0]}.{found[1]}"

    def _debug_mismatch(self, version: tuple[int, int]) -> str | None:
        """3.13+: _PyRuntime starts with _Py_DebugOffsets, whose cookie and version must agree."""
        layout = self.layout
        if layout is None or layout.runtime_debug_offsets is None:
            return None
        start = self._runtime + layout.runtime_debug_offsets
        cookie = self._memory.read(start, len(DEBUG_COOKIE))
        hex_version = self._memory.pointer(start + (layout.debug_offsets_version or 0))
        free_threaded = self._memory.pointer(start + (layout.debug_offsets_free_threaded or 0))
        if cookie != DEBUG_COOKIE or hex_version is None:
            return "_PyRuntime does not start with the _Py_DebugOffsets cookie"
        if (hex_version >> 24, hex_version >> 16 & 0xFF) != version:
            return f"_Py_DebugOffsets says {hex_version >> 24}.{hex_version >> 16 & 0xFF}"
        if free_threaded:
            return "a free-threaded build"
        return None

    def _thread_ids_match(self, layout: CPythonLayout) -> bool:
        """3.9/3.10: some thread state's pthread holds a TID of the process, as it must."""
        tids = {int(t.name) for t in Path(f"/proc/{self.pid}/task").iterdir()}
        interp = self._memory.pointer(self._runtime + layout.runtime_interpreters_head)
        tstate = self._memory.pointer(interp + layout.interp_threads_head) if interp else None
        for _ in range(MAX_THREADS):
            if not tstate or not plausible_pointer(tstate):
                return False
            if self._native_id(layout, tstate) in tids:
                return True
            tstate = self._memory.pointer(tstate + layout.tstate_next)
        return False

    @property
    def reads(self) -> int:
        """``process_vm_readv`` calls made so far."""
        return self._memory.reads

    def active_span(self, tid: int) -> SpanRef | None:
        """The span active on native thread ``tid`` now, or None (none, or not readable)."""
        return self.thread_context(tid).span

    def thread_context(self, tid: int) -> ThreadContext:
        """The span active on native thread ``tid`` now and the asyncio task it runs.

        Either is None when there is none or it cannot be read.
        """
        if self.layout is None or self.unsupported is not None:
            return NOTHING
        try:
            for _ in range(ATTEMPTS):
                try:
                    return self._read(self.layout, tid)
                except _Stale:
                    continue
            self.moved += 1
        except Exception:  # the target's memory is untrusted: never fail the caller
            self.errors += 1
            log.debug("context of %d/%d unreadable", self.pid, tid, exc_info=True)
        return NOTHING

    # The walk. Each helper returns None when the memory is not as expected.

    def _read(self, layout: CPythonLayout, tid: int) -> ThreadContext:
        self._type_names.clear()
        found = self._thread_state(layout, tid)
        if found is None:
            return NOTHING
        tstate, interp = found
        context = self._memory.pointer(tstate + layout.tstate_context)
        if not context or self._type_name(layout, context) not in _CONTEXT_TYPES:
            return NOTHING
        variables = self._memory.pointer(context + layout.context_vars)
        span = self._span_in(layout, variables) if variables else None
        task = self._running_task(layout, interp, context)
        # Same context, same variables after the walk: nothing it read was replaced.
        if (
            self._memory.pointer(tstate + layout.tstate_context) != context
            or self._memory.pointer(context + layout.context_vars) != variables
        ):
            raise _Stale
        return ThreadContext(span=span, task=task)

    def _thread_state(self, layout: CPythonLayout, tid: int) -> tuple[int, int] | None:
        """The thread state of ``tid`` and its interpreter: last time's if still so, else a walk."""
        cached = self._tstates.get(tid)
        if cached is not None:
            tstate, interp = cached
            if (
                self._native_id(layout, tstate) == tid
                and self._memory.pointer(tstate + layout.tstate_interp) == interp
            ):
                return cached
            del self._tstates[tid]
        found = self._walk_thread_states(layout, tid)
        if found is not None:
            if len(self._tstates) >= MAX_THREADS:
                self._tstates.clear()
            self._tstates[tid] = found
        return found

    def _walk_thread_states(self, layout: CPythonLayout, tid: int) -> tuple[int, int] | None:
        memory = self._memory
        interp = memory.pointer(self._runtime + layout.runtime_interpreters_head)
        for _ in range(MAX_INTERPRETERS):
            if not interp or not plausible_pointer(interp):
                return None
            tstate = memory.pointer(interp + layout.interp_threads_head)
            for _ in range(MAX_THREADS):
                if not tstate or not plausible_pointer(tstate):
                    break
                if self._native_id(layout, tstate) == tid:
                    return tstate, interp
                tstate = memory.pointer(tstate + layout.tstate_next)
            interp = memory.pointer(interp + layout.interp_next)
        return None

    def _native_id(self, layout: CPythonLayout, tstate: int) -> int | None:
        if layout.tstate_native_thread_id is not None:
            return self._memory.ssize(tstate + layout.tstate_native_thread_id)
        pthread = self._memory.pointer(tstate + layout.tstate_thread_id)
        if not pthread or self._tid_offset is None:
            return None
        return self._memory.u32(pthread + self._tid_offset)

    # The running asyncio task. A task runs in its own context (the C Task enters
    # it for each step), and a context is entered in one thread at most, so of the
    # tasks asyncio says are running, one per loop, the thread's is the one whose
    # context the thread is in. Between tasks (a plain callback) there is none.

    def _running_task(self, layout: CPythonLayout, interp: int, context: int) -> TaskRef | None:
        tasks = self._current_tasks(layout, interp)
        if tasks is None:
            return None
        for _, task in self._dict_items(layout, tasks) or []:
            if self._memory.pointer(task + layout.task_context) == context:
                return self._task_ref(layout, task) if self._is_c_task(layout, task) else None
        return None

    def _current_tasks(self, layout: CPythonLayout, interp: int) -> int | None:
        """The dict of running tasks asyncio keeps: looked up in sys.modules once, then kept."""
        known = self._tasks_dicts.get(interp)
        if known is not None and self._type_name(layout, known) == "dict":
            return known
        now = time.monotonic()
        if now < self._tasks_retry_at:
            return None
        self._tasks_retry_at = now + TASKS_RETRY_S
        modules = self._memory.pointer(interp + layout.interp_modules)
        module = self._entry(layout, modules, _ASYNCIO_TASKS, MAX_MODULES) if modules else None
        if module is None or self._type_name(layout, module) != "module":
            return None
        names = self._memory.pointer(module + layout.module_dict)
        tasks = self._entry(layout, names, _CURRENT_TASKS, MAX_MODULE_NAMES) if names else None
        if tasks is None or self._type_name(layout, tasks) != "dict":
            return None
        self._tasks_dicts[interp] = tasks
        return tasks

    def _entry(self, layout: CPythonLayout, obj: int, name: str, limit: int) -> int | None:
        """The value under the str key ``name`` of the dict at ``obj``, looked at key by key."""
        if self._type_name(layout, obj) != "dict":
            return None
        for key, value in self._dict_items(layout, obj, limit) or []:
            if self._ascii(layout, key) == name:
                return value
        return None

    def _is_c_task(self, layout: CPythonLayout, task: int) -> bool:
        """An ``_asyncio.Task`` (or subclass) of the layout this version was measured with."""
        cls = self._memory.pointer(task + layout.object_type)
        for _ in range(8):
            if not cls or not plausible_pointer(cls):
                return False
            if self._name_of_type(layout, cls) == _TASK_TYPE:
                return self._memory.ssize(cls + layout.type_basicsize) == layout.task_basicsize
            cls = self._memory.pointer(cls + layout.type_base)
        return False

    def _task_ref(self, layout: CPythonLayout, task: int) -> TaskRef | None:
        name_obj = self._memory.pointer(task + layout.task_name)
        if not name_obj:
            return None
        name = self._ascii(layout, name_obj)
        if name is None:
            # 3.13 names tasks lazily: an int N stands for "Task-N".
            number = self._int(layout, name_obj)
            name = f"Task-{number}" if number is not None else None
        if name is None:
            return None
        coro = self._memory.pointer(task + layout.task_coro)
        qualname = None
        if coro and self._type_name(layout, coro) == "coroutine":
            qualname_obj = self._memory.pointer(coro + layout.coro_qualname)
            qualname = self._ascii(layout, qualname_obj) if qualname_obj else None
        return TaskRef(name=name, coroutine=qualname)

    def _span_in(self, layout: CPythonLayout, hamt: int) -> SpanRef | None:
        if self._type_name(layout, hamt) not in _HAMT_TYPES:
            return None
        # OpenTelemetry's ContextVar is a module global: once found, it is looked
        # up by its hash (and still checked by type and name), as CPython does,
        # instead of reading every variable of the context.
        if self._var is not None and self._is_otel_var(layout, self._var):
            known = self._hamt_find(layout, hamt, self._var)
            if known is not None:
                return self._span_of_otel_context(layout, known)
        items = self._hamt_items(layout, hamt)
        variables = [(key, value) for key, value in items if self._is_otel_var(layout, key)]
        if len(variables) == 1:
            self._var = variables[0][0]
        found = {self._span_of_otel_context(layout, value) for _, value in variables}
        # Another library's variable with the same name must not make the answer ambiguous.
        found.discard(None)
        return found.pop() if len(found) == 1 else None

    def _is_otel_var(self, layout: CPythonLayout, key: int) -> bool:
        if self._type_name(layout, key) not in _CONTEXT_VAR_TYPES:
            return False
        name = self._memory.pointer(key + layout.contextvar_name)
        return bool(name) and self._ascii(layout, name or 0) == CONTEXT_VAR_NAME

    def _hamt_find(  # noqa: C901, PLR0911 (one early exit per check of untrusted memory)
        self, layout: CPythonLayout, hamt: int, key: int
    ) -> int | None:
        """The value of ``key`` (a ContextVar) in a HAMT, following its hash (Python/hamt.c)."""
        memory = self._memory
        hash64 = memory.ssize(key + layout.contextvar_hash)
        if hash64 is None:
            return None
        # hamt_hash(): the 64-bit hash folded to 32 bits, -1 being kept for errors.
        folded = (hash64 ^ hash64 >> 32) & 0xFFFFFFFF
        folded = 0xFFFFFFFE if folded == 0xFFFFFFFF else folded
        node = memory.pointer(hamt + layout.hamt_root)
        for depth in range(MAX_HAMT_DEPTH + 1):
            if not node or not plausible_pointer(node):
                return None
            kind = self._type_name(layout, node)
            index = folded >> 5 * depth & 0x1F
            if kind == _ARRAY_NODE:
                node = memory.pointer(node + layout.array_array + 8 * index)
                continue
            if kind == _COLLISION_NODE:
                slots = memory.ssize(node + layout.var_size)
                if slots is None or not 0 <= slots <= MAX_HAMT_NODE_SLOTS or slots % 2:
                    return None
                array = memory.pointers(node + layout.collision_array, slots) or ()
                pairs = zip(array[0::2], array[1::2], strict=True)
                return next((value for found, value in pairs if found == key), None)
            if kind != _BITMAP_NODE:
                return None
            bitmap = memory.u32(node + layout.bitmap_bitmap)
            slots = memory.ssize(node + layout.var_size)
            if bitmap is None or slots is None or not bitmap >> index & 1:
                return None
            position = (bitmap & (1 << index) - 1).bit_count()
            if not 0 <= 2 * position + 1 < min(slots, MAX_HAMT_NODE_SLOTS):
                return None
            pair = memory.pointers(node + layout.bitmap_array + 16 * position, 2)
            if pair is None:
                return None
            found, value = pair
            if found:
                return value if found == key else None
            node = value  # no key: the value is the node one level down
        return None

    def _hamt_items(  # noqa: C901 (one early exit per check of untrusted memory)
        self, layout: CPythonLayout, hamt: int
    ) -> list[tuple[int, int]]:
        """Every (key, value) of a HAMT, bounded in depth, nodes and slots."""
        root = self._memory.pointer(hamt + layout.hamt_root)
        items: list[tuple[int, int]] = []
        stack = [(root, 0)] if root else []
        visited = 0
        while stack:
            node, depth = stack.pop()
            visited += 1
            if visited > MAX_HAMT_NODES or depth > MAX_HAMT_DEPTH or not plausible_pointer(node):
                return []
            kind = self._type_name(layout, node)
            if kind == _ARRAY_NODE:
                children = self._memory.pointers(node + layout.array_array, 32)
                if children is None:
                    return []
                stack.extend((child, depth + 1) for child in children if child)
                continue
            if kind not in {_BITMAP_NODE, _COLLISION_NODE}:
                return []
            slots = self._memory.ssize(node + layout.var_size)
            if slots is None or not 0 <= slots <= MAX_HAMT_NODE_SLOTS or slots % 2:
                return []
            start = layout.bitmap_array if kind == _BITMAP_NODE else layout.collision_array
            array = self._memory.pointers(node + start, slots)
            if array is None:
                return []
            for key, value in zip(array[0::2], array[1::2], strict=True):
                if key:
                    items.append((key, value))
                elif kind == _BITMAP_NODE and value:
                    stack.append((value, depth + 1))
        return items

    def _span_of_otel_context(  # noqa: PLR0911 (one early exit per check of untrusted memory)
        self, layout: CPythonLayout, context: int
    ) -> SpanRef | None:
        if not self._is_subclass(layout, context, "Context", "dict"):
            return None
        spans = [
            value
            for key, value in self._dict_items(layout, context) or []
            if (self._ascii(layout, key) or "").startswith(SPAN_KEY_PREFIX)
        ]
        if len(spans) != 1:
            return None
        span_context = self._attribute(layout, spans[0], SPAN_CONTEXT_ATTRIBUTE)
        if span_context is None or not self._is_subclass(
            layout, span_context, "SpanContext", "tuple"
        ):
            self._unknown_span()
            return None
        size = self._memory.ssize(span_context + layout.var_size)
        if size is None or not 4 <= size <= 16:
            return None
        items = self._memory.pointers(span_context + layout.tuple_items, 4)
        if items is None:
            return None
        trace_id, span_id, flags = (self._int(layout, items[i]) for i in (0, 1, 3))
        if (
            trace_id is None
            or span_id is None
            or flags is None
            or not 0 < trace_id < 1 << 128
            or not 0 < span_id < 1 << 64
            or not 0 <= flags < 1 << 8
        ):
            return None
        return SpanRef(trace_id=trace_id, span_id=span_id, trace_flags=flags)

    def _unknown_span(self) -> None:
        """A current span without a SpanContext where OpenTelemetry keeps it: say so, once.

        Once in a while this is an object changing under the reader; every time, an
        OpenTelemetry API whose spans are laid out otherwise than 1.x's.
        """
        self.unknown_spans += 1
        if self.unknown_spans == UNKNOWN_SPANS_WARNING:
            log.warning(
                "trace links for process %d: its OpenTelemetry spans do not keep a SpanContext "
                "in %r; blocks in them get no parent",
                self.pid,
                SPAN_CONTEXT_ATTRIBUTE,
            )

    def _attribute(  # noqa: C901, PLR0912 (one branch per CPython instance-dict scheme)
        self, layout: CPythonLayout, obj: int, name: str
    ) -> int | None:
        """An instance attribute, from the object's own __dict__ or inline values."""
        memory = self._memory
        cls = memory.pointer(obj + layout.object_type)
        if not cls or not plausible_pointer(cls):
            return None
        flags = memory.pointer(cls + layout.type_flags)
        if flags is None:
            return None
        items: list[tuple[int, int]] | None
        if flags & layout.tpflags_managed_dict and layout.managed_dict_offset is not None:
            word = memory.pointer(obj + layout.managed_dict_offset)
            if word is None:
                return None
            values = 0
            if layout.managed_values_tagged:
                # 3.12: one word holds either the dict or the values pointer minus one.
                values, word = (word + 1, 0) if word & 1 else (0, word)
            elif layout.managed_values_offset is not None:
                values = memory.pointer(obj + layout.managed_values_offset) or 0
            elif not word and flags & layout.tpflags_inline_values:
                values = self._inline_values(layout, obj, cls) or 0
            if word:
                items = self._dict_items(layout, word)
            elif values:
                keys = memory.pointer(cls + layout.heaptype_cached_keys)
                items = self._keys_items(layout, keys, values) if keys else None
            else:
                items = None
        else:
            offset = memory.ssize(cls + layout.type_dictoffset)
            if offset is None or offset <= 0:
                return None
            instance_dict = memory.pointer(obj + offset)
            items = self._dict_items(layout, instance_dict) if instance_dict else None
        for key, value in items or []:
            if value and self._ascii(layout, key) == name:
                return value
        return None

    def _inline_values(self, layout: CPythonLayout, obj: int, cls: int) -> int | None:
        """3.13: the values embedded after the object, when still valid."""
        basicsize = self._memory.ssize(cls + layout.type_basicsize)
        if basicsize is None or not 0 < basicsize <= 1024 or layout.values_valid is None:
            return None
        values = obj + basicsize
        return values if self._memory.u8(values + layout.values_valid) else None

    def _dict_items(
        self, layout: CPythonLayout, obj: int, limit: int = MAX_DICT_ENTRIES
    ) -> list[tuple[int, int]] | None:
        # ma_keys and ma_values side by side (3.9-3.13), in one read
        pair = self._memory.pointers(obj + layout.dict_keys, 2)
        if pair is None or layout.dict_values != layout.dict_keys + 8:
            return None
        keys, values = pair
        if not keys:
            return None
        return self._keys_items(layout, keys, values, limit)

    def _keys_items(  # noqa: C901, PLR0911, PLR0912 (one early exit per check of untrusted memory)
        self, layout: CPythonLayout, keys: int, values: int, limit: int = MAX_DICT_ENTRIES
    ) -> list[tuple[int, int]] | None:
        """(key, value) of each entry of a dict keys object; split values come from ``values``."""
        memory = self._memory
        header = memory.read(keys, layout.keys_indices)  # the keys object up to its indices
        if header is None:
            return None
        count = _word(header, layout.keys_nentries, signed=True)
        if not 0 <= count <= limit:
            return None
        if layout.keys_size is not None:
            size = _word(header, layout.keys_size, signed=True)
            if not 0 < size <= 1 << 16 or size & (size - 1):
                return None
            index_bytes = size * (1 if size <= 0xFF else 2 if size <= 0xFFFF else 4)
            entry = (layout.entry_size, layout.entry_key, layout.entry_value)
        else:
            log2_index_bytes = header[layout.keys_log2_index_bytes or 0]
            kind = header[layout.keys_kind or 0]
            if log2_index_bytes > 20:
                return None
            index_bytes = 1 << log2_index_bytes
            if kind == layout.keys_kind_general:
                entry = (layout.entry_size, layout.entry_key, layout.entry_value)
            else:
                entry = (
                    layout.unicode_entry_size or 0,
                    layout.unicode_entry_key or 0,
                    layout.unicode_entry_value or 0,
                )
        entry_size, key_at, value_at = entry
        start = keys + layout.keys_indices + index_bytes
        if count == 0:
            return []
        raw = memory.read_table(start, count * entry_size)
        table = memory.read_table(values + layout.values_items, 8 * count) if values else b""
        if raw is None or table is None:
            return None
        split = struct.unpack(f"<{count}Q", table) if values else None
        items = []
        for i in range(count):
            key = int.from_bytes(
                raw[i * entry_size + key_at : i * entry_size + key_at + 8], "little"
            )
            if split is not None:
                value = split[i]
            else:
                at = i * entry_size + value_at
                value = int.from_bytes(raw[at : at + 8], "little")
            if key and value:
                items.append((key, value))
        return items

    def _int(self, layout: CPythonLayout, obj: int) -> int | None:
        """A non-negative int (or int subclass) of at most 5 digits."""
        # The header and up to 5 digits in one read, header then digits near a mapping's end.
        most = layout.long_digits + 5 * layout.long_digit_size
        raw = self._memory.read(obj, most) or self._memory.read(obj, layout.long_digits)
        if raw is None or not self._type_is_subclass(
            layout, _word(raw, layout.object_type), "int", "int"
        ):
            return None
        if layout.long_lv_tag:
            tag = _word(raw, layout.long_size)
            if tag & 3 == 2:  # negative
                return None
            digits = tag >> layout.long_non_size_bits
        else:
            digits = _word(raw, layout.long_size, signed=True)
        if not 0 <= digits <= 5:
            return None
        size = digits * layout.long_digit_size
        if len(raw) < layout.long_digits + size:
            raw = self._memory.read(obj, layout.long_digits + size) if digits else raw
            if raw is None:
                return None
        value = 0
        for i in range(digits):
            at = layout.long_digits + i * layout.long_digit_size
            digit = int.from_bytes(raw[at : at + layout.long_digit_size], "little")
            value |= digit << (layout.long_digit_bits * i)
        return value

    def _ascii(self, layout: CPythonLayout, obj: int) -> str | None:
        """A compact ASCII str (every name compared here is one), else None."""
        # Header and a short string's characters in one read; two near a mapping's end.
        header = self._memory.read(obj, layout.unicode_ascii_data + _SHORT_STRING)
        if header is None:
            header = self._memory.read(obj, layout.unicode_ascii_data)
        if header is None:
            return None
        cls = int.from_bytes(header[layout.object_type : layout.object_type + 8], "little")
        length = int.from_bytes(header[layout.unicode_length : layout.unicode_length + 8], "little")
        state = int.from_bytes(header[layout.unicode_state : layout.unicode_state + 4], "little")
        if (
            not state & layout.unicode_ascii_mask
            or not state & layout.unicode_compact_mask
            or not 0 <= length <= MAX_NAME_LENGTH
            or self._name_of_type(layout, cls) != "str"
        ):
            return None
        start = layout.unicode_ascii_data
        if start + length <= len(header):
            return header[start : start + length].decode("ascii", "replace")
        data = self._memory.read(obj + start, length)
        return data.decode("ascii", "replace") if data is not None else None

    def _type_name(self, layout: CPythonLayout, obj: int) -> str | None:
        if not plausible_pointer(obj):
            return None
        cls = self._memory.pointer(obj + layout.object_type)
        return self._name_of_type(layout, cls) if cls else None

    def _name_of_type(self, layout: CPythonLayout, cls: int) -> str | None:
        if cls in self._static_type_names:
            return self._static_type_names[cls]
        if cls in self._type_names:
            return self._type_names[cls]
        if not plausible_pointer(cls):
            return None
        pointer = self._memory.pointer(cls + layout.type_name)
        name = self._memory.c_string(pointer) if pointer else None
        static = any(start <= cls < end for start, end in self._image)
        if static and name is not None and len(self._static_type_names) < MAX_STATIC_TYPES:
            self._static_type_names[cls] = name
        else:
            self._type_names[cls] = name
        return name

    def _is_subclass(self, layout: CPythonLayout, obj: int, name: str, base: str) -> bool:
        """The object's type is ``name`` itself, or named ``name`` with ``base`` above it."""
        if not plausible_pointer(obj):
            return False
        cls = self._memory.pointer(obj + layout.object_type)
        return self._type_is_subclass(layout, cls, name, base)

    def _type_is_subclass(
        self, layout: CPythonLayout, cls: int | None, name: str, base: str
    ) -> bool:
        for _ in range(8):
            if not cls:
                return False
            cls_name = self._name_of_type(layout, cls)
            if cls_name == base:
                return True
            if name not in (cls_name, base):
                return False
            cls = self._memory.pointer(cls + layout.type_base)
        return False


__all__ = [
    "CONTEXT_VAR_NAME",
    "NOTHING",
    "SPAN_KEY_PREFIX",
    "ContextReader",
]
