"""Blocks from kernel events to records: the path a block takes through analysis.

Each event the kernel sends is classified by thread (a loop, or a native
poller whose blocks are counted, not reported), held until the samples taken
during it have arrived, enriched, and handed on. Threads still out of epoll
are looked at while they are out (hangs, see ``hangs``). Nothing detected is
lost on the way out: ``finish`` drains the ring buffer and reports blocks
still going on as ended by the stop.

A thread that has left its event loop for good (``asyncio.run`` returned and
the program goes on, or tears down) is out of epoll too; it is not a block.
It is told apart by its stack: a thread once seen running a loop whose newest
sample shows no loop machinery any more has left it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from otel_blocksnoop.analysis import hangs
from otel_blocksnoop.analysis.enrich import Enricher
from otel_blocksnoop.events import (
    NS_PER_MS,
    Block,
    BlockEvent,
    Counters,
    EndReason,
    InProgress,
    LoopTimes,
    Loss,
    Record,
    SessionSummary,
    StackSample,
    ThreadKind,
    ThreadSnapshot,
    ThreadTimes,
)
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.process.target import thread_name
from otel_blocksnoop.stacks.sampler import settle_ns
from otel_blocksnoop.stacks.threads import classify, reported

log = logging.getLogger(__name__)

POLL_MS = 100
PENDING_POLL_MS = 10
DRAIN_POLLS = 3
MAX_LISTED_THREADS = 32  # threads named in the summary; all are counted


class EventSource(Protocol):
    """The detector, as far as the flow needs it."""

    def poll(self, timeout_ms: int) -> list[BlockEvent]:
        """Blocks that ended, waiting up to ``timeout_ms`` for one."""

    def snapshot(self, min_ns: int) -> ThreadSnapshot:
        """Threads out of epoll for at least ``min_ns``, and every loop thread's times."""

    def in_progress(self, min_ns: int) -> list[InProgress]:
        """Threads out of epoll for at least ``min_ns`` now."""

    def counters(self) -> Counters:
        """The kernel's totals."""


class Kinds(Protocol):
    """Which threads run event loops (``stacks.threads.ThreadClassifier``)."""

    def kind(self, pid: int, tid: int) -> ThreadKind:
        """What thread ``tid`` of ``pid`` is."""


class Samples(Protocol):
    """The stack sampler, as far as the flow needs it (``stacks.pool.SamplerPool``)."""

    interval_us: int

    def window(self, pid: int, tid: int, start_ns: int, end_ns: int) -> list[StackSample]:
        """Samples of one thread between two instants."""

    def covered_until(self, pid: int, tid: int) -> int:
        """Up to when samples of the thread have arrived."""

    def maintain(self) -> None:
        """Restart samplers that died."""


class _Totals:
    """Running totals behind the summary."""

    def __init__(self) -> None:
        self.blocks = 0
        self.blocked_ns = 0
        self.max_block_ns = 0
        self.ignored_blocks = 0
        self.ignored_threads: dict[int, tuple[str, ThreadKind]] = {}

    def add(self, block: Block) -> None:
        self.blocks += 1
        self.blocked_ns += block.duration_ns
        self.max_block_ns = max(self.max_block_ns, block.duration_ns)

    def ignore(self, event: BlockEvent, kind: ThreadKind) -> None:
        self.ignored_blocks += 1
        if event.tid in self.ignored_threads or len(self.ignored_threads) < MAX_LISTED_THREADS:
            self.ignored_threads[event.tid] = (event.comm, kind)


class BlockFlow:
    """Kernel events in, records out (to ``emit``), in the order the blocks ended."""

    def __init__(  # noqa: PLR0913 - the stages it joins are passed in, none is built here
        self,
        source: EventSource,
        enricher: Enricher,
        emit: Callable[[Record], None],
        losses: Losses,
        *,
        threshold_ns: int,
        kinds: Kinds | None = None,
        stacks: Samples | None = None,
    ) -> None:
        self._source = source
        self._enricher = enricher
        self._emit = emit
        self._losses = losses
        self._threshold_ns = threshold_ns
        self._kinds = kinds
        self._stacks = stacks
        self._settle_ns = settle_ns(stacks.interval_us) if stacks else 0
        self._pending: deque[tuple[BlockEvent, ThreadKind, int]] = deque()
        self._hangs = hangs.HangSchedule(threshold_ns)
        self._next_hang_check = 0
        self._thread_times: tuple[ThreadTimes, ...] = ()
        self._totals = _Totals()

    def step(self) -> None:
        """Wait a little for the kernel, then move every block as far as it can go."""
        self._handle(self._source.poll(self._poll_ms()))
        self._export_ready()
        self._report_hangs()
        if self._stacks is not None:
            self._stacks.maintain()

    def finish(self) -> None:
        """On the way out: drain the kernel, export what waits, end blocks still going on."""
        for _ in range(DRAIN_POLLS):
            self._handle(self._source.poll(0))
        self._export_ready(final=True)
        now = time.monotonic_ns()
        for item in self._source.in_progress(self._threshold_ns):
            block = self._ongoing_block(item, now, EndReason.SIDECAR_STOPPED)
            if block is not None:
                self._deliver(block)

    def loop_times(self) -> LoopTimes:
        """Cumulative busy/idle time of the loop threads (not of native pollers)."""
        threads = tuple(
            times for times in self._thread_times if reported(self._kind_of(times.pid, times.tid))
        )
        identities = tuple(self._enricher.identity(pid) for pid in sorted({t.pid for t in threads}))
        return LoopTimes(
            threads=threads,
            lost_events=self._source.counters().lost_events,
            identities=identities,
            losses=self._losses.snapshot(),
        )

    def summary(self, duration_s: float) -> SessionSummary:
        totals = self._totals
        counters = self._source.counters()
        return SessionSummary(
            blocks=totals.blocks,
            blocked_ns=totals.blocked_ns,
            max_block_ns=totals.max_block_ns,
            lost_events=counters.lost_events,
            iterations=counters.iterations,
            ignored_blocks=totals.ignored_blocks,
            ignored_threads=tuple(
                (tid, name, kind) for tid, (name, kind) in sorted(totals.ignored_threads.items())
            ),
            duration_s=duration_s,
            losses=self._losses.snapshot(),
        )

    def _poll_ms(self) -> int:
        """How long to wait for events: not past the next hang check; less with blocks pending."""
        wait_ms = PENDING_POLL_MS if self._pending else POLL_MS
        # Rounded up: rounded down, the last fraction of a millisecond before a
        # check was spent calling poll(0) in a loop (470 calls/s, measured).
        until_check_ms = -((time.monotonic_ns() - self._next_hang_check) // NS_PER_MS)
        return int(max(0, min(wait_ms, until_check_ms)))

    def _handle(self, events: list[BlockEvent]) -> None:
        for event in events:
            kind = self._kind_of(event.pid, event.tid)
            if not reported(kind):
                self._totals.ignore(event, kind)
                continue
            self._enricher.identity(event.pid)
            # Samples taken during the block reach us a little after it ends.
            self._pending.append((event, kind, event.end_ns + self._settle_ns))

    def _export_ready(self, final: bool = False) -> None:
        """Export pending blocks, in order, once their samples are in (or late)."""
        if final and self._pending:
            wait_ns = self._pending[-1][2] - time.monotonic_ns()
            if wait_ns > 0:
                time.sleep(wait_ns / 1e9)
        now = time.monotonic_ns()
        while self._pending:
            event, kind, deadline = self._pending[0]
            covered = (
                self._stacks is None
                or now >= deadline
                or self._stacks.covered_until(event.pid, event.tid) >= event.end_ns
            )
            if not covered:
                break
            self._pending.popleft()
            samples = self._samples(event)
            if event.end_reason == EndReason.THREAD_EXITED and not self._hang_at_exit(
                event, samples
            ):
                continue
            self._deliver(self._enricher.block(event, kind, samples))

    def _deliver(self, block: Block) -> None:
        if self._stacks is not None and not block.stack:
            self._losses.add(Loss.STACK_UNKNOWN)
        self._totals.add(block)
        self._emit(block)

    def _samples(self, event: BlockEvent) -> list[StackSample]:
        if self._stacks is None:
            return []
        return self._stacks.window(event.pid, event.tid, event.start_ns, event.end_ns)

    def _hang_at_exit(self, event: BlockEvent, samples: list[StackSample]) -> bool:
        """Whether a thread that exited out of epoll was stuck in its loop.

        Only when it was already reported hanging, or its newest stack still
        shows the loop; otherwise it is most often the interpreter tearing
        down after the loop ended, which is not a block.
        """
        if self._hangs.was_reported(hangs.Ongoing(event.pid, event.tid, event.start_ns)):
            return True
        if samples and classify(samples[-1].frames) == ThreadKind.LOOP:
            return True
        log.debug(
            "thread %d exited %.0f ms after its last loop iteration; not a block",
            event.tid,
            event.duration_ns / 1e6,
        )
        return False

    def _report_hangs(self) -> None:
        """Report blocks still going on that are due (see ``hangs``)."""
        now = time.monotonic_ns()
        if now < self._next_hang_check:
            return
        self._next_hang_check = now + hangs.CHECK_EVERY_NS
        snapshot = self._source.snapshot(self._hangs.first_ns)
        self._thread_times = snapshot.times
        # Who a process is, read as soon as its loop runs: a short-lived app may be
        # gone (its /proc/PID/environ empty) by the time its first block is exported.
        for times in snapshot.times:
            self._enricher.identity(times.pid)
        ongoing = {
            hangs.Ongoing(item.pid, item.tid, item.start_ns): item for item in snapshot.ongoing
        }
        for key in self._hangs.due(ongoing, now):
            block = self._ongoing_block(ongoing[key], now, EndReason.RETURNED)
            if block is None:
                continue
            self._hangs.reported(key, now)
            self._emit(block)

    def _ongoing_block(self, item: InProgress, now: int, reason: EndReason) -> Block | None:
        event = BlockEvent(
            pid=item.pid,
            tid=item.tid,
            comm=thread_name(item.pid, item.tid) or "",
            start_ns=item.start_ns,
            end_ns=now,
            activity=item.activity,
            end_reason=reason,
        )
        kind = self._kind_of(event.pid, event.tid)
        samples = self._samples(event)
        if not reported(kind) or self._left_loop(kind, samples):
            return None
        return self._enricher.block(event, kind, samples, in_progress=reason == EndReason.RETURNED)

    @staticmethod
    def _left_loop(kind: ThreadKind, samples: list[StackSample]) -> bool:
        """A loop thread whose newest stack shows no event loop: the loop has ended."""
        return kind == ThreadKind.LOOP and bool(samples) and classify(samples[-1].frames) != kind

    def _kind_of(self, pid: int, tid: int) -> ThreadKind:
        if self._kinds is None:
            return ThreadKind.UNKNOWN
        return self._kinds.kind(pid, tid)
