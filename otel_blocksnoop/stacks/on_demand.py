"""Stacks only while a loop is blocked: a resident Austin kept stopped between blocks.

One Austin per watched process, started with the process (so it has found
the interpreter before the first block) and stopped (SIGSTOP) once its first
samples arrive. ``begin`` (a thread has been blocked for a while: the kernel
said so) resumes it (SIGCONT); ``end`` of the last block going on in the
process stops it again. While it is stopped neither Austin nor the reader
thread runs: the reader sleeps in ``select`` until Austin writes or it is
woken. Measured (BENCHMARKS.md, "Stacks on demand"): the first sample is
written ~0.2 ms after SIGCONT. While it samples, Austin runs at real-time
priority, so that a busy machine does not keep it from the block
(``REALTIME_PRIORITY``).

A stop is finished where it is asked for, under the sampler's lock: SIGSTOP,
wait for the kernel to report Austin stopped (``waitid``), read everything it
wrote, then mark the stream. Whatever is read after that was written after
the next SIGCONT: the boundary between the samples before a stop and after a
resume is exact, whichever thread reads, and ``covered_until`` can say "every
sample taken before now has arrived" from the stop on.

Time: each resume starts a new time base for every thread (``_Timeline``):
Austin's deltas are not trusted across a stop (the first one after it
sometimes leaves the stop out), samples after it are placed by reads made
after it, and never before the SIGCONT. A stop that caught Austin in the
middle of a sampling pass (not asleep between passes, ``between_passes``)
leaves that pass's samples to be written after the resume: the first sample
of each thread after such a stop is dropped and counted (``Loss.STACK_LATE``),
never put into the next block.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import platform
import select
import signal
import subprocess
import time
from pathlib import Path

from otel_blocksnoop.events import Loss
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.stacks.austin import Austin
from otel_blocksnoop.stacks.mojo import MojoDecoder, MojoError
from otel_blocksnoop.stacks.sampler import (
    READ_EVERY_S,
    Sampler,
    drain,
    next_write_wait_s,
    stream_fd,
)

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
SLEEP_SYSCALLS = {
    "x86_64": frozenset({35, 230, 219}),  # nanosleep, clock_nanosleep, restart_syscall
    "aarch64": frozenset({101, 115, 128}),
}
"""Where Austin waits between sampling passes (musl's usleep, restarted after a stop)."""


class State(enum.Enum):
    ATTACHING = "attaching"  # started, no sample yet: stopped once the first arrive
    RUNNING = "running"  # sampling (a block is going on, or none was yet when it attached)
    STOPPED = "stopped"  # stopped, and everything it wrote before has been read


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
        self._decoder = MojoDecoder()
        self._fd = -1
        self._mid_pass = False  # the last stop caught Austin inside a sampling pass
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
            if self.state != State.STOPPED:
                return  # sampling already, or attaching (it goes on sampling once attached)
            self._set_realtime(on=True)
            resumed_ns = time.monotonic_ns()
            if self._signal(signal.SIGCONT):
                self.state = State.RUNNING
                self._new_epoch(resumed_ns, skip=1 if self._mid_pass else 0)
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
            self._decoder = MojoDecoder()
            self._mid_pass = False
            self._epoch_skip = 0
        super().start()
        self._realtime = False
        self._set_realtime(on=True)

    def _spawned(self, process: subprocess.Popen[bytes]) -> None:
        """A new Austin, before its reader starts: read its pipe from now on."""
        fd = stream_fd(process)
        with self._lock:
            self._fd = -1 if fd is None else fd

    def maintain(self, target_alive: bool) -> float | None:
        """As ``Sampler.maintain``; a stopped Austin is not silent, it is idle.

        A stopped Austin would not see its target exit: it is ended here, at
        the latest a second after (``IDLE_CHECK_S``).
        """
        if self._stopping or self._process is None:
            return None
        now = time.monotonic()
        if self.state == State.STOPPED and self.running:
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
        """Stop Austin and read all it wrote before the stop; with the lock held.

        The wait is for the kernel to act on SIGSTOP (microseconds; Austin may
        be real-time): no resume can come in between, the lock is held.
        """
        process = self._process
        if process is None or not self._signal(signal.SIGSTOP):
            return
        if not wait_stopped(process.pid):
            return  # it exited: maintain() restarts it
        stopped_ns = time.monotonic_ns()
        self._mid_pass = not between_passes(process.pid)
        try:
            chunks = drain(self._fd) if self._fd >= 0 else []
            samples = self._decoder.feed(b"".join(chunks)) + self._decoder.complete()
        except (MojoError, OSError) as exc:
            log.warning("failed to read Austin's output for %d: %s", self.pid, exc)
            process.kill()
            return
        # Read after the stop, not as written: no anchor from these.
        _, late = self._add_locked(samples)
        if late:
            self._losses.add(Loss.STACK_LATE, late)
        self.state = State.STOPPED
        self._covered_ns = stopped_ns
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    # -- the reader thread --

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        next_write_s = next_write_wait_s(self.interval_us)
        while not self._stopping:
            fd = self._fd
            # Asleep here while Austin is stopped: nothing to read, nobody to wake us.
            with contextlib.suppress(OSError, ValueError):
                select.select([fd, self._wake_r], [], [])
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
            first = self._read_some(process)
            if first is None:
                break
            epoch, touched = first
            if not touched:
                continue
            # Timed by Austin's next write, as in Sampler._read.
            with contextlib.suppress(OSError, ValueError):
                select.select([fd], [], [], next_write_s)
            if self._read_some(process, (epoch, touched, time.monotonic_ns())) is None:
                break
            # Fewer, larger reads while a block lasts; end() wakes us at once.
            with contextlib.suppress(OSError, ValueError):
                select.select([self._wake_r], [], [], READ_EVERY_S)

    def _read_some(
        self,
        process: subprocess.Popen[bytes],
        timing: tuple[int, set[int], int] | None = None,
    ) -> tuple[int, set[int]] | None:
        """Decode what the pipe holds now: (epoch, threads with new samples); None: stop reading.

        ``timing`` (epoch, threads of the previous read, arrival): every sample
        read so far was written before the arrival; it anchors them unless a
        stop and a resume came in between (a new epoch, whose samples it does
        not time).
        """
        late = 0
        with self._lock:
            if process is not self._process or self._fd < 0:
                return None
            chunks = drain(self._fd)
            if not chunks and process.poll() is not None:
                return None
            try:
                samples = self._decoder.feed(b"".join(chunks))
            except MojoError as exc:
                log.warning("failed to read Austin's output for %d: %s", self.pid, exc)
                process.kill()
                return None
            touched, late = self._add_locked(samples)
            if timing is not None and timing[0] == self._epoch:
                self._anchor_locked(touched | timing[1], timing[2], self._decoder.pending())
            if samples and self.state == State.ATTACHING:
                self._attached_locked()
            epoch = self._epoch
        if late:
            self._losses.add(Loss.STACK_LATE, late)
        return epoch, touched

    def _attached_locked(self) -> None:
        """Austin found the interpreter: stop it unless a block is already going on."""
        if self._active:
            self.state = State.RUNNING
        else:
            self._stop_locked()


def wait_stopped(pid: int) -> bool:
    """Wait until child ``pid`` is stopped (True) or has exited (False); reaps nothing."""
    try:
        info = os.waitid(os.P_PID, pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        return False
    return info is not None and info.si_code == os.CLD_STOPPED


def between_passes(pid: int) -> bool:
    """Whether stopped Austin ``pid`` was asleep between sampling passes (not inside one)."""
    sleeps = SLEEP_SYSCALLS.get(platform.machine())
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    if sleeps is None or not fields:
        return False
    try:
        return int(fields[0]) in sleeps
    except ValueError:
        return False  # "running"


def process_state(pid: int) -> str | None:
    """The state letter of ``/proc/PID/stat`` (R, S, T...), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split(maxsplit=1)
    return fields[0] if fields else None


__all__ = ["OnDemandSampler", "State", "between_passes", "process_state", "wait_stopped"]
