"""Which request a block happened in: the app's active span, read during the block.

The kernel reports a block when it ends, and by then the loop has moved on
to other tasks and other contexts, so the active span must be read while the
block is going on. The kernel says when: a trigger (``Trigger``) once a loop
thread has been out of epoll for half the threshold (``trigger_ns``), or as
it leaves the CPU before that, when the first read waits until that age. From
then until the block ends (the thread's ``out_since`` changes), a thread of
the linker's own reads the thread's active span, and the asyncio task it
runs, from the app's memory (``ContextReader``) every ``interval`` (half the
threshold, 2 to 50 ms); it sleeps while no block is followed. Any block of at
least the threshold is thus read at least once. One block may hold several
callbacks, so the reads vote: the span that was active in at least half of
them, and more often than any other, is the block's parent. A tie or a
scatter gives no parent: a block with no link is better than one in the
wrong trace. The running task is elected the same way, on its own.

An iteration that ran several requests' callbacks is cut by the kernel into
segments, one per context it ran in (``ContextSegment``). For that, the
linker tells the kernel where each loop thread's context pointer is, as soon
as the thread first leaves epoll (``TriggerReason.NEW_THREAD``); and when the
thread of a followed block switches context (``TriggerReason.SEGMENT``), it
reads at once, while the new context still runs. A segment's owner is what
the reads found that saw its very context pointer, timed inside the stretch
where no other context was seen (``owners``): a read that landed elsewhere,
or late, is not used, and a segment no read landed in has no parent.

Reads cost about 0.2-0.3 ms of the sidecar's CPU each (BENCHMARKS.md,
"Trace links") and happen only while a thread is out of epoll that long.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

from otel_blocksnoop.bounded import MAX_WATCHED_PROCESSES, BoundedDict
from otel_blocksnoop.events import (
    NS_PER_MS,
    ContextSegment,
    Loss,
    ReadyWork,
    SpanRef,
    TaskRef,
    ThreadContext,
    Trigger,
    TriggerReason,
)
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.process.context import ContextReader
from otel_blocksnoop.process.target import ExecIdentity, exec_identity

log = logging.getLogger(__name__)

MIN_INTERVAL_NS = 2 * NS_PER_MS
MAX_INTERVAL_NS = 50 * NS_PER_MS
MAX_BLOCKS = 4096
"""Blocks whose votes are kept until their event arrives; the oldest go first."""
MAX_READERS = MAX_WATCHED_PROCESSES
MAX_FOLLOWED = 4096
"""Blocks read at once; a trigger past this many is dropped (counted as late)."""
SWITCH_INTERVAL_S = 0.001
"""The sidecar's GIL switch interval while linking: how late a wake-up may get the GIL."""
MAX_TIMED_READS = 256
"""Reads kept per block for its segments (a hang's oldest go first)."""
MAX_READY_READS = 64
"""Reads of the loop's ready queue kept per block (the first, and one per segment)."""

EXPECT_EVERY_NS = 20 * NS_PER_MS
EXPECT_FOR_NS = 5_000 * NS_PER_MS
"""A launched app's interpreter is looked for this often, for at most this long after its
exec (``expect``): a CPython makes its main thread state within milliseconds of it."""

BlockKey = tuple[int, int, int]  # pid, tid, start_ns
T = TypeVar("T", bound=Hashable)


class ThreadTable(Protocol):
    """The detector, as far as the linker needs it."""

    def out_since(self, tid: int) -> int:
        """When ``tid`` last left epoll; 0 while it is inside."""

    def watch_context(self, tid: int, address: int) -> bool:
        """Have the kernel read ``tid``'s context pointer at ``address``; False: not told."""


class SpanReader(Protocol):
    unsupported: str | None

    @property
    def awaited_by_unsure(self) -> int:
        """Reads whose task's awaiters could not be read for sure, so far."""

    def thread_context(self, tid: int) -> ThreadContext:
        """The span active on ``tid`` now and the task it runs, each or None."""

    def ready_work(self, tid: int, again: bool = False) -> ReadyWork | None:
        """The ready callbacks of ``tid``'s loop, when known; ``again``: same block as last."""

    def context_address(self, tid: int) -> int | None:
        """Where ``tid``'s current context pointer is, if its thread state is found."""


class _Votes:
    """What the reads during one block found: counted, and each with its time."""

    __slots__ = ("reads", "ready", "spans", "tasks")

    def __init__(self) -> None:
        self.spans: Counter[SpanRef | None] = Counter()
        self.tasks: Counter[TaskRef | None] = Counter()
        self.reads: deque[tuple[int, int, ThreadContext]] = deque(maxlen=MAX_TIMED_READS)
        self.ready: deque[ThreadContext] = deque(maxlen=MAX_READY_READS)
        """The reads that read the loop's ready queue: kept apart, a hang's first one too."""

    def result(self) -> ThreadContext:
        return ThreadContext(
            span=elect_span(self.spans),
            task=elect(self.tasks),
            ready=delayed_by(self.ready, running=self.spans),
        )

    def inside(self, segment: ContextSegment) -> list[ThreadContext]:
        """What the reads of ``segment``'s own context found, those timed inside it."""
        return [
            found
            for began, ended, found in self.reads
            if found.context
            and found.context == segment.context
            and segment.after_ns < began
            and ended < segment.before_ns
        ]

    def owner(self, segment: ContextSegment) -> ThreadContext | None:
        """What the reads of ``segment``'s own context, timed inside it, found; None: no read."""
        reads = self.inside(segment)
        if not reads:
            return None
        spans = Counter(found.span for found in reads)
        tasks = Counter(found.task for found in reads)
        return ThreadContext(
            span=elect_span(spans),
            task=elect(tasks),
            context=segment.context or 0,
            ready=delayed_by(reads, running=spans),
        )


def delayed_by(
    reads: Iterable[ThreadContext], running: Iterable[SpanRef | None]
) -> ReadyWork | None:
    """The ready callbacks that waited while the ``running`` spans ran; None: never read.

    A callback of a request that itself ran in the block (a span of a trace
    that ran) is its own work, not delayed by it; the rest, each Handle
    once, in the order first seen. A Handle no read looked into is unread.
    """
    known = [found.ready for found in reads if found.ready is not None]
    if not known:
        return None
    traces = {span.trace_id for span in running if span is not None}
    handles: dict[int, SpanRef | None] = {}
    read: set[int] = set()
    for work in known:
        for handle, span in work.handles:
            read.add(handle)
            if span is None or span.trace_id not in traces:
                handles.setdefault(handle, span)
    unread = dict.fromkeys(h for work in known for h in work.unread if h not in read)
    return ReadyWork(
        queued=max(work.queued for work in known),
        handles=tuple(handles.items()),
        unread=tuple(unread),
    )


class _Followed:
    """A block being read: whose, since when, when its next read is due, and what it asks."""

    __slots__ = ("last_read_ns", "next_read_ns", "pid", "queue_read", "ready", "start_ns", "tid")

    def __init__(self, pid: int, tid: int, start_ns: int, next_read_ns: int) -> None:
        self.ready = True
        """Whether the next read also reads the loop's ready queue (the first, each segment's)."""
        self.queue_read = False
        """Whether it has been read in this block (what it found of the contexts is kept)."""
        self.last_read_ns = 0
        self.pid = pid
        self.tid = tid
        self.start_ns = start_ns
        self.next_read_ns = next_read_ns


def interval_for(threshold_ns: int) -> int:
    return max(MIN_INTERVAL_NS, min(MAX_INTERVAL_NS, threshold_ns // 2))


def trigger_ns_for(threshold_ns: int) -> int:
    """Age out of epoll at which the kernel is to tell the linker: half the threshold."""
    return threshold_ns // 2


def elect_span(votes: Counter[SpanRef | None]) -> SpanRef | None:
    """The parent the reads elect, if they all saw one trace.

    Reads that found spans of two traces saw two requests run in the block:
    whichever held it longer, the block then also holds the other's time, and
    a parent would put that in the wrong trace. Spans of one trace (a request
    and its child span) are elected as usual.
    """
    if len({span.trace_id for span in votes if span is not None}) > 1:
        return None
    return elect(votes)


def elect(votes: Counter[T | None]) -> T | None:
    """The one found in at least half of the reads and more often than any other."""
    total = sum(votes.values())
    spans = [(count, span) for span, count in votes.items() if span is not None]
    if not spans:
        return None
    spans.sort(key=lambda item: item[0], reverse=True)
    best_count, best = spans[0]
    if len(spans) > 1 and spans[1][0] == best_count:
        return None
    return best if best_count * 2 >= total else None


class _Expected:
    """A launched app whose interpreter is looked for before its loop starts."""

    __slots__ = ("holder", "next_ns", "since_ns")

    def __init__(self, holder: ExecIdentity | None, since_ns: int) -> None:
        self.holder = holder
        self.since_ns = since_ns
        self.next_ns = since_ns


class TraceLinker:
    """Reads active spans during blocks, in a thread of its own; hands out each block's parent."""

    def __init__(
        self,
        table: ThreadTable,
        threshold_ns: int,
        reader_factory: Callable[[int], SpanReader] = ContextReader,
        losses: Losses | None = None,
    ) -> None:
        self._table = table
        self.interval_ns = interval_for(threshold_ns)
        self.trigger_ns = trigger_ns_for(threshold_ns)
        self._reader_factory = reader_factory
        self._losses = losses if losses is not None else Losses()
        self._readers: BoundedDict[int, SpanReader] = BoundedDict(MAX_READERS)
        self._contexts: BoundedDict[int, int] = BoundedDict(MAX_FOLLOWED)  # tid: address told
        self._votes: BoundedDict[BlockKey, _Votes] = BoundedDict(MAX_BLOCKS)
        self._to_prepare: deque[int] = deque()
        self._to_expect: deque[tuple[int, ExecIdentity | None]] = deque()
        self._to_forget: deque[int] = deque()
        self._expected: dict[int, _Expected] = {}  # by pid: launched, interpreter not found yet
        self._early: dict[int, ExecIdentity] = {}  # by pid: what ran when its reader was made
        self._inbox: deque[Trigger] = deque()
        self._followed: dict[int, _Followed] = {}  # by tid: a thread is in one block at a time
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trace-link", daemon=True)

    def start(self) -> None:
        # A read must land inside the block: waiting 5 ms (the default switch
        # interval) for the GIL after each wake-up is half a 10 ms block.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=1.0)

    def prepare(self, pid: int) -> None:
        """Have the reader of a running process built now, not when its loop first blocks.

        An attached app idling in epoll is first seen by the kernel when it
        leaves epoll, at the start of its first block; building the reader
        then (~20 ms) would leave that block unread.
        """
        self._to_prepare.append(pid)
        self._wake.set()

    def expect(self, pid: int, holder: ExecIdentity | None) -> None:
        """A launched app: find its main thread's context pointer before its loop starts.

        Its first request may block a few milliseconds after its loop first
        leaves epoll, before a reader built then (10-30 ms, ten times that on
        a busy machine) could tell the kernel where to read: that block would
        have no segments and no reads. So the interpreter is looked for every
        ``EXPECT_EVERY_NS`` from the time the PID stops running ``holder``
        (what ran it until its exec) until its main thread state is found, for
        at most ``EXPECT_FOR_NS``: a reader that cannot read it yet is not
        kept, nor is one made before the exec. At the thread's first return
        from epoll, a reader made early is kept only if the process has not
        exec'd again since.
        """
        self._to_expect.append((pid, holder))
        self._wake.set()

    def forget(self, pid: int) -> None:
        """``pid`` exited and its blocks are out: its reader and what was read of it go.

        A process that reuses the number gets a reader of its own (a stale one
        would read another interpreter's memory at the old addresses).
        """
        self._to_forget.append(pid)
        self._wake.set()

    def follow(self, trigger: Trigger) -> None:
        """The kernel's trigger: read the thread's span until its block ends.

        A new loop thread (``NEW_THREAD``) has its process's reader built, so
        before its first block (a launched app's interpreter is up by then).
        """
        self._inbox.append(trigger)
        self._wake.set()

    @property
    def late_reads(self) -> int:
        """Reads dropped because the block had ended by the time they were done."""
        return self._losses.total(Loss.CONTEXT_LATE)

    def context(self, pid: int, tid: int, start_ns: int, final: bool = True) -> ThreadContext:
        """The block's parent span and task by the reads so far; ``final`` forgets the block."""
        key = (pid, tid, start_ns)
        # Under the lock: a block still going on is being read (and voted) meanwhile.
        with self._lock:
            votes = self._votes.pop(key, None) if final else self._votes.get(key)
            if votes is None:
                return ThreadContext(span=None, task=None)
            found = votes.result()
            undecided = found.span is None and any(span is not None for span in votes.spans)
        if final and undecided:
            self._losses.add(Loss.LINK_UNDECIDED)
        return found

    def owners(
        self,
        pid: int,
        tid: int,
        start_ns: int,
        segments: Sequence[ContextSegment],
        final: bool = True,
    ) -> list[ThreadContext]:
        """Each segment's span and task, by the reads that landed in it; ``final`` forgets it.

        A segment no read landed in gets neither (counted: ``Loss.LINK_UNREAD``).
        """
        key = (pid, tid, start_ns)
        found = []
        with self._lock:  # a block still going on is being read meanwhile
            votes = self._votes.pop(key, None) if final else self._votes.get(key)
            for segment in segments:
                owner = votes.owner(segment) if votes is not None else None
                if owner is None:
                    if final:
                        self._losses.add(Loss.LINK_UNREAD)
                    owner = ThreadContext(span=None, task=None)
                elif final and owner.span is None and self._saw_span(votes, segment):
                    self._losses.add(Loss.LINK_UNDECIDED)
                found.append(owner)
        return found

    @staticmethod
    def _saw_span(votes: _Votes | None, segment: ContextSegment) -> bool:
        """Some read inside ``segment`` found a span: its None is a disagreement."""
        return votes is not None and any(read.span for read in votes.inside(segment))

    def _run(self) -> None:
        """Sleep until a trigger, or the next read of a followed block, is due."""
        wait_s: float | None = None
        while not self._stop.is_set():
            self._wake.wait(wait_s)
            self._wake.clear()
            try:
                next_ns = self.poll()
            except Exception:
                self._losses.add(Loss.CONTEXT_ERRORS)
                log.exception("failed to read the app's active spans")
                next_ns = time.monotonic_ns() + self.interval_ns
            wait_s = None if next_ns is None else max(0, next_ns - time.monotonic_ns()) / 1e9

    def poll(self, now_ns: int | None = None) -> int | None:
        """Take the triggers that came, then read every followed block whose read is due.

        ``now_ns``: the time to go by (CLOCK_MONOTONIC; default: now). Returns
        when the next read is due, None while no block is followed.
        """
        now = time.monotonic_ns() if now_ns is None else now_ns
        while self._to_forget:
            self._drop(self._to_forget.popleft())
        while self._to_prepare:
            self._reader(self._to_prepare.popleft())
        while self._to_expect:
            pid, holder = self._to_expect.popleft()
            self._expected[pid] = _Expected(holder, now)
        for pid, expected in list(self._expected.items()):
            if expected.next_ns <= now:
                self._look_early(pid, expected, now)
        while self._inbox:
            self._take(self._inbox.popleft(), now)
        for block in [b for b in self._followed.values() if b.next_read_ns <= now]:
            if self._read(block):
                block.last_read_ns = now
                block.next_read_ns = now + self.interval_ns
            else:
                del self._followed[block.tid]
        due = [block.next_read_ns for block in self._followed.values()]
        due += [expected.next_ns for expected in self._expected.values()]
        return min(due, default=None)

    def _look_early(self, pid: int, expected: _Expected, now: int) -> None:
        """One look for a launched app's interpreter (``expect``)."""
        identity = exec_identity(pid)
        if identity is None or pid in self._readers:
            del self._expected[pid]  # gone, or found the usual way
            return
        expected.next_ns = now + EXPECT_EVERY_NS
        if identity == expected.holder:
            expected.since_ns = now
            return  # not exec'd yet: the sidecar's own Python runs there
        if now - expected.since_ns > EXPECT_FOR_NS:
            del self._expected[pid]  # not a CPython this reader knows (a shell, say)
            return
        reader = self._reader_factory(pid)
        address = reader.context_address(pid) if reader.unsupported is None else None
        if not address:
            return  # not a CPython this reader knows, or not initialized yet
        del self._expected[pid]
        self._readers[pid] = reader
        self._early[pid] = identity
        log.debug("context pointer of %d/%d before its loop: %#x", pid, pid, address)
        if self._table.watch_context(pid, address):
            self._contexts[pid] = address

    def _take(self, trigger: Trigger, now: int) -> None:
        # A process's reader is built (~20 ms: it maps the interpreter's ELF file) as soon
        # as one of its threads has called epoll, or when it is prepared (an attached
        # app), so before its first block.
        if trigger.reason == TriggerReason.NEW_THREAD:
            self._expected.pop(trigger.pid, None)
            self._check_early(trigger.pid)
        if trigger.reason == TriggerReason.NEW_THREAD or trigger.tid not in self._contexts:
            self._watch_context(trigger.pid, trigger.tid)
        if trigger.reason == TriggerReason.NEW_THREAD:
            return
        current = self._followed.get(trigger.tid)
        if current is not None and current.start_ns == trigger.start_ns:
            if trigger.reason == TriggerReason.SEGMENT:
                # Another request's callback: read it while it runs, but not more
                # often than every MIN_INTERVAL_NS (a storm of tiny callbacks).
                current.ready = True
                current.next_read_ns = min(
                    current.next_read_ns, max(now, current.last_read_ns + MIN_INTERVAL_NS)
                )
            return  # else told twice of one block (a tick and a switch at once)
        if trigger.reason == TriggerReason.SEGMENT:
            return  # a block no longer followed (or not yet: its first read is timed)
        if current is None and len(self._followed) >= MAX_FOLLOWED:
            self._losses.add(Loss.CONTEXT_LATE)
            return
        # Off CPU before the trigger age: the first read is due at that age.
        first = max(now, trigger.look_ns)
        self._followed[trigger.tid] = _Followed(trigger.pid, trigger.tid, trigger.start_ns, first)

    def _read(self, block: _Followed) -> bool:
        """Read one block's thread once; False when the block is over (or cannot be read)."""
        reader = self._reader(block.pid)
        if reader is None or self._table.out_since(block.tid) != block.start_ns:
            return False
        unsure = reader.awaited_by_unsure
        began = time.monotonic_ns()
        found = reader.thread_context(block.tid)
        ended = time.monotonic_ns()
        self._losses.add(Loss.CONTEXT_AWAITED_BY, reader.awaited_by_unsure - unsure)
        # Out of epoll since the same instant before and after the read: the read
        # was inside this block. Otherwise the loop may have gone on to other
        # tasks meanwhile (the sidecar was slow to read), and what it read is theirs.
        if self._table.out_since(block.tid) != block.start_ns:
            self._losses.add(Loss.CONTEXT_LATE)
            return False
        if block.ready:
            # Apart, after: a long queue must not make the span's read late.
            work = reader.ready_work(block.tid, again=block.queue_read)
            if work is not None and self._table.out_since(block.tid) == block.start_ns:
                found = replace(found, ready=work)
                block.ready = False  # it changes only as the blocked callback changes it
                block.queue_read = True
        key = (block.pid, block.tid, block.start_ns)
        with self._lock:
            votes = self._votes.get(key)
            if votes is None:
                votes = self._votes[key] = _Votes()
            votes.spans[found.span] += 1
            votes.tasks[found.task] += 1
            votes.reads.append((began, ended, found))
            if found.ready is not None:
                votes.ready.append(found)
        return True

    def _watch_context(self, pid: int, tid: int) -> None:
        """Tell the kernel where ``tid``'s context pointer is, once it is found.

        Looked for at the thread's first return from epoll, and again at its
        blocks until found (a launched interpreter may not have made the
        thread's state yet when its first epoll returns).
        """
        reader = self._reader(pid)
        address = reader.context_address(tid) if reader is not None else None
        if address and self._contexts.get(tid) == address:
            return  # told already: telling again would disarm the iteration going on
        log.debug("context pointer of %d/%d: %s", pid, tid, address and f"{address:#x}")
        if address and self._table.watch_context(tid, address):
            self._contexts[tid] = address

    def _drop(self, pid: int) -> None:
        self._readers.pop(pid, None)
        self._expected.pop(pid, None)
        self._early.pop(pid, None)
        for tid in [tid for tid, block in self._followed.items() if block.pid == pid]:
            del self._followed[tid]
        with self._lock:
            for key in [key for key in self._votes if key[0] == pid]:
                del self._votes[key]

    def _check_early(self, pid: int) -> None:
        """Drop a reader made before the loop started if the process exec'd again since."""
        identity = self._early.pop(pid, None)
        if identity is not None and exec_identity(pid) != identity:
            self._readers.pop(pid, None)
            self._contexts.pop(pid, None)

    def _reader(self, pid: int) -> SpanReader | None:
        reader = self._readers.get(pid)
        if reader is None:
            started = time.monotonic()
            reader = self._readers[pid] = self._reader_factory(pid)
            log.debug(
                "context reader for %d ready in %.1f ms", pid, (time.monotonic() - started) * 1e3
            )
            if reader.unsupported:
                log.warning("trace links disabled for process %d: %s", pid, reader.unsupported)
        return None if reader.unsupported else reader
