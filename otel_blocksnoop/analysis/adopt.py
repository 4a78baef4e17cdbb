"""Loops already blocked when watching begins: found at attach, then followed like any block.

The kernel times a loop iteration from a return from epoll, so a loop stuck
since before the program was attached (the usual reason to attach) would
never be reported. At attach, each thread that the process's stacks show
running an event loop, and that is not inside an epoll call now, is entered
in the kernel's thread table as out of epoll since now; from there the
triggers, hang reports and the block's end take it like any other block. Its
real start is unknown: the block says so (``Block.started_before_watch``), and
its duration is a lower bound.

The thread is checked again once entered: one that went into epoll between
the look and the entry would otherwise be reported hung while it idles.
"""

from __future__ import annotations

import logging
from typing import Protocol

from otel_blocksnoop.analysis.sources import Kinds
from otel_blocksnoop.events import ThreadKind
from otel_blocksnoop.kernel.constants import OFF_ON_CPU, OFF_RUNQ
from otel_blocksnoop.kernel.detector import EPOLL_SYSCALLS
from otel_blocksnoop.kernel.syscalls import syscall_name
from otel_blocksnoop.process.target import RUNNING, thread_ids, thread_syscall

log = logging.getLogger(__name__)


class LoopKinds(Kinds, Protocol):
    """The thread classifier, able to wait for the dump it started (``ThreadClassifier``)."""

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until the threads asked about are known (False if not within ``timeout_s``)."""


class Adopter(Protocol):
    """The detector, as far as adopting a blocked thread needs it."""

    def adopt(self, pid: int, tid: int, off_nr: int) -> int | None:
        """Enter ``tid`` as out of epoll since now; its start, None if the kernel has it."""

    def disown(self, tid: int, start_ns: int) -> None:
        """Undo ``adopt`` if the entry is still the one written."""

    def out_since(self, tid: int) -> int:
        """When ``tid`` last left epoll; 0 while it is inside."""


def _in_epoll(nr: int) -> bool:
    return syscall_name(nr) in EPOLL_SYSCALLS


def _off_nr(nr: int) -> int:
    """What the kernel's books call what the thread does now (``thread_syscall``'s answer)."""
    if nr == RUNNING:
        return OFF_ON_CPU
    return nr if nr >= 0 else OFF_RUNQ


KINDS_WAIT_S = 3.0
"""How long attaching waits for the dump that tells the loop threads (Austin's own limit is 2 s)."""


def _loops_out_of_epoll(pid: int, kinds: LoopKinds) -> list[int]:
    """Threads of ``pid`` outside epoll now whose stacks show an event loop."""
    out = []
    for tid in thread_ids(pid):
        nr = thread_syscall(pid, tid)
        if nr is not None and not _in_epoll(nr):
            out.append(tid)
    found = {tid: kinds.kind(pid, tid) for tid in out}
    if any(kind is None for kind in found.values()):
        kinds.wait_idle(KINDS_WAIT_S)  # one dump of the process tells them all
        found = {tid: kinds.kind(pid, tid) for tid in out}
    return [tid for tid, kind in found.items() if kind == ThreadKind.LOOP]


def adopt_blocked(pid: int, kinds: LoopKinds, detector: Adopter) -> list[tuple[int, int]]:
    """Enter the loops of ``pid`` that are out of epoll now; each one's (tid, start)."""
    adopted = []
    for tid in _loops_out_of_epoll(pid, kinds):
        nr = thread_syscall(pid, tid)
        if nr is None or _in_epoll(nr):
            continue
        start = detector.adopt(pid, tid, _off_nr(nr))
        if start is None:
            continue  # it came back to epoll meanwhile: the kernel has it
        now_nr = thread_syscall(pid, tid)
        if now_nr is not None and _in_epoll(now_nr):
            # In epoll now: it may have gone in before the entry was written, and
            # would then look blocked while it idles. Came back after it, the
            # kernel ended the block already and the entry is not ours any more.
            detector.disown(tid, start)
            continue
        if detector.out_since(tid) != start:
            continue  # it went through epoll meanwhile: the kernel's books are its own
        log.warning(
            "thread %d of PID %d was already out of its event loop when watching began "
            "(blocked since before); reported from now",
            tid,
            pid,
        )
        adopted.append((tid, start))
    return adopted
