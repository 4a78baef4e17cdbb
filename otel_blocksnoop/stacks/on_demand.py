"""Stacks only while a loop is blocked: a resident Austin kept stopped between blocks.

One Austin per watched process, started with the process (so it has found
the interpreter before the first block) and stopped (SIGSTOP) once its first
samples arrive. ``begin`` (a thread has been blocked for a while: the kernel
said so) resumes it (SIGCONT); ``end`` of the last block going on in the
process stops it again. While it is stopped neither Austin nor the reader
thread runs: the reader sleeps in ``select`` until Austin writes or it is
woken. Measured (BENCHMARKS.md, "Stacks on demand"): the first sample is
written ~0.2 ms after SIGCONT, and stops of 50 ms to 5 minutes changed
nothing in Austin. While it samples, Austin runs at real-time priority, so
that a busy machine does not keep it from the block (``REALTIME_PRIORITY``).

Time: Austin's delta is the time since its previous sampling pass, so a stop
shows up as one long delta and the summed deltas keep following the clock
(the anchor moved by at most tens of microseconds across stops): the
continuous sampler's anchors (``Sampler``) stay right, and improve block
after block.

Coverage: when the stop is confirmed (``/proc/PID/stat`` says stopped) the
reader drains the pipe and hands out the sample Austin ended just before the
stop (``MojoDecoder.complete``); from then on every sample taken before the
stop has been read, and ``covered_until`` says so, so the analysis does not
wait for samples that will not come. A sample still placed before that point
later (a pass Austin began before the stop and wrote after a resume) is
dropped and counted (``Loss.STACK_LATE``), never put into a block already
reported.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from otel_blocksnoop.losses import Losses
from otel_blocksnoop.stacks.austin import Austin
from otel_blocksnoop.stacks.mojo import MojoDecoder, MojoError
from otel_blocksnoop.stacks.sampler import READ_EVERY_S, Sampler, drain, stream_fd

log = logging.getLogger(__name__)

REALTIME_PRIORITY = 1
"""Austin continued by a trigger must sample before the block ends, also when
every CPU is busy: as SCHED_RR at the lowest real-time priority it runs as soon
as it is continued. Measured with both CPUs saturated (BENCHMARKS.md, "Stacks
on demand"; 5 and 10 ms blocks whose trigger came in time): the right function
for 98.6% and 99.0% of them, against 96.1% and 93.3% at normal priority.
Without CAP_SYS_NICE (or where real-time tasks are not allowed) Austin keeps
the normal priority."""
REALTIME_FOR_S = 1.0
"""A block sampled longer than this (a hang) goes on at normal priority: Austin
reading a process with many threads could otherwise keep a CPU from others."""
STOP_WAIT_S = 0.05
"""Longest wait for Austin to be seen stopped after SIGSTOP (it takes microseconds)."""
STOP_POLL_S = 0.0002
_STOPPED_STATES = frozenset({"T", "t"})


class State(enum.Enum):
    ATTACHING = "attaching"  # started, no sample yet: stopped once the first arrive
    RUNNING = "running"  # a block is going on: sampling
    STOPPING = "stopping"  # SIGSTOP sent, the pipe not yet drained
    STOPPED = "stopped"  # stopped, and everything it wrote has been read


IDLE_CHECK_S = 1.0
"""How often a stopped Austin's target is looked at (a stopped Austin cannot see it exit)."""


class OnDemandSampler(Sampler):
    """One Austin for one PID, sampling only between ``begin`` and the last ``end``."""

    REALTIME = True
    """Whether Austin is made SCHED_RR while it samples (tests and benchmarks turn it off)."""

    def __init__(
        self, austin: Austin, pid: int, interval_us: int, losses: Losses | None = None
    ) -> None:
        super().__init__(austin, pid, interval_us, losses)
        self._active: dict[int, int] = {}  # tid -> start of its block (monotonic ns)
        self.state = State.ATTACHING
        self._transitions = 0  # each resume or stop; a reader's stop is stale once it moved
        self._stop_sent_ns = 0
        self._resumed_at = 0.0
        self._realtime = False
        self._realtime_refused = False
        self.resumes = 0
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self._wake_r, self._wake_w = wake_r, wake_w

    # -- driven by the analysis, from the kernel's triggers --

    def begin(self, tid: int, start_ns: int) -> None:
        """Thread ``tid`` has been blocked since ``start_ns``: sample until its ``end``."""
        with self._lock:
            self._active[tid] = start_ns
            if self.state not in (State.STOPPING, State.STOPPED):
                return
            self._set_realtime(on=True)
            if self._signal(signal.SIGCONT):
                self.state = State.RUNNING
                self._transitions += 1
                self.resumes += 1
                self._resumed_at = self._heard_at = time.monotonic()  # silence counts from here

    def end(self, tid: int) -> None:
        """The block of ``tid`` is over: stop sampling unless another block goes on."""
        with self._lock:
            self._active.pop(tid, None)
            if not self._active and self.state == State.RUNNING:
                self._stop_locked()

    @property
    def gathering(self) -> frozenset[int]:
        """Threads whose block is going on."""
        with self._lock:
            return frozenset(self._active)

    def covered_until(self, tid: int) -> int:
        """Up to when samples of ``tid`` have arrived: now, while Austin is stopped and read."""
        newest = super().covered_until(tid)
        with self._lock:
            if self.state == State.STOPPED:
                return max(newest, time.monotonic_ns())
        return newest

    # -- Austin's lifecycle --

    def start(self) -> None:
        with self._lock:
            self.state = State.ATTACHING
            self._transitions += 1
        super().start()
        self._realtime = False
        self._set_realtime(on=True)

    def maintain(self, target_alive: bool) -> float | None:
        """As ``Sampler.maintain``; a stopped Austin is not silent, it is idle.

        A stopped Austin would not see its target exit: it is ended here, at
        the latest a second after (``IDLE_CHECK_S``).
        """
        if self._stopping or self._process is None:
            return None
        now = time.monotonic()
        if self.state in (State.STOPPING, State.STOPPED) and self.running:
            if not target_alive:
                self._end_process()
                return None
            return now + IDLE_CHECK_S
        if self.state == State.RUNNING:
            if now - self._resumed_at > REALTIME_FOR_S:
                self._set_realtime(on=False)
            else:
                again = super().maintain(target_alive)
                drop_priority = self._resumed_at + REALTIME_FOR_S
                return drop_priority if again is None else min(again, drop_priority)
        return super().maintain(target_alive)

    def _set_realtime(self, *, on: bool) -> None:
        """SCHED_RR while sampling blocks, SCHED_OTHER for a long one (see REALTIME_PRIORITY)."""
        process = self._process
        if not self.REALTIME or on == self._realtime or process is None or process.pid <= 0:
            return
        policy, priority = (os.SCHED_RR, REALTIME_PRIORITY) if on else (os.SCHED_OTHER, 0)
        try:
            os.sched_setscheduler(process.pid, policy, os.sched_param(priority))
        except OSError as exc:
            if not self._realtime_refused:
                self._realtime_refused = True
                log.debug("Austin (%d) keeps its priority: %s", process.pid, exc)
            return
        self._realtime = on

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._end_process()
        super().stop()
        if self._reader is not None and self._reader.is_alive():
            return  # still selecting on them: two fds left open beat a reused one
        with self._lock:
            wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, -1, -1
        for fd in (wake_r, wake_w):
            with contextlib.suppress(OSError):
                if fd >= 0:
                    os.close(fd)

    def _end_process(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        # A stopped process acts on SIGTERM only once it is continued.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)

    def _signal(self, signum: int) -> bool:
        process = self._process
        if process is None or process.poll() is not None:
            return False
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            return False
        return True

    def _stop_locked(self) -> None:
        if self._signal(signal.SIGSTOP):
            self.state = State.STOPPING
            self._transitions += 1
            self._stop_sent_ns = time.monotonic_ns()
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    # -- the reader thread --

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        fd = stream_fd(process)
        if fd is None:
            return
        decoder = MojoDecoder()
        next_write_s = 2 * self.interval_us / 1e6 + 0.002
        while not self._stopping:
            # Asleep here while Austin is stopped: nothing to read, nobody to wake us.
            with contextlib.suppress(OSError, ValueError):
                select.select([fd, self._wake_r], [], [])
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
            chunks = drain(fd)
            if not chunks and process.poll() is not None:
                break
            with self._lock:
                state, transition = self.state, self._transitions
            try:
                if state == State.STOPPING:
                    self._finish_stop(process, fd, decoder, chunks, transition)
                    continue
                if not chunks:
                    continue
                # Timed by Austin's next write, as in Sampler._read.
                ready, _, _ = select.select([fd], [], [], next_write_s)
                arrival_ns = time.monotonic_ns()
                if ready:
                    chunks += drain(fd)
                samples = decoder.feed(b"".join(chunks))
                self._add(samples, arrival_ns, decoder.pending())
                if samples and state == State.ATTACHING:
                    self._attached()
            except MojoError as exc:
                log.warning("failed to read Austin's output for %d: %s", self.pid, exc)
                process.kill()
                break
            # Fewer, larger reads while a block lasts; end() wakes us at once.
            with contextlib.suppress(OSError, ValueError):
                select.select([self._wake_r], [], [], READ_EVERY_S)

    def _attached(self) -> None:
        """Austin found the interpreter: stop it unless a block is already going on."""
        with self._lock:
            if self.state != State.ATTACHING:
                return
            if self._active:
                self.state = State.RUNNING
            else:
                self._stop_locked()

    def _finish_stop(
        self,
        process: subprocess.Popen[bytes],
        fd: int,
        decoder: MojoDecoder,
        chunks: list[bytes],
        transition: int,
    ) -> None:
        """Austin was sent SIGSTOP: once it is stopped, read all it wrote, then say so."""
        stopped = self._wait_stopped(process.pid, transition)
        chunks += drain(fd)
        samples = decoder.feed(b"".join(chunks))
        if stopped:
            samples += decoder.complete()
        # Read after the stop, not as written: no anchor from these.
        self._add(samples, None)
        with self._lock:
            if stopped and self._transitions == transition:
                self.state = State.STOPPED
                self._covered_ns = self._stop_sent_ns

    def _wait_stopped(self, pid: int, transition: int) -> bool:
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            if self._transitions != transition:
                return False  # resumed meanwhile
            if process_state(pid) in _STOPPED_STATES:
                return True
            time.sleep(STOP_POLL_S)
        log.debug("Austin (%d) not seen stopped %d ms after SIGSTOP", pid, STOP_WAIT_S * 1000)
        return False


def process_state(pid: int) -> str | None:
    """The state letter of ``/proc/PID/stat`` (R, S, T...), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split(maxsplit=1)
    return fields[0] if fields else None


__all__ = ["OnDemandSampler", "State", "process_state"]
