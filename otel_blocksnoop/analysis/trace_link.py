"""Which request a block happened in: the app's active span, read during the block.

The kernel reports a block when it ends, and by then the loop has moved on
to other tasks and other contexts, so the active span must be read while the
block is going on. A poller thread looks at the kernel's table of threads out
of epoll every ``interval`` (half the threshold, 2 to 50 ms); for each one
out for at least half the threshold it reads the thread's active span, and
the asyncio task it runs, from the app's memory (``ContextReader``). Any block
of at least the threshold is thus read at least once: it is out of epoll past
half the threshold for at least one interval. One block may hold several
callbacks, so the reads vote: the span that was active in at least half of
them, and more often than any other, is the block's parent. A tie or a
scatter gives no parent: a block with no link is better than one in the
wrong trace. The running task is elected the same way, on its own.

Reads cost about 0.2-0.3 ms of the sidecar's CPU each (BENCHMARKS.md,
"Trace links") and happen only while a thread is out of epoll that long.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from typing import Protocol, TypeVar

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import NS_PER_MS, Loss, SpanRef, TaskRef, ThreadContext, ThreadSnapshot
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.process.context import ContextReader

log = logging.getLogger(__name__)

MIN_INTERVAL_NS = 2 * NS_PER_MS
MAX_INTERVAL_NS = 50 * NS_PER_MS
MAX_BLOCKS = 4096
"""Blocks whose votes are kept until their event arrives; the oldest go first."""
MAX_READERS = 256
SWITCH_INTERVAL_S = 0.001
"""The sidecar's GIL switch interval while linking: how late a wake-up may get the GIL."""

BlockKey = tuple[int, int, int]  # pid, tid, start_ns
T = TypeVar("T", bound=Hashable)


class ThreadTable(Protocol):
    """The detector, as far as the poller needs it."""

    def snapshot(self, min_ns: int, activity: bool = True) -> ThreadSnapshot:
        """Threads out of epoll for at least ``min_ns`` (``activity``: with their books)."""

    def out_since(self, tid: int) -> int:
        """When ``tid`` last left epoll; 0 while it is inside."""


class SpanReader(Protocol):
    unsupported: str | None

    def thread_context(self, tid: int) -> ThreadContext:
        """The span active on ``tid`` now and the task it runs, each or None."""


class _Votes:
    """What the reads during one block found."""

    __slots__ = ("spans", "tasks")

    def __init__(self) -> None:
        self.spans: Counter[SpanRef | None] = Counter()
        self.tasks: Counter[TaskRef | None] = Counter()

    def result(self) -> ThreadContext:
        return ThreadContext(span=elect(self.spans), task=elect(self.tasks))


def interval_for(threshold_ns: int) -> int:
    return max(MIN_INTERVAL_NS, min(MAX_INTERVAL_NS, threshold_ns // 2))


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
        self._min_ns = threshold_ns // 2
        self._reader_factory = reader_factory
        self._losses = losses if losses is not None else Losses()
        self._readers: BoundedDict[int, SpanReader] = BoundedDict(MAX_READERS)
        self._votes: BoundedDict[BlockKey, _Votes] = BoundedDict(MAX_BLOCKS)
        self._to_prepare: deque[int] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trace-link", daemon=True)

    def start(self) -> None:
        # A read must land inside the block: waiting 5 ms (the default switch
        # interval) for the GIL after each wake-up is half a 10 ms block.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def prepare(self, pid: int) -> None:
        """Have the reader of a running process built now, not when its loop first blocks.

        An attached app idling in epoll is first seen in the kernel's table when
        it leaves epoll, at the start of its first block; building the reader
        then (~20 ms) would leave that block unread.
        """
        self._to_prepare.append(pid)

    @property
    def late_reads(self) -> int:
        """Reads dropped because the block had ended by the time they were done."""
        return self._losses.total(Loss.CONTEXT_LATE)

    def context(self, pid: int, tid: int, start_ns: int, final: bool = True) -> ThreadContext:
        """The block's parent span and task by the reads so far; ``final`` forgets the block."""
        key = (pid, tid, start_ns)
        with self._lock:
            votes = self._votes.pop(key, None) if final else self._votes.get(key)
        if votes is None:
            return ThreadContext(span=None, task=None)
        found = votes.result()
        if final and found.span is None and any(span is not None for span in votes.spans):
            self._losses.add(Loss.LINK_UNDECIDED)
        return found

    def _run(self) -> None:
        while not self._stop.wait(self.interval_ns / 1e9):
            try:
                self.poll()
            except Exception:
                self._losses.add(Loss.CONTEXT_ERRORS)
                log.exception("failed to read the app's active spans")

    def poll(self) -> None:
        """One look at the threads out of epoll, reading the span of each long enough out."""
        while self._to_prepare:
            self._reader(self._to_prepare.popleft())
        snapshot = self._table.snapshot(self._min_ns, activity=False)
        # A process's reader is built (~20 ms: it maps the interpreter's ELF file) as soon
        # as one of its threads has called epoll (a launched app, whose interpreter is up
        # by then), or when it is prepared (an attached one), so before its first block.
        for pid in {times.pid for times in snapshot.times} - self._readers.keys():
            self._reader(pid)
        for item in snapshot.ongoing:
            reader = self._reader(item.pid)
            if reader is None:
                continue
            found = reader.thread_context(item.tid)
            # Out of epoll since the same instant before and after the read: the read
            # was inside this block. Otherwise the loop may have gone on to other
            # tasks meanwhile (the sidecar was slow to read), and what it read is theirs.
            if self._table.out_since(item.tid) != item.start_ns:
                self._losses.add(Loss.CONTEXT_LATE)
                continue
            key = (item.pid, item.tid, item.start_ns)
            with self._lock:
                votes = self._votes.get(key)
                if votes is None:
                    votes = self._votes[key] = _Votes()
                votes.spans[found.span] += 1
                votes.tasks[found.task] += 1

    def _reader(self, pid: int) -> SpanReader | None:
        reader = self._readers.get(pid)
        if reader is None:
            started = time.monotonic()
            reader = self._readers[pid] = self._reader_factory(pid)
            log.debug(
                "context reader for %d ready in %.1f ms", pid, (time.monotonic() - started) * 1e3
            )
        return None if reader.unsupported else reader
