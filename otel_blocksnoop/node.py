"""Node mode: every Python process a selector picks, watched from when it starts until it exits.

``NodeWatch`` stands where attach mode's list of PIDs stands: the session
asks it whether to go on (always, until a signal), wakes on its fd (a
watched process exited) and calls ``step`` each time round. A step lets go
of the processes that exited, once the flow holds none of their blocks (so
what was detected is still exported, with its identity), and every
``SCAN_EVERY_S`` scans /proc for new ones (``process.discovery``), up to
``max_processes`` at once: past that a process is counted, warned of once,
and looked at again at the next scan, when a place may have come free.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from typing import Protocol

from otel_blocksnoop.bounded import MAX_WATCHED_PROCESSES, BoundedDict
from otel_blocksnoop.events import NodeCounts
from otel_blocksnoop.process.target import ExitWatch, TargetInfo

log = logging.getLogger(__name__)

SCAN_EVERY_S = 1.0
"""How often /proc is scanned for new processes."""
LEAVE_RETRY_S = 0.2
"""How often a process that exited is looked at again while the flow holds its blocks."""
LEAVE_WAIT_S = 10.0
"""Longest an exited process is held for its blocks (their samples and kind come within ~3 s)."""
DEFAULT_MAX_PROCESSES = MAX_WATCHED_PROCESSES
"""Processes watched at once, by default (``--max-processes``): as many as the sidecar's
per-process tables hold, which is also the most ``--max-processes`` accepts."""
MAX_OVER_CAP = 4096
"""Processes over the cap remembered, so that each is counted once."""
TRIM_EVERY_S = 10.0
"""How often, at most, the C heap's free pages are given back after processes were let go."""


def _malloc_trim() -> Callable[[], object] | None:
    """The C library's ``malloc_trim(0)`` (glibc), or None (another C library).

    What a watched process's coming and going leaves free in the C heap
    (threads started and ended, their buffers) sits in glibc's arenas, most
    of it between chunks in use, where glibc never gives it back by itself:
    the sidecar's RSS grew with every process seen. ``malloc_trim`` returns
    every free page of every arena to the kernel.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_TRIM = _malloc_trim()


class Finder(Protocol):
    """The scan of /proc (``process.discovery.Discovery``), as far as node mode needs it."""

    def scan(self) -> list[TargetInfo]:
        """The processes picked since the last scan."""

    def forget(self, pid: int) -> None:
        """``pid`` is not watched (gone, or over the cap): judge it afresh when seen again."""


class Stages(Protocol):
    """What node mode does to the session's stages as a process comes and goes."""

    def attach(self, target: TargetInfo, *, running: bool) -> None:
        """Watch ``target``; ``running``: it ran before the sidecar (it may be idle in epoll)."""

    def holds(self, pid: int) -> bool:
        """Whether a block of ``pid`` is still on its way to the sinks."""

    def release(self, pid: int) -> None:
        """Let go of everything held for ``pid``, which exited."""

    def held(self) -> dict[str, int]:
        """Per kind of state, how many processes it is held for now."""


class NodeWatch:
    """The watched processes of node mode: found by scans, let go at their exit."""

    def __init__(
        self,
        discovery: Finder,
        stages: Stages,
        max_processes: int = DEFAULT_MAX_PROCESSES,
        *,
        scan_every_s: float = SCAN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._discovery = discovery
        self._stages = stages
        self._max = max_processes
        self._every_s = scan_every_s
        self._clock = clock
        self._exits = ExitWatch([])
        self._watched: dict[int, TargetInfo] = {}
        self._leaving: dict[int, float] = {}  # pid -> when its exit was seen
        self._over_cap: BoundedDict[int, None] = BoundedDict(MAX_OVER_CAP)
        self._warned_cap = False
        self._next_scan = 0.0
        self._next_trim = 0.0
        self._released = False
        self._found = 0
        self._left = 0

    def start(self) -> int:
        """Watch what runs now; how many processes."""
        self._scan(self._clock(), running=True)
        return len(self._watched)

    def exited(self) -> bool:
        """Node mode ends only when told to stop."""
        return False

    def fileno(self) -> int:
        """Readable once a watched process has exited (until ``step`` has seen it)."""
        return self._exits.fileno()

    def step(self) -> float:
        """Let go of what exited, scan when due; when (time.monotonic) to be called again.

        Called once per turn of the session's loop, before the flow's step: a
        process whose exit a step sees is let go of at a later one, once the
        flow has taken in what the kernel sent before the exit, and holds none
        of its blocks.
        """
        now = self._clock()
        # Exits seen at an earlier step first: the pidfd may be read before the
        # kernel's last events of the process, which the flow's step in between took in.
        for pid, since in list(self._leaving.items()):
            if self._stages.holds(pid) and now - since < LEAVE_WAIT_S:
                continue
            self._release(pid)
        for pid in self._exits.take_exited():
            self._leaving[pid] = now
        if self._released and now >= self._next_trim and _TRIM is not None:
            self._released = False
            self._next_trim = now + TRIM_EVERY_S
            _TRIM()
        if now >= self._next_scan:
            self._scan(now, running=False)
        return min(self._next_scan, now + LEAVE_RETRY_S) if self._leaving else self._next_scan

    def close(self) -> None:
        self._exits.close()

    def counts(self) -> NodeCounts:
        return NodeCounts(
            found=self._found,
            left=self._left,
            watched=len(self._watched),
            over_cap=len(self._over_cap),
            held=tuple(sorted(self._stages.held().items())),
        )

    def _scan(self, now: float, *, running: bool) -> None:
        self._next_scan = now + self._every_s
        for target in self._discovery.scan():
            if len(self._watched) >= self._max:
                self._refuse(target)
                continue
            if not self._exits.add(target.pid):
                self._discovery.forget(target.pid)
                continue  # gone already
            self._watched[target.pid] = target
            self._found += 1
            self._over_cap.pop(target.pid, None)
            self._stages.attach(target, running=running)

    def _refuse(self, target: TargetInfo) -> None:
        """Over the cap: counted once, warned of once, looked at again at the next scan."""
        self._discovery.forget(target.pid)
        if target.pid not in self._over_cap:
            self._over_cap[target.pid] = None
        if not self._warned_cap:
            self._warned_cap = True
            log.warning(
                "watching %d processes already (--max-processes): PID %d (%s) and any more "
                "are not watched until some exit",
                self._max,
                target.pid,
                target.cmdline[:60],
            )

    def _release(self, pid: int) -> None:
        del self._leaving[pid]
        self._watched.pop(pid, None)
        self._discovery.forget(pid)
        self._stages.release(pid)
        self._left += 1
        self._released = True
        log.info("PID %d exited; no longer watched", pid)
