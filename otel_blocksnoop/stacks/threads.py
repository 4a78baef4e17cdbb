"""Which epoll-calling threads are event loops.

An asyncio-compatible loop always runs Python, so a thread with no Python
thread state (absent from Austin's dump) is a native library's poller: gRPC
core, libzmq's I/O threads, a C extension's worker. Such threads and Python
threads parked in a known non-asyncio poller are not reported. Every other
thread is: a Python thread inside asyncio or uvloop is a loop for certain,
and one Austin cannot read (or any, if Austin is unavailable) is reported
rather than risk missing a real block.

Austin names threads as the app sees them (its own PID namespace), the
sidecar by its own ids: the two are matched through ``NamespaceIds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import Frame, ThreadKind
from otel_blocksnoop.process.pidns import NamespaceIds
from otel_blocksnoop.stacks.austin import Austin, AustinError
from otel_blocksnoop.stacks.memory import StackSources, where

log = logging.getLogger(__name__)

RECHECK_S = 10.0
"""A thread not seen as a loop is looked at again at most this often."""

LOOP_PATH_PARTS = ("/asyncio/", "/uvloop/")
"""Source paths of event-loop machinery: a frame from here means a loop thread."""

MAX_REMEMBERED = 4096
"""Threads whose kind is cached; the oldest are forgotten (and asked again) past this."""

MAX_PROCESSES = 1024
"""Processes with a dump waiting, or a failure remembered; the oldest are forgotten past this."""

WHERE_BACKOFF_S = 30.0
"""A process whose dump failed (Austin cannot read it: another mount namespace, a Python
it does not know) is not dumped again for this long; its threads are reported meanwhile."""

KNOWN_POLLERS = (
    ("/grpc/_server.py", "_serve"),
    ("/grpc/_channel.py", "channel_spin"),
    ("/grpc/_channel.py", "_run_channel_spin_thread"),
    # The OpenTelemetry SDK's export threads: with a gRPC exporter, gRPC polls
    # (epoll) in the calling thread, between waits of seconds.
    ("/opentelemetry/sdk/_shared_internal/__init__.py", "worker"),
    ("/opentelemetry/sdk/trace/export/__init__.py", "worker"),
    ("/opentelemetry/sdk/_logs/_internal/export/__init__.py", "worker"),
    ("/opentelemetry/sdk/metrics/_internal/export/__init__.py", "_ticker"),
)
"""Python functions that drive a non-asyncio epoll loop: (path suffix, function)."""

RUNNERS = "/asyncio/runners.py"
TEARDOWN_FUNCTIONS = frozenset({"close", "__exit__"})
"""``asyncio.Runner``'s ways out: past them the loop runs no iteration of its own."""
ITERATING_FUNCTIONS = frozenset({"run_until_complete", "run_forever", "_run_once"})
"""Loop machinery that runs iterations (``Runner.close`` runs some to cancel tasks)."""


def _last_name(frame: Frame) -> str:
    return frame.function.rsplit(".", 1)[-1]


def closing_loop(stack: Sequence[Frame]) -> bool:
    """Whether ``stack`` is a loop being closed after its last iteration, not one running.

    ``asyncio.run`` ends in ``Runner.close`` (3.11+) or, before 3.11, in its
    own ``finally`` calling ``loop.close()``; uvloop's ``run`` goes through
    the same runner. Its frames are loop machinery, but no iteration runs: the
    thread is out of epoll for good, and a busy machine can stretch that last
    stretch past the threshold. Cancelling the remaining tasks and shutting
    down the default executor inside ``close`` run iterations: those are not
    closing.
    """
    for index in range(len(stack) - 1, -1, -1):
        frame = stack[index]
        if not frame.file.endswith(RUNNERS):
            continue
        deeper = stack[index + 1 :]
        if any(_last_name(f) in ITERATING_FUNCTIONS for f in deeper):
            return False
        name = _last_name(frame)
        return name in TEARDOWN_FUNCTIONS or (
            name == "run" and bool(deeper) and _last_name(deeper[0]) == "close"
        )
    return False


def classify(stack: Sequence[Frame] | None) -> ThreadKind:
    """Kind of a thread from its Python stack (None: not a Python thread)."""
    if stack is None:
        return ThreadKind.NATIVE
    if any(part in frame.file for frame in stack for part in LOOP_PATH_PARTS):
        return ThreadKind.UNKNOWN if closing_loop(stack) else ThreadKind.LOOP
    for frame in stack:
        for suffix, function in KNOWN_POLLERS:
            if frame.file.endswith(suffix) and frame.function.endswith(function):
                return ThreadKind.POLLER
    return ThreadKind.UNKNOWN


def thread_kind(stack: Sequence[Frame] | None) -> ThreadKind:
    """Kind of a thread from a dump of it: a loop being closed is still a loop's thread.

    Unlike a sample during a block (``classify``: is an iteration running?), a
    dump says what the thread is. Caught while its loop closes (a dump taken
    late on a busy machine), it would otherwise be ``UNKNOWN``, which is
    reported whatever its stacks show, so its teardown would be a hang.
    """
    if stack is not None and closing_loop(stack):
        return ThreadKind.LOOP
    return classify(stack)


def reported(kind: ThreadKind) -> bool:
    return kind in (ThreadKind.LOOP, ThreadKind.UNKNOWN)


class ThreadClassifier:
    """Caches each thread's kind; dumps a process's threads with Austin, off the caller's path.

    ``kind`` never waits: a thread not yet known starts a dump of its process
    in the classifier's own thread and reads as None until the dump is in. A
    process has at most one dump running and one waiting (the threads asked
    about meanwhile), so a slow or failing Austin builds no backlog; a process
    whose dump failed is not dumped again for WHERE_BACKOFF_S (its threads
    read as unknown: reported), and a stop never waits for a dump.
    """

    def __init__(
        self,
        austin: Austin | None,
        ids: NamespaceIds | None = None,
        sources: StackSources | None = None,
    ) -> None:
        self._austin = austin
        self._sources = sources
        self._ids = ids if ids is not None else NamespaceIds()
        self._kinds: BoundedDict[tuple[int, int], tuple[ThreadKind, float]] = BoundedDict(
            MAX_REMEMBERED
        )
        self._warned: set[int] = set()
        self._cond = threading.Condition()
        # pid -> threads asked about, for the dump that runs next; at most MAX_PROCESSES.
        self._waiting: BoundedDict[int, set[int]] = BoundedDict(MAX_PROCESSES)
        self._failed_until: BoundedDict[int, float] = BoundedDict(MAX_PROCESSES)
        self._busy = False  # a dump is running
        self._closed = False
        self._thread: threading.Thread | None = None
        self.dumps = 0  # dumps started, for tests and the debug log

    def kind(self, pid: int, tid: int) -> ThreadKind | None:
        """What thread ``tid`` of ``pid`` is; None while the dump that will tell is under way."""
        now = time.monotonic()
        with self._cond:
            cached = self._kinds.get((pid, tid))
            if cached and (cached[0] == ThreadKind.LOOP or now - cached[1] < RECHECK_S):
                return cached[0]
            if self._austin is None or self._closed:
                return ThreadKind.UNKNOWN
            if self._failed_until.get(pid, 0.0) > now:
                return cached[0] if cached else ThreadKind.UNKNOWN
            self._want(pid, tid)
        return None  # a thread seen before may have started a loop since: wait for the dump

    def forget(self, pid: int) -> None:
        """``pid`` exited: its threads' kinds go (a process reusing its number is dumped anew)."""
        with self._cond:
            for key in [key for key in self._kinds if key[0] == pid]:
                del self._kinds[key]
            self._waiting.pop(pid, None)
            self._failed_until.pop(pid, None)
            self._warned.discard(pid)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no dump runs or waits (False if one still does after ``timeout_s``)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy and not self._waiting, timeout_s)

    def close(self) -> None:
        """Start no more dumps; one under way ends by its own timeout, unwaited for."""
        with self._cond:
            self._closed = True
            self._waiting.clear()
            self._cond.notify_all()

    def _want(self, pid: int, tid: int) -> None:
        """Ask for a dump of ``pid`` that tells ``tid``'s kind; with the lock held."""
        asked = self._waiting.get(pid)
        if asked is None:
            asked = self._waiting[pid] = set()
        asked.add(tid)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="austin-where", daemon=True)
            self._thread.start()
        self._cond.notify()

    def _work(self) -> None:
        austin = self._austin
        assert austin is not None  # noqa: S101 - started only with an Austin
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                pid = next(iter(self._waiting))
                asked = self._waiting.pop(pid)
                if self._failed_until.get(pid, 0.0) > time.monotonic():
                    self._remember(pid, asked, ThreadKind.UNKNOWN)  # asked while one failed
                    continue
                self.dumps += 1
                self._busy = True
            try:
                reader = self._sources.memory(pid) if self._sources is not None else None
                stacks = where(reader, pid, self._ids) if reader else austin.where(pid)
                self._dumped(pid, asked, stacks)
            except AustinError as exc:
                self._failed(pid, asked, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _dumped(self, pid: int, asked: set[int], stacks: dict[int, tuple[Frame, ...]]) -> None:
        now = time.monotonic()
        # Austin's tids are the app's; ours (the kernel's) differ across a PID namespace.
        ours = self._ids.sidecar_tids(pid) if self._ids.nested(pid) else None
        kinds = {}
        for seen_tid, stack in stacks.items():
            mine = ours.get(seen_tid) if ours is not None else seen_tid
            if mine is not None:
                kinds[mine] = thread_kind(stack)
        for tid in asked - kinds.keys():
            # Not in the dump: a native thread, unless it is gone before it could be looked at.
            gone = not (Path("/proc") / str(pid) / "task" / str(tid)).exists()
            kinds[tid] = ThreadKind.UNKNOWN if gone else ThreadKind.NATIVE
        with self._cond:
            self._failed_until.pop(pid, None)
            for tid, kind in kinds.items():
                cached = self._kinds.get((pid, tid))
                # a loop's thread stays one, as ``kind`` answers; an update is the newest
                kept = ThreadKind.LOOP if cached and cached[0] == ThreadKind.LOOP else kind
                self._kinds[(pid, tid)] = (kept, now)

    def _failed(self, pid: int, asked: set[int], exc: AustinError) -> None:
        now = time.monotonic()
        with self._cond:
            self._failed_until[pid] = now + WHERE_BACKOFF_S
            self._remember(pid, asked, ThreadKind.UNKNOWN)
            first = pid not in self._warned
            self._warned.add(pid)
        if first:
            log.warning(
                "%s; reporting every thread of %d (tried again every %g s)",
                exc,
                pid,
                WHERE_BACKOFF_S,
            )
        else:
            log.debug("%s", exc)

    def _remember(self, pid: int, tids: set[int], kind: ThreadKind) -> None:
        """With the lock held."""
        now = time.monotonic()
        for tid in tids:
            self._kinds[(pid, tid)] = (kind, now)
