"""The kernel's thread table (``threads`` in bpf/detector.bpf.c), read from user space.

It holds only epoll-calling threads of watched processes, keyed by tid: who
is out of epoll now and since when, what it has done so far, and each
thread's cumulative loop time.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from typing import Any

from otel_blocksnoop.events import InProgress, ThreadSnapshot, ThreadTimes
from otel_blocksnoop.kernel import bpf_syscall
from otel_blocksnoop.kernel.decode import activity_so_far
from otel_blocksnoop.kernel.layout import ThreadStateC

BATCH_READ_ABOVE = 32

MapCall = Callable[[int, Any, Any], int]
"""libbcc's bpf_lookup_elem and bpf_get_next_key, or ``bpf_syscall``'s: 0, or -1 with errno."""


class ThreadTable:
    """The thread table, read key by key with the GIL held, or in one batch when large.

    BCC calls libbcc through ``ctypes.CDLL``, which gives the GIL away around
    every bpf() call; winning it back from a busy thread of the sidecar (the
    stack decoder) may take the 5 ms switch interval each time, several times
    per look, which made the trace linker late for short blocks. A bpf() map
    call takes about a microsecond: holding the GIL through it costs nothing.
    """

    def __init__(self, bcc_map: Any, library: str, limit: int) -> None:  # noqa: ANN401 - bcc has no type hints
        lib = ctypes.PyDLL(library, use_errno=True)
        lookup, next_key = lib.bpf_lookup_elem, lib.bpf_get_next_key
        for function in (lookup, next_key):
            function.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
            function.restype = ctypes.c_int
        self._wire(bcc_map, bcc_map.map_fd, limit, lookup, next_key)

    @classmethod
    def from_fd(cls, fd: int, limit: int) -> ThreadTable:
        """The table by its map fd alone, read with bpf() syscalls (``bpf_syscall``): no libbcc."""
        table = cls.__new__(cls)
        table._wire(  # noqa: SLF001 - a method of this class, on an instance it made
            None, fd, limit, bpf_syscall.lookup_elem, bpf_syscall.get_next_key
        )
        return table

    def _wire(self, bcc_map: Any, fd: int, limit: int, lookup: MapCall, next_key: MapCall) -> None:  # noqa: ANN401 - bcc has no type hints
        self._map = bcc_map  # None: no batch read (BCC's)
        self._fd = fd
        self._limit = limit
        self._size = 0
        self._lookup = lookup
        self._next_key = next_key

    def get(self, tid: int) -> ThreadStateC | None:
        key, state = ctypes.c_uint32(tid), ThreadStateC()
        found = self._lookup(self._fd, ctypes.byref(key), ctypes.byref(state)) == 0
        return state if found else None

    def items(self) -> list[tuple[int, ThreadStateC]]:
        """Every entry; one deleted meanwhile restarts the kernel's walk, hence the dict."""
        found: dict[int, ThreadStateC] = {}
        key, following = ctypes.c_uint32(), ctypes.c_uint32()
        # With no key, the kernel gives the first one.
        more = self._next_key(self._fd, None, ctypes.byref(key)) == 0
        for _ in range(2 * self._limit):
            if not more:
                break
            state = self.get(key.value)
            if state is not None:
                found[key.value] = state
            more = self._next_key(self._fd, ctypes.byref(key), ctypes.byref(following)) == 0
            key.value = following.value
        return list(found.items())

    def entries(self) -> list[tuple[int, ThreadStateC]]:
        """Every entry of the table, read the cheaper way for its size.

        Key by key while it is small (41 us for one thread, measured), in one
        batched call past BATCH_READ_ABOVE entries (BCC's batch read sizes its
        buffers for the whole map: 441 us even for one entry).
        """
        found = None
        if self._size > BATCH_READ_ABOVE and self._map is not None:
            try:
                found = [(key.value, state) for key, state in self._map.items_lookup_batch()]
            except Exception:  # noqa: BLE001 - older kernels: no batch ops; read key by key
                found = None
        if found is None:
            found = self.items()
        self._size = len(found)
        return found

    def out_since(self, tid: int) -> int:
        """When ``tid`` last left epoll; 0 while it is inside, or untracked. One map lookup."""
        state = self.get(tid)
        return int(state.left_epoll_ns) if state is not None else 0

    def snapshot(
        self, min_ns: int, process_cpu_ns: Callable[[int], int] | None = None
    ) -> ThreadSnapshot:
        """Read the whole table now; see ``snapshot_of``."""
        entries = self.entries()
        return snapshot_of(entries, time.monotonic_ns(), min_ns, process_cpu_ns)


def snapshot_of(
    entries: Sequence[tuple[int, ThreadStateC]],
    now: int,
    min_ns: int,
    process_cpu_ns: Callable[[int], int] | None,
) -> ThreadSnapshot:
    """Every thread's loop time at ``now``, and those out of epoll for ``min_ns`` by then.

    ``process_cpu_ns``: the CPU time of a process so far, to tell what each
    of those threads did (the cause of a hang); None leaves it out.
    """
    ongoing = []
    times = []
    cpu_of: dict[int, int] = {}
    for tid, state in entries:
        left = state.left_epoll_ns
        # The stretch in progress counts too, so a hang shows as busy while it lasts.
        busy = state.busy_ns + (now - left if left else 0)
        entered = state.entered_epoll_ns
        idle = state.idle_ns + (now - entered if not left and entered else 0)
        times.append(ThreadTimes(state.tgid, tid, state.iterations, busy, idle))
        if not left or now - left < min_ns:
            continue
        so_far = None
        if process_cpu_ns is not None:
            if state.tgid not in cpu_of:
                cpu_of[state.tgid] = process_cpu_ns(state.tgid)
            so_far = activity_so_far(state, cpu_of[state.tgid], now)
        ongoing.append(InProgress(state.tgid, tid, left, so_far))
    return ThreadSnapshot(ongoing=tuple(ongoing), times=tuple(times))
