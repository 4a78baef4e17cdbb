"""One watching session: poll the detector, classify, enrich, hand to the sinks, sum up.

Nothing detected is lost on the way out: after a stop request or the
target's exit the ring buffer is drained, and blocks still going on are
reported as ended by the stop, before the summary is written.

A thread that has left its event loop for good (``asyncio.run`` returned and
the program goes on, or tears down) is out of epoll too; it is not a block.
It is told apart by its stack: a thread once seen running a loop whose newest
sample shows no loop machinery any more has left it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from otel_blocksnoop.analysis import cause, hangs
from otel_blocksnoop.analysis.attribution import attribute
from otel_blocksnoop.analysis.clock import WallClock
from otel_blocksnoop.analysis.trace_link import TraceLinker
from otel_blocksnoop.events import (
    NS_PER_MS,
    Block,
    BlockEvent,
    EndReason,
    IterationStats,
    LoopTimes,
    ProcessIdentity,
    SessionSummary,
    ThreadKind,
    ThreadTimes,
)
from otel_blocksnoop.export.sink import Sink
from otel_blocksnoop.kernel import histogram
from otel_blocksnoop.kernel.detector import Counters, Detector, InProgress, ThreadSnapshot
from otel_blocksnoop.process.identity import read_identity
from otel_blocksnoop.process.source import source_line
from otel_blocksnoop.process.target import thread_name
from otel_blocksnoop.stacks.sampler import SamplerPool, StackSample, settle_ns
from otel_blocksnoop.stacks.threads import ThreadClassifier, classify, reported

log = logging.getLogger(__name__)

POLL_MS = 100
PENDING_POLL_MS = 10
STATS_PERCENTILES = (0.5, 0.9, 0.99)
DRAIN_POLLS = 3
MAX_LISTED_THREADS = 32  # threads named in the summary; all are counted
MAX_IDENTITIES = 256  # watched processes whose identity is kept


class Watched(Protocol):
    """The watched process, as far as the session cares."""

    def exited(self) -> bool:
        """True once the process is gone."""


@dataclass(frozen=True, slots=True)
class SessionOptions:
    threshold_ns: int
    stats: bool = False
    all_threads: bool = False
    stats_interval_s: float = 1.0


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


class Session:
    def __init__(  # noqa: PLR0913 - every stage is passed in, none is built here
        self,
        detector: Detector,
        sinks: Sequence[Sink],
        classifier: ThreadClassifier | None,
        options: SessionOptions,
        *,
        stacks: SamplerPool | None = None,
        linker: TraceLinker | None = None,
    ) -> None:
        self._detector = detector
        self._linker = linker
        self._stacks = stacks
        self._pending: deque[tuple[BlockEvent, ThreadKind, int]] = deque()
        self._hangs = hangs.HangSchedule(options.threshold_ns)
        self._next_hang_check = 0
        self._identities: dict[int, ProcessIdentity] = {}
        self._thread_times: tuple[ThreadTimes, ...] = ()
        self._settle_ns = settle_ns(stacks.interval_us) if stacks else 0
        self._sinks = sinks
        self._classifier = classifier
        self._options = options
        self._clock = WallClock()
        self._totals = _Totals()
        self._stop_requested = False
        self._lost_reported = 0
        self._previous_counts: tuple[int, ...] = (0,) * histogram.BUCKETS
        self._previous_counters = Counters(0, 0, 0, 0)

    def request_stop(self) -> None:
        """Ask the loop to drain and return; safe from a signal handler."""
        self._stop_requested = True

    @property
    def stopping(self) -> bool:
        return self._stop_requested

    def run(self, target: Watched) -> SessionSummary:
        started = time.monotonic()
        next_stats = started + self._options.stats_interval_s
        last_stats = started
        while not self._stop_requested and not target.exited():
            if self._options.stats:
                time.sleep(min(POLL_MS / 1000, max(0.0, next_stats - time.monotonic())))
            else:
                self._handle(self._detector.poll(self._poll_ms()))
                self._export_ready()
                self._report_hangs()
                if self._stacks is not None:
                    self._stacks.maintain()
            now = time.monotonic()
            if now >= next_stats:
                if self._options.stats:
                    self._emit_stats(now - last_stats)
                    last_stats = now
                else:
                    self._emit_loop_times()
                self._warn_lost()
                next_stats = now + self._options.stats_interval_s
        if not self._options.stats:
            for _ in range(DRAIN_POLLS):
                self._handle(self._detector.poll(0))
            self._export_ready(final=True)
            self._report_unfinished()
        summary = self._summary(time.monotonic() - started)
        for sink in self._sinks:
            sink.export(summary)
            sink.shutdown()
        return summary

    def _poll_ms(self) -> int:
        """How long to wait for events: not past the next hang check; less with blocks pending."""
        wait_ms = PENDING_POLL_MS if self._pending else POLL_MS
        # Rounded up: rounded down, the last fraction of a millisecond before a
        # check was spent calling poll(0) in a loop (470 calls/s, measured).
        until_check_ms = -((time.monotonic_ns() - self._next_hang_check) // NS_PER_MS)
        return int(max(0, min(wait_ms, until_check_ms)))

    def _handle(self, events: list[BlockEvent]) -> None:
        for event in events:
            kind = self._kind(event)
            if not reported(kind):
                self._totals.ignore(event, kind)
                continue
            self._identity(event.pid)
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
            block = self._enrich(event, kind, samples)
            self._totals.add(block)
            for sink in self._sinks:
                sink.export(block)

    def _samples(self, event: BlockEvent) -> list[StackSample]:
        if self._stacks is None:
            return []
        return self._stacks.window(event.pid, event.tid, event.start_ns, event.end_ns)

    def _left_loop(self, kind: ThreadKind, samples: list[StackSample]) -> bool:
        """A loop thread whose newest stack shows no event loop: the loop has ended."""
        return kind == ThreadKind.LOOP and bool(samples) and classify(samples[-1].frames) != kind

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
        snapshot: ThreadSnapshot = self._detector.snapshot(self._hangs.first_ns)
        self._thread_times = snapshot.times
        # Who a process is, read as soon as its loop runs: a short-lived app may be
        # gone (its /proc/PID/environ empty) by the time its first block is exported.
        for times in snapshot.times:
            self._identity(times.pid)
        ongoing = {
            hangs.Ongoing(item.pid, item.tid, item.start_ns): item for item in snapshot.ongoing
        }
        for key in self._hangs.due(ongoing, now):
            block = self._ongoing_block(ongoing[key], now, EndReason.RETURNED)
            if block is None:
                continue
            self._hangs.reported(key, now)
            for sink in self._sinks:
                sink.export(block)

    def _emit_loop_times(self) -> None:
        """Cumulative busy/idle time of the loop threads (not of native pollers)."""
        threads = tuple(
            times for times in self._thread_times if reported(self._kind_of(times.pid, times.tid))
        )
        identities = tuple(self._identity(pid) for pid in sorted({t.pid for t in threads}))
        loop_times = LoopTimes(
            threads=threads,
            lost_events=self._detector.counters().lost_events,
            identities=identities,
        )
        for sink in self._sinks:
            sink.export(loop_times)

    def _identity(self, pid: int) -> ProcessIdentity:
        identity = self._identities.get(pid)
        if identity is None:
            while len(self._identities) >= MAX_IDENTITIES:
                del self._identities[next(iter(self._identities))]
            identity = self._identities[pid] = read_identity(pid)
        return identity

    def _report_unfinished(self) -> None:
        """On the way out: blocks still going on end here, so none is lost."""
        now = time.monotonic_ns()
        for item in self._detector.in_progress(self._options.threshold_ns):
            block = self._ongoing_block(item, now, EndReason.SIDECAR_STOPPED)
            if block is not None:
                self._totals.add(block)
                for sink in self._sinks:
                    sink.export(block)

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
        kind = self._kind(event)
        samples = self._samples(event)
        if not reported(kind) or self._left_loop(kind, samples):
            return None
        return self._enrich(event, kind, samples, in_progress=reason == EndReason.RETURNED)

    def _enrich(
        self,
        event: BlockEvent,
        kind: ThreadKind,
        samples: list[StackSample],
        in_progress: bool = False,
    ) -> Block:
        attribution = attribute([sample.frames for sample in samples]) if samples else None
        stack = attribution.stack if attribution else ()
        why, syscall = cause.classify(event.activity)
        found = (
            self._linker.context(event.pid, event.tid, event.start_ns, final=not in_progress)
            if self._linker is not None
            else None
        )
        return Block(
            pid=event.pid,
            tid=event.tid,
            thread_name=thread_name(event.pid, event.tid) or event.comm,
            start_ns=event.start_ns,
            end_ns=event.end_ns,
            start_unix_ns=self._clock.to_unix_ns(event.start_ns),
            end_unix_ns=self._clock.to_unix_ns(event.end_ns),
            threshold_ns=self._options.threshold_ns,
            thread_kind=kind,
            stack=stack,
            source_lines=tuple(source_line(event.pid, f.file, f.line) for f in stack),
            call_site=attribution.call_site if attribution else None,
            samples=attribution.supporting if attribution else 0,
            samples_busy=attribution.busy_samples if attribution else 0,
            cause=why,
            syscall=syscall,
            activity=event.activity,
            end_reason=event.end_reason,
            in_progress=in_progress,
            process=self._identity(event.pid),
            parent=found.span if found else None,
            task=found.task if found else None,
        )

    def _kind(self, event: BlockEvent) -> ThreadKind:
        return self._kind_of(event.pid, event.tid)

    def _kind_of(self, pid: int, tid: int) -> ThreadKind:
        if self._options.all_threads or self._classifier is None:
            return ThreadKind.UNKNOWN
        return self._classifier.kind(pid, tid)

    def _emit_stats(self, interval_s: float) -> None:
        snapshot = self._detector.histogram()
        counters = self._detector.counters()
        delta = [
            now - before for now, before in zip(snapshot.counts, self._previous_counts, strict=True)
        ]
        count = counters.iterations - self._previous_counters.iterations
        low, high = (snapshot.min_ns, snapshot.max_ns) if count else (0, 0)
        # Percentiles are bucket midpoints; the extremes are exact, so clamp to them.
        stats = IterationStats(
            interval_s=interval_s,
            count=count,
            sum_ns=counters.busy_ns - self._previous_counters.busy_ns,
            min_ns=low,
            max_ns=high,
            percentiles_ns={
                p: min(max(histogram.percentile(delta, p), low), high) for p in STATS_PERCENTILES
            },
        )
        self._previous_counts = snapshot.counts
        self._previous_counters = counters
        for sink in self._sinks:
            sink.export(stats)

    def _warn_lost(self) -> None:
        lost = self._detector.counters().lost_events
        if lost > self._lost_reported:
            log.warning(
                "lost %d blocks: the ring buffer was full (the sidecar fell behind)",
                lost - self._lost_reported,
            )
            self._lost_reported = lost

    def _summary(self, duration_s: float) -> SessionSummary:
        totals = self._totals
        counters = self._detector.counters()
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
        )
