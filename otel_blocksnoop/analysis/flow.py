"""Blocks from kernel events to records: the path a block takes through analysis.

Each block the kernel sends is classified by thread (a loop, or a native
poller whose blocks are counted, not reported), held until the samples taken
during it have arrived, enriched, and handed on. The kernel also says when
to look (``Trigger``): each trigger goes to the followers that gather
evidence while the block lasts (the trace linker), and arms a timer at the
age its block is due as a hang (``hangs``); the timer looks at that one
thread, and reports the block if it still goes on. Between those, the flow
waits on the kernel with no timeout but its own timers' (blocks waiting for
their samples, hang reports, the sampler's upkeep) and the caller's. Nothing
detected is lost on the way out: ``finish`` drains the ring buffer and
reports blocks still going on as ended by the stop.

A thread that has left its event loop for good (``asyncio.run`` returned and
the program goes on, or tears down) is out of epoll too; it is not a block.
It is told apart by its stack: a thread once seen running a loop whose newest
sample shows no loop machinery any more has left it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

from otel_blocksnoop.analysis import hangs
from otel_blocksnoop.analysis.adopt import Adopter, LoopKinds, adopt_blocked
from otel_blocksnoop.analysis.enrich import Enricher
from otel_blocksnoop.analysis.sources import EventSource, Follower, Kinds, Samples
from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import (
    NS_PER_MS,
    Block,
    BlockEvent,
    EndReason,
    InProgress,
    KernelEvent,
    LoopTimes,
    Loss,
    Record,
    SessionSummary,
    StackSample,
    ThreadKind,
    Trigger,
    TriggerReason,
)
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.process.target import thread_name
from otel_blocksnoop.stacks.austin import WHERE_TIMEOUT_S
from otel_blocksnoop.stacks.sampler import settle_ns
from otel_blocksnoop.stacks.threads import classify, reported

log = logging.getLogger(__name__)

POLL_MS = 100
"""Stats mode's period of looking at the clock (the session); blocks need no polling."""
PENDING_POLL_MS = 10
DRAIN_POLLS = 3
KIND_WAIT_NS = int(WHERE_TIMEOUT_S * 1e9) + 500 * NS_PER_MS
"""How long past its samples' time a block waits for its thread's kind (a dump of the
process, bounded by Austin's own timeout); then it is reported as an unknown thread's."""
MAX_LISTED_THREADS = 32  # threads named in the summary; all are counted
ADOPTED_STACK_WAIT_NS = 2 * NS_PER_MS * 1000
"""How long the first hang report of a loop blocked before watching waits for its first stack:
its sampler attaches only now."""
HANG_EVIDENCE_WAIT_NS = 2 * NS_PER_MS * 1000
"""How long a first hang report waits for a stack taken once it was due (see _awaits_evidence)."""


class _Totals:
    """Running totals behind the summary."""

    def __init__(self) -> None:
        self.blocks = 0
        self.blocked_ns = 0
        self.max_block_ns = 0
        self.ignored_blocks = 0
        self.ignored_threads: dict[int, tuple[str, ThreadKind]] = {}

    def add(self, block: Block) -> None:
        if block.segment:
            return  # an iteration cut into requests' shares counts once, by its first
        self.blocks += 1
        self.blocked_ns += block.iteration_ns
        self.max_block_ns = max(self.max_block_ns, block.iteration_ns)

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
        followers: Sequence[Follower] = (),
    ) -> None:
        self._source = source
        self._enricher = enricher
        self._emit = emit
        self._losses = losses
        self._threshold_ns = threshold_ns
        self._kinds = kinds
        self._stacks = stacks
        self._followers = tuple(followers)
        self._settle_ns = settle_ns(stacks.interval_us) if stacks else 0
        # (block, its thread's kind if known yet, when its samples are in at the latest)
        self._pending: deque[tuple[BlockEvent, ThreadKind | None, int]] = deque()
        self._hangs = hangs.HangSchedule(threshold_ns)
        # Timers: (due, order, block) in a heap. A thread is in one block at a time:
        # _armed holds, by tid, its block and the due time of the live timer (other
        # heap entries are stale). A block in _looks awaits its first look (an
        # OFF_CPU trigger), the others their hang report.
        self._timers: list[tuple[int, int, hangs.Ongoing]] = []
        self._armed: dict[int, tuple[hangs.Ongoing, int]] = {}
        self._looks: set[hangs.Ongoing] = set()
        self._order = itertools.count()
        self._maintain_at: int | None = None  # when the sampler wants its upkeep
        self._totals = _Totals()
        self._adopted: BoundedDict[hangs.Ongoing, None] = BoundedDict(hangs.MAX_TRACKED)
        self._hang_due: BoundedDict[hangs.Ongoing, int] = BoundedDict(hangs.MAX_TRACKED)

    def adopt(self, pid: int, detector: Adopter, kinds: LoopKinds) -> int:
        """Follow the loops of ``pid`` that were blocked before it was watched; how many.

        Each is entered in the kernel's books as blocked since now (``adopt``),
        then looked at as if the kernel had said so: its sampler, span reader
        and identity are prepared, its stacks gathered, its hang reported.
        Loops are told apart by their stacks: without them nothing is adopted.
        """
        found = adopt_blocked(pid, kinds, detector)
        for tid, start in found:
            self._adopted[hangs.Ongoing(pid, tid, start)] = None
            self._triggered(Trigger(pid, tid, start, start, TriggerReason.NEW_THREAD))
            self._triggered(Trigger(pid, tid, start, start, TriggerReason.DUE))
        return len(found)

    def step(self, until_ns: int | None = None) -> None:
        """Wait for the kernel, then move every block as far as it can go.

        The wait ends at the flow's next timer, or at ``until_ns`` (CLOCK_MONOTONIC).
        """
        self._handle(self._source.poll(self._wait_ms(until_ns)))
        self._export_ready()
        self._run_timers(time.monotonic_ns())
        if self._stacks is not None:
            self._maintain_at = self._stacks.maintain()

    @property
    def pending(self) -> int:
        """Blocks that ended and wait for their samples or their thread's kind."""
        return len(self._pending)

    def settled(self, until_ns: int) -> bool:
        """Whether every block the kernel sent that ended by ``until_ns`` has been handed on."""
        return all(event.end_ns > until_ns for event, _, _ in self._pending)

    def holds(self, pid: int) -> bool:
        """Whether a block of ``pid`` is still on its way (pending, or followed while it lasts)."""
        return any(event.pid == pid for event, _, _ in self._pending) or any(
            key.pid == pid for key, _ in self._armed.values()
        )

    def finish(self, deadline_ns: int | None = None) -> None:
        """On the way out: drain the kernel, export what waits, end blocks still going on.

        Waits for samples no later than ``deadline_ns`` (CLOCK_MONOTONIC), nor
        for a thread's kind at all: a block whose samples are not in by then
        goes out with what there is.
        """
        for _ in range(DRAIN_POLLS):
            self._handle(self._source.poll(0))
        self._export_ready(final=True, deadline_ns=deadline_ns)
        now = time.monotonic_ns()
        for item in self._source.in_progress(self._threshold_ns):
            block = self._ongoing_block(item, now, EndReason.SIDECAR_STOPPED)
            if block is not None:
                self._deliver(block)

    def loop_times(self) -> LoopTimes:
        """Cumulative busy/idle time of the loop threads (not of native pollers)."""
        snapshot = self._source.snapshot(self._hangs.first_ns, activity=False)
        threads = tuple(
            replace(times, tid=self._enricher.app_tid(times.pid, times.tid))
            for times in snapshot.times
            if (kind := self._kind_of(times.pid, times.tid)) is not None and reported(kind)
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
        if counters.unseen_switches:
            log.debug(
                "the kernel saw a watched thread running %d times with no switch back on CPU "
                "reported before it; each off-CPU stretch was closed there",
                counters.unseen_switches,
            )
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

    def _wait_ms(self, until_ns: int | None) -> int | None:
        """How long to wait for the kernel: until the earliest timer, None if there is none.

        Blocks waiting for their samples are looked at every PENDING_POLL_MS.
        """
        now = time.monotonic_ns()
        while self._timers and not self._live(self._timers[0]):
            heapq.heappop(self._timers)
        deadlines = [self._timers[0][0]] if self._timers else []
        if self._pending:
            deadlines.append(now + PENDING_POLL_MS * NS_PER_MS)
        if self._stacks is not None and self._maintain_at is not None:
            deadlines.append(self._maintain_at)
        if until_ns is not None:
            deadlines.append(until_ns)
        if not deadlines:
            return None
        # Rounded up: rounded down, the last fraction of a millisecond before a
        # timer was spent calling poll(0) in a loop (470 calls/s, measured).
        return int(max(0, -((now - min(deadlines)) // NS_PER_MS)))

    def _handle(self, events: list[KernelEvent]) -> None:
        for event in events:
            if isinstance(event, Trigger):
                self._triggered(event)
                continue
            # The block ended: nothing is due for it any more, no stack to gather.
            self._disarm(hangs.Ongoing(event.pid, event.tid, event.start_ns))
            if self._stacks is not None:
                self._stacks.end(event.pid, event.tid)
            kind = self._kind_of(event.pid, event.tid)
            if kind is not None and not reported(kind):
                self._totals.ignore(event, kind)
                continue
            self._enricher.identity(event.pid)
            self._enricher.app_tid(event.pid, event.tid)  # while the thread still lives
            # Samples taken during the block reach us a little after it ends.
            self._pending.append((event, kind, event.end_ns + self._settle_ns))

    def _export_ready(self, final: bool = False, deadline_ns: int | None = None) -> None:
        """Export pending blocks, in order, once their samples are in (or late).

        ``final``: wait for the last block's samples, but not past ``deadline_ns``.
        """
        if final:
            self._wait_for_last(deadline_ns)
        now = time.monotonic_ns()
        while self._pending:
            event, known, deadline = self._pending[0]
            covered = (
                self._stacks is None
                or now >= deadline
                or final
                or self._stacks.covered_until(event.pid, event.tid) >= event.end_ns
            )
            if not covered:
                break
            kind = known if known is not None else self._kind_of(event.pid, event.tid)
            if kind is None:
                if not final and now < deadline + KIND_WAIT_NS:
                    break  # its process's dump is under way
                kind = ThreadKind.UNKNOWN
            self._pending.popleft()
            if not reported(kind):
                self._totals.ignore(event, kind)
                continue
            if event.end_reason == EndReason.THREAD_EXITED and not self._hang_at_exit(
                event, self._samples(event)
            ):
                continue
            kind = self._seen_iterating(event, kind)
            for block in self._enricher.blocks(event, kind, self._window(event)):
                self._deliver(block)

    def _wait_for_last(self, deadline_ns: int | None) -> None:
        """Wait until the pending blocks' samples are in, but never past ``deadline_ns``.

        At most until the last block's samples are due, then they go without.
        """
        if not self._pending:
            return
        until_ns = self._pending[-1][2]
        if deadline_ns is not None:
            until_ns = min(until_ns, deadline_ns)
        while time.monotonic_ns() < until_ns and not self._samples_in():
            time.sleep(PENDING_POLL_MS / 1000)

    def _samples_in(self) -> bool:
        """Whether every pending block's samples have arrived."""
        stacks = self._stacks
        return stacks is None or all(
            stacks.covered_until(event.pid, event.tid) >= event.end_ns
            for event, _, _ in self._pending
        )

    def _deliver(self, block: Block) -> None:
        if self._stacks is not None and not block.stack:
            self._losses.add(Loss.STACK_UNKNOWN)
        self._losses.add(Loss.CALL_SITES_UNSURE, block.call_sites_left_out)
        self._totals.add(block)
        self._emit(self._marked(block))

    def _marked(self, block: Block) -> Block:
        """The block, said to have started before watching if it was adopted."""
        if hangs.Ongoing(block.pid, block.tid, block.iteration_start_ns) in self._adopted:
            return replace(block, started_before_watch=True)
        return block

    def _samples(self, event: BlockEvent) -> list[StackSample]:
        return self._window(event)(event.start_ns, event.end_ns)

    def _window(self, event: BlockEvent) -> Callable[[int, int], list[StackSample]]:
        """The samples of the block's thread between two instants (none without stacks)."""
        stacks = self._stacks
        if stacks is None:
            return lambda _start, _end: []
        return lambda start, end: stacks.window(event.pid, event.tid, start, end)

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

    def _triggered(self, trigger: Trigger) -> None:
        """The kernel says to look at a thread: now, or (off CPU) at the trigger age."""
        if trigger.reason == TriggerReason.SEGMENT:
            for follower in self._followers:
                follower.follow(trigger)  # another request's callback in a followed block
            return
        if trigger.reason == TriggerReason.NEW_THREAD:
            for follower in self._followers:  # first: they work in threads of their own
                follower.follow(trigger)
            if self._stacks is not None:
                self._stacks.prepare(trigger.pid)  # a loop runs: its interpreter is up
            # Who a process is, read as soon as its loop runs: a short-lived app may be
            # gone (its /proc/PID/environ empty) by the time its first block is exported;
            # so may the thread whose id in the app's PID namespace is read now.
            self._enricher.identity(trigger.pid)
            self._enricher.app_tid(trigger.pid, trigger.tid)
            return
        key = hangs.Ongoing(trigger.pid, trigger.tid, trigger.start_ns)
        armed = self._armed.get(key.tid)
        if armed is not None and armed[0] == key:
            return  # told twice
        if armed is None and len(self._armed) >= hangs.MAX_TRACKED:
            return
        if armed is not None:
            self._disarm(armed[0])  # a newer block of the thread: that one has ended
        if trigger.reason == TriggerReason.OFF_CPU:
            # Asleep before the age: most such sleeps end soon, and the followers
            # hear of the block only if it still goes on at the age.
            self._looks.add(key)
            self._arm(key, trigger.look_ns)
            return
        self._confirmed(key, trigger)

    def _confirmed(self, key: hangs.Ongoing, trigger: Trigger) -> None:
        """A block has lasted the trigger age: gather its evidence; time its hang report."""
        if self._stacks is not None:
            self._stacks.begin(key.pid, key.tid, key.start_ns)
        for follower in self._followers:
            follower.follow(trigger)
        self._arm(key, self._hangs.due_ns(key))

    def _arm(self, key: hangs.Ongoing, due_ns: int) -> None:
        self._armed[key.tid] = (key, due_ns)
        heapq.heappush(self._timers, (due_ns, next(self._order), key))

    def _disarm(self, key: hangs.Ongoing) -> None:
        """``key`` ended: nothing is due for it any more."""
        armed = self._armed.get(key.tid)
        if armed is not None and armed[0] == key:
            del self._armed[key.tid]
        self._looks.discard(key)
        self._hangs.forget(key)
        self._hang_due.pop(key, None)

    def _live(self, timer: tuple[int, int, hangs.Ongoing]) -> bool:
        """Whether a heap entry is its block's live timer (not cancelled, nor moved)."""
        due, _, key = timer
        return self._armed.get(key.tid) == (key, due)

    def _run_timers(self, now: int) -> None:
        """Look at the blocks whose timer is due: the first look, or a hang report."""
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)
            if not self._live(timer):
                continue
            key = timer[2]
            del self._armed[key.tid]
            if key not in self._looks:
                self._report_hang(key, now)
                continue
            self._looks.discard(key)
            if self._source.out_since(key.tid) == key.start_ns:
                self._confirmed(
                    key, Trigger(key.pid, key.tid, key.start_ns, now, TriggerReason.DUE)
                )

    def _report_hang(self, key: hangs.Ongoing, now: int) -> None:
        item = self._source.ongoing(key.tid)
        if item is None or (item.pid, item.start_ns) != (key.pid, key.start_ns):
            self._hangs.forget(key)  # it ended; its block event is on its way
            return
        if self._awaits_evidence(key, now):
            self._arm(key, now + hangs.RETRY_NS)
            return
        block = self._ongoing_block(item, now, EndReason.RETURNED)
        if block is None or self._awaits_stack(key, block, now):
            self._arm(key, now + hangs.RETRY_NS)
            return
        self._hang_due.pop(key, None)
        self._hangs.reported(key, now)
        self._emit(self._marked(block))
        self._arm(key, max(self._hangs.due_ns(key), now + hangs.RETRY_NS))

    def _awaits_evidence(self, key: hangs.Ongoing, now: int) -> bool:
        """A first hang report waits for the stacks taken up to when it was due.

        Whether the thread is still in its loop is told by its newest stack
        (``_left_loop``); one older than the report may show the loop's last
        iteration in a thread that has left it since and works on without a
        loop (seen on a busy machine, with samples arriving late). At most
        ``HANG_EVIDENCE_WAIT_NS``: a sampler that says nothing does not keep a
        hang from being told.
        """
        if self._stacks is None or self._hangs.was_reported(key):
            return False
        due = self._hang_due.setdefault(key, now)
        return (
            self._stacks.covered_until(key.pid, key.tid) < due and now - due < HANG_EVIDENCE_WAIT_NS
        )

    def _awaits_stack(self, key: hangs.Ongoing, block: Block, now: int) -> bool:
        """A loop blocked before watching is first reported with its stack, if one comes soon."""
        return (
            self._stacks is not None
            and not block.stack
            and key in self._adopted
            and not self._hangs.was_reported(key)
            and now - key.start_ns < ADOPTED_STACK_WAIT_NS
        )

    def _ongoing_block(self, item: InProgress, now: int, reason: EndReason) -> Block | None:
        event = BlockEvent(
            pid=item.pid,
            tid=item.tid,
            comm=thread_name(item.pid, item.tid) or "",
            start_ns=item.start_ns,
            end_ns=now,
            activity=item.activity,
            end_reason=reason,
            segments=item.segments,
            host_pid=item.host_pid,
            host_tid=item.host_tid,
        )
        kind = self._kind_of(event.pid, event.tid)
        if kind is None:
            if reason == EndReason.RETURNED:
                return None  # a hang report waits for the dump under way (retried soon)
            kind = ThreadKind.UNKNOWN  # the sidecar stops: report it rather than lose it
        samples = self._samples(event)
        if not reported(kind) or self._left_loop(kind, samples):
            return None
        return self._enricher.block(event, kind, samples, in_progress=reason == EndReason.RETURNED)

    @staticmethod
    def _left_loop(kind: ThreadKind, samples: list[StackSample]) -> bool:
        """A loop thread whose newest stack shows no event loop: the loop has ended."""
        return kind == ThreadKind.LOOP and bool(samples) and classify(samples[-1].frames) != kind

    def _seen_iterating(self, event: BlockEvent, kind: ThreadKind) -> ThreadKind:
        """An unknown thread whose samples in the block show its loop iterating is a loop's.

        Its dump may come too late to tell (on a busy machine, after a short-lived
        app's thread or process is gone); the stacks taken while it blocked say
        it for certain.
        """
        if kind != ThreadKind.UNKNOWN:
            return kind
        if any(classify(sample.frames) == ThreadKind.LOOP for sample in self._samples(event)):
            return ThreadKind.LOOP
        return kind

    def _kind_of(self, pid: int, tid: int) -> ThreadKind | None:
        if self._kinds is None:
            return ThreadKind.UNKNOWN
        return self._kinds.kind(pid, tid)
