"""Whether a CPU quota stretched a block: the cgroup's throttled time across it.

A container over its CPU limit is throttled: the loop thread stays runnable
and gets no CPU, which the kernel books as run-queue time. Which part of
that wait was throttling only the cgroup's ``cpu.stat`` says
(``process.cgroup``). It is read twice per block and only for blocks: when
the kernel's trigger confirms one (the flow hands its followers each
confirmed block, at half the threshold) and when the block is enriched,
shortly after it ended. The kernel books a throttled stretch when it ends,
and the loop thread runs again only after that, so a stretch that began
before the first reading is counted whole; one that ended before it is not.
A throttled thread is preempted, not asleep, and the kernel confirms such a
block at the next cpu-clock tick of a busy CPU, which may come only once it
runs again: then its first stretch is missing. Measured here (10 ms of CPU
per 100 ms, a callback of 30 ms of its own, six runs): 87-179 ms of 148-200
ms of run-queue time counted. The figure is a floor, not the whole of it.

The figure is at most the thread's run-queue time (what it can have waited)
and the block's duration; the reading at enrichment may include throttling
just after the block's end, which that bound keeps out of a block that had
none of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from otel_blocksnoop.bounded import MAX_WATCHED_PROCESSES, BoundedDict
from otel_blocksnoop.events import (
    NS_PER_S,
    Activity,
    BlockEvent,
    Throttling,
    Trigger,
    TriggerReason,
)
from otel_blocksnoop.process import cgroup

MAX_PROCESSES = MAX_WATCHED_PROCESSES
"""Watched processes whose cgroup files are kept."""
MAX_BLOCKS = 4096
"""Blocks whose first reading waits for their end; the oldest go first."""
RELOCATE_NS = 30 * NS_PER_S
"""A process's cgroup files are looked up again this often: a quota may be set later."""

BlockKey = tuple[int, int, int]  # pid, tid, start_ns


class ThrottleWatch:
    """Reads a block's cgroup CPU stats as it is confirmed and as it is enriched."""

    def __init__(
        self,
        locate: Callable[[int], cgroup.CgroupFiles | None] | None = None,
        read: Callable[[cgroup.CgroupFiles], cgroup.Reading | None] = cgroup.read,
    ) -> None:
        self._locate = locate or self._locate_here
        self._read = read
        self._mounts: list[cgroup.Mount] | None = None
        self._files: BoundedDict[int, tuple[cgroup.CgroupFiles | None, int]] = BoundedDict(
            MAX_PROCESSES
        )
        self._starts: BoundedDict[BlockKey, cgroup.Reading] = BoundedDict(MAX_BLOCKS)

    def follow(self, trigger: Trigger) -> None:
        """A confirmed block: take its first reading. A new loop: find its cgroup now."""
        if trigger.reason == TriggerReason.NEW_THREAD:
            self._files_of(trigger.pid)
            return
        key = (trigger.pid, trigger.tid, trigger.start_ns)
        if key in self._starts:
            return
        reading = self._reading(trigger.pid)
        if reading is not None:
            self._starts[key] = reading

    def throttling(self, event: BlockEvent, final: bool = True) -> Throttling | None:
        """The block's throttling since its first reading; ``final`` forgets the block.

        None when no first reading was taken (the cgroup could not be read, or
        the block was never confirmed) or the second fails.
        """
        key = (event.pid, event.tid, event.start_ns)
        start = self._starts.pop(key, None) if final else self._starts.get(key)
        if start is None:
            return None
        end = self._reading(event.pid)
        if end is None:
            return None
        return bounded(*cgroup.delta(start, end), event.duration_ns, event.activity)

    def _reading(self, pid: int) -> cgroup.Reading | None:
        files = self._files_of(pid)
        return None if files is None else self._read(files)

    def _files_of(self, pid: int) -> cgroup.CgroupFiles | None:
        now = time.monotonic_ns()
        cached = self._files.get(pid)
        if cached is not None and now - cached[1] < RELOCATE_NS:
            return cached[0]
        files = self._locate(pid)
        self._files[pid] = (files, now)
        return files

    def _locate_here(self, pid: int) -> cgroup.CgroupFiles | None:
        if self._mounts is None:
            self._mounts = cgroup.own_mounts()
        return cgroup.locate(pid, self._mounts)


def bounded(
    throttled_ns: int, periods: int, duration_ns: int, activity: Activity | None
) -> Throttling:
    """The cgroup's figure, at most what the thread can have waited for a CPU."""
    limit = duration_ns if activity is None else min(duration_ns, activity.runq_ns)
    return Throttling(throttled_ns=max(0, min(throttled_ns, limit)), periods=periods)
