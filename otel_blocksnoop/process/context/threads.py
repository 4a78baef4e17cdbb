"""Which thread state of the target's interpreters belongs to a native thread (TID).

3.11+ thread states hold the TID; 3.9 and 3.10 hold only ``pthread_self()``,
whose TID is at an offset of glibc's ``struct pthread`` found once in this
process (``pthread_tid_offset``): the target must then use the same glibc.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from typing import Protocol

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.process.remote_memory import RemoteMemory, plausible_pointer

MAX_INTERPRETERS = 16
MAX_THREADS = 1024


class ThreadLayout(Protocol):
    """The offsets a walk of thread states needs.

    Either a generated ``CPythonLayout`` or the ``DebugOffsets`` the
    interpreter publishes (3.13+).
    """

    @property
    def runtime_interpreters_head(self) -> int: ...
    @property
    def interp_next(self) -> int: ...
    @property
    def interp_threads_head(self) -> int: ...
    @property
    def tstate_next(self) -> int: ...
    @property
    def tstate_interp(self) -> int: ...
    @property
    def tstate_thread_id(self) -> int: ...
    @property
    def tstate_native_thread_id(self) -> int | None: ...


class ThreadStates:
    """The thread states under one ``_PyRuntime`` (at ``runtime``), found by TID."""

    def __init__(
        self,
        memory: RemoteMemory,
        layout: ThreadLayout,
        runtime: int,
        tid_offset: int | None = None,
    ) -> None:
        self._memory = memory
        self._layout = layout
        self._runtime = runtime
        self._tid_offset = tid_offset
        # Thread state and interpreter of each TID seen, checked again before each use.
        self._known: BoundedDict[int, tuple[int, int]] = BoundedDict(MAX_THREADS)

    def find(self, tid: int) -> tuple[int, int] | None:
        """The thread state of ``tid`` and its interpreter: last time's if still so, else a walk."""
        known = self._known.get(tid)
        if known is not None:
            tstate, interp = known
            if (
                self.native_id(tstate) == tid
                and self._memory.pointer(tstate + self._layout.tstate_interp) == interp
            ):
                return known
            del self._known[tid]
        found = self._walk(tid)
        if found is not None:
            self._known[tid] = found
        return found

    def any_of(self, tids: set[int]) -> bool:
        """Some thread state of the runtime's first interpreter has one of ``tids`` (one must)."""
        memory, layout = self._memory, self._layout
        interp = memory.pointer(self._runtime + layout.runtime_interpreters_head)
        tstate = memory.pointer(interp + layout.interp_threads_head) if interp else None
        for _ in range(MAX_THREADS):
            if not tstate or not plausible_pointer(tstate):
                return False
            if self.native_id(tstate) in tids:
                return True
            tstate = memory.pointer(tstate + layout.tstate_next)
        return False

    def native_id(self, tstate: int) -> int | None:
        layout = self._layout
        if layout.tstate_native_thread_id is not None:
            return self._memory.ssize(tstate + layout.tstate_native_thread_id)
        pthread = self._memory.pointer(tstate + layout.tstate_thread_id)
        if not pthread or self._tid_offset is None:
            return None
        return self._memory.u32(pthread + self._tid_offset)

    def _walk(self, tid: int) -> tuple[int, int] | None:
        memory, layout = self._memory, self._layout
        interp = memory.pointer(self._runtime + layout.runtime_interpreters_head)
        for _ in range(MAX_INTERPRETERS):
            if not interp or not plausible_pointer(interp):
                return None
            tstate = memory.pointer(interp + layout.interp_threads_head)
            for _ in range(MAX_THREADS):
                if not tstate or not plausible_pointer(tstate):
                    break
                if self.native_id(tstate) == tid:
                    return tstate, interp
                tstate = memory.pointer(tstate + layout.tstate_next)
            interp = memory.pointer(interp + layout.interp_next)
        return None


def pthread_tid_offset() -> int | None:
    """Where glibc keeps the kernel TID in its ``struct pthread``, found in this process.

    CPython 3.9 and 3.10 record only ``pthread_self()`` in a thread state. The
    TID offset is glibc's, the same in every process using this machine's glibc:
    it is found here by looking for a thread's own TID in its own ``struct
    pthread``, on two threads that must agree.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_void_p
    except (OSError, AttributeError):
        return None
    found: list[int | None] = []

    def probe() -> None:
        me = libc.pthread_self()
        tid = struct.pack("<i", threading.get_native_id())
        raw = ctypes.string_at(me, 2048)
        hits = [i for i in range(0, len(raw) - 3, 4) if raw[i : i + 4] == tid]
        found.append(int(hits[0]) if hits else None)

    for _ in range(2):
        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
    if len(found) == 2 and found[0] is not None and found[0] == found[1]:
        return found[0]
    return None


__all__ = ["MAX_THREADS", "ThreadLayout", "ThreadStates", "pthread_tid_offset"]
