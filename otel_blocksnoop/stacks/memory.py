"""Stacks read from the target's memory: CPython 3.11 and later, and what Austin cannot read.

Our own ``FrameReader`` walks a thread's frames on CPython 3.11 and later
from outside, with the offsets the interpreter publishes
(``_Py_DebugOffsets``, 3.13+) or its generated layout checked against it
(3.11, 3.12), and times each stack by its own read. Austin 4.0.0 (the one
the project installs) reads CPython 3.9 to 3.14, only from inside the app's
mount namespace (which a hardened sidecar, without CAP_SYS_CHROOT, may not
enter), and places its samples by summed deltas. ``StackSources`` decides,
once per process, which of the two reads its stacks: ours where it can,
Austin for 3.9 and 3.10.

``MemorySampler`` has a ``Sampler``'s face for the pool: between ``begin`` and
``end`` of a block, a thread of its own reads each blocked thread's stack
every interval (one read costs ~0.3 ms: BENCHMARKS.md, "Our own frame
reader"); nothing runs while no loop is blocked. A read is synchronous, so
every sample taken before now has arrived (``covered_until``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import Frame, Loss, StackSample
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.process.context.interpreter import (
    UnsupportedInterpreterError,
    interpreter_image,
)
from otel_blocksnoop.process.frames import FrameReader
from otel_blocksnoop.process.frames.runtime import FIRST_VERSION
from otel_blocksnoop.process.pidns import NamespaceIds
from otel_blocksnoop.process.target import thread_ids
from otel_blocksnoop.stacks.austin import unreachable

log = logging.getLogger(__name__)

AUSTIN_NEWEST = (3, 14)
"""The newest CPython the installed Austin (4.0.0) reads: it cannot determine 3.15's version."""
AUSTIN_NO_FREE_THREADED = "Austin 4.0.0 reads no frame of a free-threaded build"
"""Seen on a 3.14.7t built here: Austin finds its version and threads, every stack empty."""
HISTORY = 4096
"""Samples kept per thread (~40 s of a hang at 10 ms)."""
MAX_THREADS = 256
MAX_PROCESSES = 1024
READ_TRIES = 3
"""Reads of one thread in a dump before it counts as unreadable (the target runs on)."""


STACK_READERS = ("auto", "austin", "memory")
"""``--stacks-from``: our reader where it can read the app else Austin, or one of them."""


def build(pid: int) -> tuple[tuple[int, int], bool]:
    """The (major, minor) of ``pid``'s CPython and whether it is free-threaded: one look."""
    image = interpreter_image(pid)
    return image.version, image.free_threaded


class StackSources:
    """Which reader reads each process's stacks: Austin, or our own from its memory.

    ``mode`` is one of ``STACK_READERS``. With ``memory`` or ``auto``, our
    reader reads every interpreter it knows (3.11 and later) and Austin the
    older ones. ``auto`` differs where our reader cannot read an interpreter
    it knows (a layout that fails its checks): Austin reads it instead, unless
    Austin cannot either (``_austin_cannot``: too new, free-threaded, or a
    mount namespace it may not enter). Our reader times each sample by its own
    read, where Austin's samples are placed by summed per-pass deltas, which a
    pass that reads no thread (one being created) leaves short: a block's
    later call sites then land early (BENCHMARKS.md, "Every call site").
    With ``austin``, a free-threaded build is said once to get no stacks.
    """

    def __init__(
        self,
        mode: str = "auto",
        factory: Callable[[int], FrameReader] = FrameReader,
        build_of: Callable[[int], tuple[tuple[int, int], bool]] = build,
        austin_refused: Callable[[int], str | None] = unreachable,
    ) -> None:
        if mode not in STACK_READERS:
            msg = f"stack reader {mode!r}: one of {', '.join(STACK_READERS)}"
            raise ValueError(msg)
        self.mode = mode
        self._factory = factory
        self._build_of = build_of
        self._austin_refused = austin_refused
        self._readers: BoundedDict[int, FrameReader | None] = BoundedDict(MAX_PROCESSES)
        self._lock = threading.Lock()

    def memory(self, pid: int) -> FrameReader | None:
        """Our reader of ``pid``'s stacks, when Austin cannot read them; None: Austin's job.

        Decided once per process, when its loop first runs (its interpreter is up).
        """
        with self._lock:
            if pid in self._readers:
                return self._readers[pid]
            reader = self._readers[pid] = self._choose(pid)
            return reader

    def forget(self, pid: int) -> None:
        with self._lock:
            self._readers.pop(pid, None)

    def _austin_cannot(self, pid: int, version: tuple[int, int], *, free_threaded: bool) -> str:
        """Why Austin cannot read ``pid``'s stacks; empty: it can."""
        if version > AUSTIN_NEWEST:
            return f"Austin reads CPython up to {AUSTIN_NEWEST[0]}.{AUSTIN_NEWEST[1]}"
        if free_threaded:
            return AUSTIN_NO_FREE_THREADED
        return self._austin_refused(pid) or ""

    def _choose(self, pid: int) -> FrameReader | None:
        try:
            version, free_threaded = self._build_of(pid)
        except (UnsupportedInterpreterError, OSError):
            return None  # Austin says why, as before
        if self.mode == "austin":
            if free_threaded:
                log.warning("no stacks for process %d: %s", pid, AUSTIN_NO_FREE_THREADED)
            return None
        why = ""
        if self.mode == "auto":
            why = self._austin_cannot(pid, version, free_threaded=free_threaded)
        if version < FIRST_VERSION:
            known = f"our reader reads CPython {FIRST_VERSION[0]}.{FIRST_VERSION[1]} and later"
            if why:
                log.warning("no stacks for process %d: %s, and %s", pid, why, known)
            else:
                major, minor = version
                log.info(
                    "reading Python stacks of %d with Austin: %s, not %d.%d",
                    pid,
                    known,
                    major,
                    minor,
                )
            return None
        try:
            reader = self._factory(pid)
        except (UnsupportedInterpreterError, OSError) as exc:
            if self.mode == "auto" and not why:
                log.info(
                    "reading Python stacks of %d with Austin: our reader cannot (%s)", pid, exc
                )
                return None
            also = f"{why}, and " if why else ""
            log.warning("no stacks for process %d: %s%s", pid, also, exc)
            return None
        log.info(
            "reading Python stacks of %d (CPython %d.%d) from its memory%s",
            pid,
            *version,
            f" ({why})" if why else "",
        )
        return reader


def where(reader: FrameReader, pid: int, ids: NamespaceIds) -> dict[int, tuple[Frame, ...]]:
    """Stacks of every Python thread of ``pid`` now, by the app's tids (as ``Austin.where``).

    A thread with no thread state (a native one) is left out; one whose stack
    could not be read whole in ``READ_TRIES`` reads is also left out when it
    has no thread state either, else it gets an empty stack (its kind stays
    unknown: reported, never taken for native).
    """
    found: dict[int, tuple[Frame, ...]] = {}
    for tid in thread_ids(pid):
        app_tid = ids.app_tid(pid, tid)
        for _ in range(READ_TRIES):
            stack = reader.stack(app_tid)
            if stack is not None:
                found[app_tid] = stack
                break
        else:
            if reader.has_thread(app_tid):
                found[app_tid] = ()
    return found


class MemorySampler:
    """Stacks of one process's blocked threads, read from its memory while they are blocked."""

    def __init__(
        self, reader: FrameReader, pid: int, interval_us: int, losses: Losses | None = None
    ) -> None:
        self.reader = reader
        self.pid = pid
        self.interval_us = interval_us
        self._losses = losses if losses is not None else Losses()
        self._histories: BoundedDict[int, deque[StackSample]] = BoundedDict(
            MAX_THREADS, on_drop=self._dropped
        )
        self._active: dict[int, int] = {}  # tid: block start
        self._read_until: BoundedDict[int, int] = BoundedDict(MAX_THREADS)  # tid: last read's end
        self._reading: int | None = None  # the tid whose read is under way
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.reads = 0
        self.torn = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"frames-{self.pid}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def begin(self, tid: int, start_ns: int) -> None:
        """Thread ``tid`` has been blocked since ``start_ns``: read its stack until its ``end``."""
        with self._cond:
            self._active[tid] = start_ns
            self._cond.notify_all()

    def end(self, tid: int) -> None:
        with self._cond:
            self._active.pop(tid, None)

    def window(self, tid: int, start_ns: int, end_ns: int) -> list[StackSample]:
        """Samples of ``tid`` read between ``start_ns`` and ``end_ns``."""
        with self._cond:
            history = self._histories.get(tid)
            if history is None:
                return []
            found = []
            for sample in reversed(history):
                if sample.time_ns < start_ns:
                    break
                if sample.time_ns <= end_ns:
                    found.append(sample)
            found.reverse()
            return found

    def covered_until(self, tid: int) -> int:
        """Every read of ``tid`` taken before this has arrived: now, unless one is under way."""
        with self._cond:
            if tid in self._active or tid == self._reading:
                return self._read_until.get(tid, 0)
        return time.monotonic_ns()

    def maintain(self, target_alive: bool) -> float | None:
        """Nothing to restart: the reads run in the sidecar."""
        _ = target_alive
        return None

    def _dropped(self, _tid: int, history: deque[StackSample]) -> None:
        self._losses.add(Loss.STACK_SAMPLES, len(history))

    def _run(self) -> None:
        interval_s = self.interval_us / 1e6
        while True:
            with self._cond:
                while not self._active and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                tids = list(self._active)
            for tid in tids:
                self._read(tid)
            with self._cond:
                if not self._stopping:
                    self._cond.wait(interval_s)

    def _read(self, tid: int) -> None:
        with self._cond:
            self._reading = tid
        began = time.monotonic_ns()
        try:
            stack = self.reader.stack(tid)
        except OSError:
            stack = None  # the process is gone; its block ends with it
        ended = time.monotonic_ns()
        with self._cond:
            self._reading = None
            self.reads += 1
            self._read_until[tid] = ended
            if stack is None:
                self.torn += 1
                return
            history = self._histories.get(tid)
            if history is None:
                history = self._histories[tid] = deque(maxlen=HISTORY)
            history.append(StackSample((began + ended) // 2, stack))


__all__ = ["AUSTIN_NEWEST", "STACK_READERS", "MemorySampler", "StackSources", "where"]
