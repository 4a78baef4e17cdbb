"""The kernel's thread table (``threads`` in bpf/detector.bpf.c), read from user space.

It holds only epoll-calling threads of watched processes, keyed by the
kernel's (host) tid, each with its ids as user space knows them: who
is out of epoll now and since when, what it has done so far, and each
thread's cumulative loop time. It is read when the kernel says a block needs
looking at (one entry), and once a second for loop times (all of them);
``UserTicks`` reads it every tick period where the kernel cannot tick.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import InProgress, ThreadSnapshot, ThreadTimes, Trigger, TriggerReason
from otel_blocksnoop.kernel.bpf_map import BpfMap, u32, u64
from otel_blocksnoop.kernel.decode import activity_so_far
from otel_blocksnoop.kernel.layout import ThreadStateC

BATCH_READ_ABOVE = 32
MAX_TOLD = 16384
"""Threads whose last block ``UserTicks`` told of: as many as the kernel's table holds."""


class ThreadTable:
    """The thread table, read key by key with the GIL held (``bpf_syscall``).

    A call that gave the GIL away around every bpf() call (as BCC's libbcc
    calls do) had to win it back from a busy thread of the sidecar (the
    stack decoder), which may take the 5 ms switch interval each time,
    several times per look: the trace linker was late for short blocks. A
    bpf() map call takes about a microsecond: holding the GIL through it
    costs nothing.
    """

    def __init__(self, table: BpfMap) -> None:
        self._map = table
        self._size = 0

    def get(self, tid: int) -> ThreadStateC | None:
        """The state of host tid ``tid``."""
        raw = self._map.lookup(u32(tid))
        return ThreadStateC.from_buffer_copy(raw) if raw is not None else None

    def entries(self) -> list[tuple[int, ThreadStateC]]:
        """Every entry of the table now, read the cheaper way for its size.

        Key by key while it is small (34 us for one thread, ~9 us a thread
        beyond), in batches past BATCH_READ_ABOVE entries (their buffers are
        sized for the whole map).
        """
        found = self._map.items(batched=self._size > BATCH_READ_ABOVE)
        self._size = len(found)
        return [
            (ctypes.c_uint32.from_buffer_copy(key).value, ThreadStateC.from_buffer_copy(value))
            for key, value in found
        ]

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

    def ongoing(
        self, tid: int, now: int, process_cpu_ns: Callable[[int], int] | None = None
    ) -> InProgress | None:
        """The block host tid ``tid`` is in at ``now``, if out of epoll; one lookup.

        See ``snapshot_of``.
        """
        state = self.get(tid)
        if state is None or not in_iteration(state):
            return None
        cpu = process_cpu_ns(state.host_tgid) if process_cpu_ns is not None else None
        return in_progress_of(tid, state, now, cpu)


class UserWake:
    """The ``user_wake`` map: by when user space looks at the triggers by itself.

    The kernel wakes user space for an ``OFF_CPU`` trigger only when it would
    not look in time on its own. Written before each wait, with the GIL held
    (see ``ThreadTable``); never later than the real wake-up, or triggers
    would wait for it.
    """

    def __init__(self, table: BpfMap) -> None:
        self._map = table
        self._published: int | None = None

    def publish(self, wake_ns: int) -> None:
        """User space looks by ``wake_ns`` (CLOCK_MONOTONIC), 0: not before it is woken."""
        if wake_ns == self._published:
            return
        self._map.update(u32(0), u64(wake_ns))
        self._published = wake_ns


class UserTicks:
    """The kernel's tick done from user space, where no cpu-clock perf event could be attached.

    ``look`` finds the threads out of epoll for the trigger age that the
    kernel has not told of (``told_ns``), and tells of each once per block.
    """

    def __init__(self, table: ThreadTable, trigger_ns: int) -> None:
        self._table = table
        self._trigger_ns = trigger_ns
        self._told: BoundedDict[int, int] = BoundedDict(MAX_TOLD)

    def look(self, now: int) -> list[Trigger]:
        return due_triggers(self._table.entries(), now, self._trigger_ns, self._told)


def due_triggers(
    entries: Sequence[tuple[int, ThreadStateC]],
    now: int,
    trigger_ns: int,
    told: BoundedDict[int, int],
) -> list[Trigger]:
    """Triggers for the threads out of epoll for ``trigger_ns`` at ``now`` that nobody told of.

    ``told`` (host tid -> the block's start) is updated, so each block is told once.
    """
    found = []
    for tid, state in entries:
        start = state.left_epoll_ns
        if not start or now - start < trigger_ns or start in (state.told_ns, told.get(tid)):
            continue
        told[tid] = start
        found.append(Trigger(state.tgid, state.tid, start, now, TriggerReason.DUE, host_tid=tid))
    return found


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
        times.append(ThreadTimes(state.tgid, state.tid, state.iterations, busy, idle))
        if not in_iteration(state) or now - left < min_ns:
            continue
        if process_cpu_ns is not None and state.host_tgid not in cpu_of:
            cpu_of[state.host_tgid] = process_cpu_ns(state.host_tgid)
        ongoing.append(in_progress_of(tid, state, now, cpu_of.get(state.host_tgid)))
    return ThreadSnapshot(ongoing=tuple(ongoing), times=tuple(times))


def in_iteration(state: ThreadStateC) -> bool:
    """Out of epoll in a loop still open: an iteration that may hold the loop up.

    Out of epoll after closing its loop's epoll fd, the thread is between loops
    (or done with them): no loop is held up.
    """
    return bool(state.left_epoll_ns) and not state.closed_loop


def in_progress_of(
    tid: int, state: ThreadStateC, now: int, process_cpu_ns: int | None
) -> InProgress:
    """The block of a thread (host tid ``tid``) out of epoll, and what it did so far.

    The latter only when the CPU time of its process (``process_cpu_ns``) is given.
    """
    so_far = activity_so_far(state, process_cpu_ns, now) if process_cpu_ns is not None else None
    return InProgress(
        state.tgid,
        state.tid,
        state.left_epoll_ns,
        so_far,
        host_pid=state.host_tgid,
        host_tid=tid,
    )
