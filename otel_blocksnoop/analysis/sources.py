"""What the flow needs of the stages it joins: the kernel, the sampler, the followers.

Small protocols, so ``flow`` is driven by doubles in tests and never needs
more of a stage than it uses.
"""

from __future__ import annotations

from typing import Protocol

from otel_blocksnoop.events import (
    Counters,
    InProgress,
    KernelEvent,
    StackSample,
    ThreadKind,
    ThreadSnapshot,
    Trigger,
)


class EventSource(Protocol):
    """The detector, as far as the flow needs it."""

    def poll(self, timeout_ms: int | None) -> list[KernelEvent]:
        """Blocks that ended and triggers, waiting up to ``timeout_ms`` (None: no limit)."""

    def ongoing(self, tid: int) -> InProgress | None:
        """The block ``tid`` is in now, with what it did so far; None inside epoll."""

    def out_since(self, tid: int) -> int:
        """When ``tid`` last left epoll; 0 while it is inside."""

    def snapshot(self, min_ns: int, activity: bool = True) -> ThreadSnapshot:
        """Threads out of epoll for at least ``min_ns``, and every loop thread's times."""

    def in_progress(self, min_ns: int) -> list[InProgress]:
        """Threads out of epoll for at least ``min_ns`` now."""

    def counters(self) -> Counters:
        """The kernel's totals."""


class Follower(Protocol):
    """A stage that gathers evidence while a block lasts (``trace_link.TraceLinker``)."""

    def follow(self, trigger: Trigger) -> None:
        """The kernel says to look at a thread: start, and stop when its block ends."""


class Kinds(Protocol):
    """Which threads run event loops (``stacks.threads.ThreadClassifier``)."""

    def kind(self, pid: int, tid: int) -> ThreadKind | None:
        """What thread ``tid`` of ``pid`` is; None: not known yet (being looked at, unwaited)."""


class Samples(Protocol):
    """The stack sampler, as far as the flow needs it (``stacks.pool.SamplerPool``)."""

    interval_us: int

    def window(self, pid: int, tid: int, start_ns: int, end_ns: int) -> list[StackSample]:
        """Samples of one thread between two instants."""

    def covered_until(self, pid: int, tid: int) -> int:
        """Up to when samples of the thread have arrived."""

    def prepare(self, pid: int) -> None:
        """A loop of ``pid`` has started: have its sampler attached before its first block."""

    def begin(self, pid: int, tid: int, start_ns: int) -> None:
        """A block of the thread is going on: gather its stacks (on demand)."""

    def end(self, pid: int, tid: int) -> None:
        """The thread's block ended: stop gathering when no other block needs it."""

    def maintain(self) -> int | None:
        """Restart samplers that died; when (CLOCK_MONOTONIC ns) to be called again, if ever."""
