"""Python stacks of a watched process over time, from a continuous Austin stream.

Austin samples every thread in wall-clock mode (idle ones too) and reports
per sample only the time since the thread's previous sample. A sample's
CLOCK_MONOTONIC time is its thread's anchor plus the summed deltas; the
anchor is the smallest (arrival - summed deltas) seen over recent reads,
since a sample can arrive late but never early. Reads are batched (every
READ_EVERY_S): each wake-up of the reader costs far more than decoding the
few samples it brings, so fewer, larger reads are what keeps it cheap.

Memory is bounded: each thread keeps its last HISTORY samples, and at most
MAX_THREADS threads are kept (the samples of a thread dropped to make room,
and each restart of Austin, are counted in ``losses``).

``on_demand.OnDemandSampler`` is the same sampler with Austin stopped between
blocks; ``pool.SamplerPool`` holds one of either kind per watched process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import subprocess
import threading
import time
from collections import deque

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import NS_PER_MS, Frame, Loss, StackSample
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.stacks.austin import Austin, reason
from otel_blocksnoop.stacks.mojo import MojoDecoder, MojoError, RawSample

log = logging.getLogger(__name__)

READ_EVERY_S = 0.1
"""Seen with an idle app at -t 100 (one thread, 200 samples/s): reading every
20 ms cost the reader thread 1.7% of a core; every 100 ms, see the commit."""
PIPE_BYTES = 1 << 20  # 64 KiB (the default) is ~0.1 s of a busy many-thread process at 1 ms
HISTORY = 4096  # samples per thread: ~40 s at 10 ms
MAX_THREADS = 256
ANCHOR_WINDOW = 256  # reads over which the anchor is taken (~25 s)
ANCHOR_QUANTILE = 5  # the anchor is the 1/5 quantile: robust to a fifth of outliers
MIN_INTERVAL_US = 1000
MAX_INTERVAL_US = 10000
SAMPLES_PER_THRESHOLD = 10
# Austin started at the instant a process execs can find no interpreter yet
# (seen with CPython 3.9: "cannot determine the version"), so the first
# retries are quick; a failure that persists backs off and is reported.
RESTART_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
WARN_AFTER_FAILURES = 4
STARTUP_WAIT_MS = 250  # Austin's own default (3 s) would hide a launched child's first second
# Wall mode samples idle threads too: silence this long means stuck. It must
# cover Austin's startup wait plus two read periods, or a slow attach is
# killed and retried before its first sample can be read.
STALL_S = STARTUP_WAIT_MS / 1000 + 2 * READ_EVERY_S + 0.05


def interval_for(threshold_ns: int) -> int:
    """Sampling interval in us: about ten samples per threshold, 1 to 10 ms.

    Austin's cost and the decoding both scale with the sample rate: at 1, 2
    and 5 ms Austin alone cost 2.5%, 1.7% and 1.3% of a core. A block just
    over the threshold still gets ~10 votes (blocks >= 10 ms were attributed
    right 420/420 with as few as two samples per block at 5 ms).
    """
    per_threshold = threshold_ns // SAMPLES_PER_THRESHOLD // 1000
    return max(MIN_INTERVAL_US, min(MAX_INTERVAL_US, per_threshold))


class _Timeline:
    """A stretch of one thread's samples whose deltas chain: one sampling run of Austin.

    Its first sample is its origin (elapsed 0): that sample's own delta points
    back across whatever came before (a stop, Austin's start), and Austin does
    not always count a stop in it (seen: 9 ms for a 200 ms stop, when the stop
    came while the target was still starting). ``floor_ns`` is the earliest a
    sample of the run can have been taken (when Austin was continued).
    """

    __slots__ = ("anchors", "elapsed_us", "floor_ns", "started")

    def __init__(self, floor_ns: int = 0) -> None:
        self.anchors: deque[int] = deque(maxlen=ANCHOR_WINDOW)
        self.elapsed_us = 0
        self.floor_ns = floor_ns
        self.started = False

    def anchor_ns(self) -> int:
        """A low quantile of the per-read anchors, not their minimum, and never before the floor.

        Now and then a read gives an anchor milliseconds too early (Austin's
        deltas ran ahead of the clock; seen -1 to -3 ms a few times in 10 s
        under load). The minimum kept such an outlier for the whole window and
        misplaced every later sample: 5 ms blocks were then attributed right
        0/50 in one run and 48/50 in another.
        """
        if not self.anchors:
            return self.floor_ns
        return max(self.floor_ns, sorted(self.anchors)[len(self.anchors) // ANCHOR_QUANTILE])


WINDOW_SLACK_NS = 100_000_000
"""How far before a window's start its samples are still looked for, newest first:
anchors of successive timelines may disagree by a little, never by this much."""


class _ThreadHistory:
    __slots__ = ("epoch", "samples", "skip", "timeline")

    def __init__(self, epoch: int, floor_ns: int, skip: int) -> None:
        self.samples: deque[tuple[_Timeline, int, tuple[Frame, ...]]] = deque(maxlen=HISTORY)
        self.timeline = _Timeline(floor_ns)
        self.epoch = epoch
        self.skip = skip

    @property
    def anchors(self) -> deque[int]:
        return self.timeline.anchors


def _twin(samples: list[RawSample], index: int) -> bool:
    """Whether the sample at ``index`` is an empty stack beside its own thread's, in one pass.

    CPython up to 3.11 gives a thread state made for a new thread its maker's
    native id until the new thread runs (under load, seen for 200 ms): Austin
    then reports two samples of the maker's id in each pass, with the same
    delta, one of them empty. Both counted would run the thread's clock twice
    as fast and scatter its samples over the next blocks; the empty one says
    nothing of the thread, so it is left out.
    """
    sample = samples[index]
    if sample.frames:
        return False
    return any(
        0 <= other < len(samples)
        and samples[other].tid == sample.tid
        and samples[other].delta_us == sample.delta_us
        and samples[other].frames
        for other in (index - 1, index + 1)
    )


class Sampler:
    """One Austin process for one watched PID, and what it has seen lately."""

    def __init__(
        self, austin: Austin, pid: int, interval_us: int, losses: Losses | None = None
    ) -> None:
        self.austin = austin
        self.pid = pid
        self.interval_us = interval_us
        self._losses = losses if losses is not None else Losses()
        self._histories: BoundedDict[int, _ThreadHistory] = BoundedDict(
            MAX_THREADS, on_drop=self._dropped
        )
        self._started = False
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stopping = False
        self._failures = 0
        self._restart_at = 0.0
        self._heard_at = 0.0  # last start, or last read that brought samples
        self._covered_ns = 0  # every sample taken before this has been read (0: not tracked)
        # A new epoch (Austin continued) starts a new timeline for each thread,
        # no earlier than its floor, skipping its first ``skip`` samples.
        self._epoch = 0
        self._epoch_floor_ns = 0
        self._epoch_skip = 0

    def start(self) -> None:
        options = [
            "-P",
            "-i",
            f"{self.interval_us}us",
            "-t",
            str(STARTUP_WAIT_MS),  # milliseconds; Austin refuses units here
        ]
        log.debug("starting %s %s -p %d", self.austin.path, " ".join(options), self.pid)
        if self._started:
            self._losses.add(Loss.STACK_RESTARTS)
        self._started = True
        self._heard_at = time.monotonic()
        # A new Austin counts time from its own start: old anchors would
        # misplace its samples by the gap between the two processes.
        with self._lock:
            self._histories.clear()
        try:
            self._process = self.austin.stream(*options, pid=self.pid)
        except OSError as exc:
            # Not retried: what refused it (a namespace, a missing binary) stays.
            log.warning("%s; blocks of %d are reported without stacks", exc, self.pid)
            self._process = None
            return
        self._spawned(self._process)
        self._reader = threading.Thread(
            target=self._read, args=(self._process,), name=f"austin-{self.pid}", daemon=True
        )
        self._reader.start()

    def _spawned(self, process: subprocess.Popen[bytes]) -> None:
        """A new Austin was started; its reader starts next."""

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        fd = stream_fd(process)
        if fd is None:
            return
        decoder = MojoDecoder()
        # Bytes found in the pipe were written up to READ_EVERY_S ago, so their
        # arrival says little about when the newest sample was taken. Waiting
        # for Austin's next write times that one to within a wake-up: with an
        # anchor from draining alone, 5 ms blocks sampled every 1 ms were placed
        # 4-7 ms late (see the commit).
        next_write_s = next_write_wait_s(self.interval_us)
        while not self._stopping:
            chunks = drain(fd)
            if not chunks and process.poll() is not None:
                break
            if chunks:
                ready, _, _ = select.select([fd], [], [], next_write_s)
                arrival_ns = time.monotonic_ns()
                if ready:
                    chunks += drain(fd)
                try:
                    samples = decoder.feed(b"".join(chunks))
                    self._add(samples, arrival_ns, decoder.pending())
                except MojoError as exc:
                    log.warning("failed to read Austin's output for %d: %s", self.pid, exc)
                    process.kill()
                    break
            time.sleep(READ_EVERY_S)

    def _add(
        self,
        samples: list[RawSample],
        arrival_ns: int | None,
        pending: tuple[int, int] | None = None,
    ) -> None:
        """Keep ``samples``; ``pending`` is the (tid, delta) of the one Austin is still writing.

        ``arrival_ns`` None: the bytes were not read as Austin wrote them
        (it was stopped), so they say nothing about when it sampled.
        """
        with self._lock:
            touched, late = self._add_locked(samples)
            if arrival_ns is not None:
                self._anchor_locked(touched, arrival_ns, pending)
        if late:
            self._losses.add(Loss.STACK_LATE, late)

    def _add_locked(self, samples: list[RawSample]) -> tuple[set[int], int]:
        """Keep ``samples``: the threads they belong to, and how many were late (dropped).

        A sample placed before ``_covered_ns`` is late (readers were told that
        every sample up to then had arrived), and so is one of the first
        ``skip`` of a thread in an epoch (taken before Austin was stopped).
        """
        if samples:
            self._failures = 0
            self._heard_at = time.monotonic()
        touched: set[int] = set()
        late = 0
        for index, sample in enumerate(samples):
            if _twin(samples, index):
                continue
            history = self._histories.get(sample.tid)
            if history is None:
                history = self._histories[sample.tid] = _ThreadHistory(
                    self._epoch, self._epoch_floor_ns, self._epoch_skip
                )
            elif history.epoch != self._epoch:
                history.epoch, history.skip = self._epoch, self._epoch_skip
                history.timeline = _Timeline(self._epoch_floor_ns)
            if history.skip:
                history.skip -= 1
                late += 1
                continue
            timeline = history.timeline
            if timeline.started:
                timeline.elapsed_us += sample.delta_us
            timeline.started = True
            if (
                self._covered_ns
                and timeline.anchors
                and timeline.anchor_ns() + timeline.elapsed_us * 1000 < self._covered_ns
            ):
                late += 1
                continue
            history.samples.append((timeline, timeline.elapsed_us, sample.frames))
            touched.add(sample.tid)
        return touched, late

    def _anchor_locked(
        self, tids: set[int], arrival_ns: int, pending: tuple[int, int] | None
    ) -> None:
        """Every sample of ``tids`` read so far was written before ``arrival_ns``."""
        for tid in tids:
            history = self._histories.get(tid)
            if history is None or history.epoch != self._epoch or not history.timeline.started:
                continue
            newest_us = history.timeline.elapsed_us
            if pending is not None and pending[0] == tid:
                newest_us += pending[1]
            history.timeline.anchors.append(arrival_ns - newest_us * 1000)

    def _new_epoch(self, floor_ns: int, skip: int) -> None:
        """Austin was continued at ``floor_ns``: from the next sample on, a new time base.

        ``skip``: samples of each thread to drop first, taken before the stop.
        Called with the lock held.
        """
        self._epoch += 1
        self._epoch_floor_ns = floor_ns
        self._epoch_skip = skip

    def _dropped(self, _tid: int, history: _ThreadHistory) -> None:
        """A thread's history was dropped to make room for a newer thread's."""
        self._losses.add(Loss.STACK_SAMPLES, len(history.samples))

    def begin(self, tid: int, start_ns: int) -> None:
        """Thread ``tid`` is blocked since ``start_ns``: a continuous sampler samples it already."""

    def end(self, tid: int) -> None:
        """The block of ``tid`` ended: a continuous sampler goes on."""

    def window(self, tid: int, start_ns: int, end_ns: int) -> list[StackSample]:
        """Samples of thread ``tid`` taken between ``start_ns`` and ``end_ns``.

        The history is in time order (each resume's timeline starts after the
        last): it is read from the newest back, and no further than
        ``WINDOW_SLACK_NS`` before ``start_ns`` (a block's samples are among
        the newest: reading all 4,096 cost 7 ms a block in a storm).
        """
        with self._lock:
            history = self._histories.get(tid)
            if history is None:
                return []
            anchors: dict[int, int] = {}
            found = []
            for timeline, elapsed, frames in reversed(history.samples):
                anchor = anchors.get(id(timeline))
                if anchor is None:
                    anchor = anchors[id(timeline)] = timeline.anchor_ns()
                at = anchor + elapsed * 1000
                if at < start_ns - WINDOW_SLACK_NS:
                    break
                if start_ns <= at <= end_ns:
                    found.append(StackSample(at, frames))
            found.reverse()
            return found

    def covered_until(self, tid: int) -> int:
        """Monotonic time of the newest sample of ``tid`` (0 if none)."""
        with self._lock:
            history = self._histories.get(tid)
            if history is None or not history.samples:
                return 0
            timeline, elapsed, _ = history.samples[-1]
            return timeline.anchor_ns() + elapsed * 1000

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def maintain(self, target_alive: bool) -> float | None:
        """Restart Austin with back-off if it died, or went silent, while the target lives.

        Returns when (``time.monotonic``) to be called again, None when never.
        """
        if self._stopping or self._process is None or not target_alive:
            return None
        now = time.monotonic()
        if self.running:
            if now - self._heard_at > STALL_S:
                log.debug(
                    "Austin produced no sample of %d for %.1f s; restarting it", self.pid, STALL_S
                )
                self._process.kill()
                self._process.wait()
            else:
                # Austin may die any time: look again when silence would mean stuck.
                return self._heard_at + STALL_S
        if self._restart_at == 0.0:
            reason = self._exit_reason()
            delay = RESTART_BACKOFF_S[min(self._failures, len(RESTART_BACKOFF_S) - 1)]
            self._failures += 1
            level = logging.WARNING if self._failures >= WARN_AFTER_FAILURES else logging.DEBUG
            log.log(
                level,
                "Austin stopped sampling %d (%s); blocks are reported without stacks "
                "until it runs again (retry in %.2g s)",
                self.pid,
                reason,
                delay,
            )
            self._restart_at = now + delay
        elif now >= self._restart_at:
            self._restart_at = 0.0
            self.start()
            return self._heard_at + STALL_S
        return self._restart_at

    def _exit_reason(self) -> str:
        if self._process is None:
            return "not started"
        stderr = b""
        if self._process.stderr is not None:
            os.set_blocking(self._process.stderr.fileno(), False)
            try:
                stderr = self._process.stderr.read() or b""
            except BlockingIOError:
                stderr = b""
        return reason(stderr.decode(errors="replace"), self._process.returncode)

    def stop(self) -> None:
        self._stopping = True
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=1)
        self._close_pipes()

    def _close_pipes(self) -> None:
        """Close Austin's pipes once nothing reads them: not left to the garbage collector.

        A node-mode sidecar stops a sampler for every process that exits; left
        to a collection of the cycles they sit in, their fds piled up (92 pipes
        after 150 apps had come and gone in a minute).
        """
        process = self._process
        if process is None or (self._reader is not None and self._reader.is_alive()):
            return
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def drain(fd: int) -> list[bytes]:
    """Whatever the non-blocking pipe holds now."""
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return chunks


def stream_fd(process: subprocess.Popen[bytes]) -> int | None:
    """Austin's output, non-blocking, with room for a whole read period in the pipe."""
    if process.stdout is None:
        return None
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    with contextlib.suppress(OSError):
        # Austin blocks once the pipe is full.
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return fd


SETTLE_INTERVAL_MAX_US = 1_000_000
"""Intervals past 1 s wait for samples as if they were 1 s: a block is never held
longer than about 2.2 s for its samples, whatever ``--sample-interval`` says."""


def next_write_wait_s(interval_us: int) -> float:
    """How long a reader waits for Austin's next write, to time it (bounded as ``settle_ns``)."""
    return 2 * min(interval_us, SETTLE_INTERVAL_MAX_US) / 1e6 + 0.002


def settle_ns(interval_us: int) -> int:
    """How long after a block ends its last samples can take to arrive (at most ~2.2 s)."""
    interval_us = min(interval_us, SETTLE_INTERVAL_MAX_US)
    return int((READ_EVERY_S * 2) * 1e9) + 2 * interval_us * 1000 + 10 * NS_PER_MS
