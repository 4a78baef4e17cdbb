"""The callbacks an asyncio loop has ready to run, read from outside: who waits on a block.

While one callback blocks the loop, every callback already in the loop's
ready queue (``BaseEventLoop._ready``, a ``collections.deque`` of
``asyncio.Handle``) waits for it: a task's next step, a future's done
callback, a plain ``call_soon``. Each Handle keeps the context it will run
in (its ``_context`` slot: for a task's step, the task's own context), so
the request each belongs to is the span active in that context, read as the
thread's own is (``CurrentSpans``).

The deque is walked block by block (64 items each); its ``state`` counter,
read before and after, says whether the loop moved it meanwhile (then
nothing is returned: the loop is not blocked any more, or the blocked
callback changed its queue). The ``_context`` and ``_cancelled`` slots are
found by name among the Handle type's member definitions, so no per-version
offset is assumed. uvloop keeps its queue in C structures of its own: its
loops have no ``_ready`` attribute, and give nothing here.
"""

from __future__ import annotations

import struct

from otel_blocksnoop.events import ReadyWork, SpanRef
from otel_blocksnoop.process.context.hamt import CONTEXT_TYPES
from otel_blocksnoop.process.context.objects import ObjectReader
from otel_blocksnoop.process.context.otel import CurrentSpans

MAX_READY = 512
"""Ready callbacks read at most; a longer queue gives nothing (its count is still known)."""
BLOCK_LENGTH = 64
"""Items per block of a deque (BLOCKLEN in Modules/_collectionsmodule.c, 3.9-3.15)."""
_BLOCK_SIZE = 8 + BLOCK_LENGTH * 8 + 8  # leftlink, data, rightlink
_DEQUE_FIELDS = struct.Struct("<QQqqQ")  # leftblock, rightblock, leftindex, rightindex, state
_MEMBER = struct.Struct("<QiiqiiQ")  # PyMemberDef: name, type, (pad), offset, flags, (pad), doc
MAX_CONTEXTS = 24
"""Contexts whose span one read looks up (~35 remote reads each): the first 16 other
requests are linked; the Handles of the rest are counted, their requests left unread."""
MAX_KNOWN = 1024
"""Contexts whose spans are kept for the next read of the same block."""
MAX_MEMBERS = 16
"""Member definitions of the Handle type looked through (it has 7 slots)."""
_T_OBJECT_EX = 16
"""Py_T_OBJECT_EX: what a __slots__ member is."""
_HANDLE_TYPE = "Handle"
_DEQUE_TYPE = "collections.deque"
_LOOP_QUEUE = "_ready"


class ReadyQueues:
    """Reads a loop's ready queue, through one process's ``ObjectReader``."""

    def __init__(self, objects: ObjectReader, spans: CurrentSpans) -> None:
        self._objects = objects
        self._spans = spans
        # Handle type -> (_context offset, _cancelled offset); a heap type lives with its module.
        self._slots: dict[int, tuple[int, int] | None] = {}
        self._bools: dict[int, bool] = {}  # Py_True, Py_False
        self._known: dict[tuple[int, int], SpanRef | None] = {}  # (context, variables): span

    def ready(self, loop: int, again: bool = False) -> ReadyWork | None:
        """What ``loop`` has ready to run; None when it cannot be known for sure.

        ``again``: in the same block as the last call. The spans found then of
        the contexts still in the queue are kept: a context a queued Handle
        holds lives, and keeps its variables, until the loop runs it (it may
        not while blocked), and what its variables hold is immutable. A new
        block forgets them (the contexts it found may be gone, their memory reused).
        """
        if not again:
            self._known.clear()
        queued = self._queued(loop)
        if queued is None:
            return None
        handles: list[tuple[int, SpanRef | None]] = []
        unread: list[int] = []
        contexts: dict[int, tuple[bool, SpanRef | None]] = {}
        for handle in queued:
            read = self._handle(handle)
            if read is None:
                return None
            cancelled, context = read
            if cancelled:
                continue
            if context not in contexts and len(contexts) >= MAX_CONTEXTS:
                unread.append(handle)
                continue
            if context not in contexts:
                contexts[context] = self._span_of_context(context)
            known, span = contexts[context]
            if not known:
                return None
            handles.append((handle, span))
        return ReadyWork(queued=len(queued), handles=tuple(handles), unread=tuple(unread))

    def _queued(self, loop: int) -> list[int] | None:
        """The Handles in ``loop``'s ready queue, in order; None if it moved while read."""
        objects = self._objects
        queue = objects.attribute(loop, _LOOP_QUEUE)
        if not queue or objects.type_name(queue) != _DEQUE_TYPE:
            return None
        header = self._deque_header(queue)
        if header is None:
            return None
        items = self._items(*header[:5])
        if items is None or self._deque_header(queue) != header:
            return None  # moved while it was read (its state counter, or its ends)
        return items

    def _deque_header(self, queue: int) -> tuple[int, int, int, int, int, int] | None:
        """ob_size, leftblock, rightblock, leftindex, rightindex, state; None if implausible."""
        raw = self._objects.memory.read(
            queue + self._objects.layout.var_size, 8 + _DEQUE_FIELDS.size
        )
        if raw is None:
            return None
        size = int.from_bytes(raw[:8], "little", signed=True)
        left, right, left_index, right_index, state = _DEQUE_FIELDS.unpack_from(raw, 8)
        if not 0 <= size <= MAX_READY:
            return None
        if not (0 <= left_index < BLOCK_LENGTH and -1 <= right_index < BLOCK_LENGTH):
            return None
        return size, left, right, left_index, right_index, state

    def _items(
        self, size: int, left: int, right: int, left_index: int, right_index: int
    ) -> list[int] | None:
        """The deque's items, from its leftmost block to its rightmost."""
        memory = self._objects.memory
        items: list[int] = []
        block, index = left, left_index
        while len(items) < size:
            raw = memory.read(block, _BLOCK_SIZE)
            if raw is None:
                return None
            words = struct.unpack(f"<{BLOCK_LENGTH + 2}Q", raw)
            last = right_index if block == right else BLOCK_LENGTH - 1
            items.extend(words[1 + index : 2 + last])
            if block == right:
                break
            block, index = words[-1], 0
        if len(items) != size or not all(items):
            return None
        return items

    def _handle(self, handle: int) -> tuple[bool, int] | None:
        """Whether a Handle was cancelled, and the context it runs in; None: not sure."""
        objects = self._objects
        memory, layout = objects.memory, objects.layout
        cls = memory.pointer(handle + layout.object_type)
        slots = self._handle_slots(cls) if cls else None
        if slots is None:
            return None
        context_at, cancelled_at = slots
        # The object's slots in one read (the type was read apart: its size is the type's).
        raw = memory.read(handle, max(context_at, cancelled_at) + 8)
        if (
            raw is None
            or int.from_bytes(raw[layout.object_type : layout.object_type + 8], "little") != cls
        ):
            return None
        cancelled = self._truth(int.from_bytes(raw[cancelled_at : cancelled_at + 8], "little"))
        if cancelled is None:
            return None
        return cancelled, int.from_bytes(raw[context_at : context_at + 8], "little")

    def _truth(self, obj: int) -> bool | None:
        """The value of a bool (one of two static singletons: known once, kept)."""
        if obj not in self._bools:
            objects = self._objects
            value = objects.small_int(obj) if objects.type_name(obj) == "bool" else None
            if value is None:
                return None
            self._bools[obj] = bool(value)
        return self._bools[obj]

    def _span_of_context(self, context: int) -> tuple[bool, SpanRef | None]:
        """Whether ``context`` is a Context, and the span active in it (None: none)."""
        objects = self._objects
        layout = objects.layout
        raw = objects.memory.read(context, max(layout.object_type, layout.context_vars) + 8)
        if raw is None:
            return False, None
        cls = int.from_bytes(raw[layout.object_type : layout.object_type + 8], "little")
        if objects.name_of_type(cls) not in CONTEXT_TYPES:
            return False, None
        variables = int.from_bytes(raw[layout.context_vars : layout.context_vars + 8], "little")
        if not variables:
            return True, None
        key = (context, variables)
        if key not in self._known:
            if len(self._known) >= MAX_KNOWN:
                self._known.clear()
            self._known[key] = self._spans.span_in(variables)
        return True, self._known[key]

    def _handle_slots(self, cls: int) -> tuple[int, int] | None:
        """Where asyncio.Handle keeps ``_context`` and ``_cancelled``, from its members."""
        if cls in self._slots:
            return self._slots[cls]
        if not self._objects.type_is_subclass(
            cls, self._objects.name_of_type(cls) or "", _HANDLE_TYPE
        ):
            return None  # not cached: a heap type's address may be another type's later
        memory = self._objects.memory
        # tp_members, tp_getset and tp_base are consecutive in every PyTypeObject.
        members = memory.pointer(cls + self._objects.layout.type_base - 16)
        found: dict[str, int] = {}
        if members:
            raw = memory.read(members, MAX_MEMBERS * _MEMBER.size) or b""
            for at in range(0, len(raw), _MEMBER.size):
                name_at, kind, _, offset, _, _, _ = _MEMBER.unpack_from(raw, at)
                if not name_at:
                    break
                name = memory.c_string(name_at)
                if kind == _T_OBJECT_EX and name in ("_context", "_cancelled") and offset > 0:
                    found[name] = offset
        slots = (found["_context"], found["_cancelled"]) if len(found) == 2 else None
        self._slots[cls] = slots
        return slots


__all__ = ["MAX_READY", "ReadyQueues"]
