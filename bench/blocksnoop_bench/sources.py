# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""The stack sources compared by bench/stack_sources.py, behind the sampler pool's face.

Each takes ``begin(pid, tid, start_ns)`` when a block has lasted half the
threshold, ``end(pid, tid)`` when it is over, and answers ``window`` and
``covered_until`` as ``stacks.pool.SamplerPool`` does:

none        gathers nothing (the driver's own cost, subtracted from the others)
continuous  today's pool: one Austin per process sampling all the time
resident    the pool on demand: one Austin per process, SIGSTOP/SIGCONT,
            sampling as SCHED_RR (``on_demand.REALTIME_PRIORITY``)
resident-normal  the same at normal priority
spawn       ``austin -w PID`` run again and again from ``begin`` to ``end``;
            each dump is placed at the middle of its run
frames      the prototype frame reader (``frames.FrameReader``) reading the
            thread's stack every interval from ``begin`` to ``end``; each
            stack placed at the middle of its read
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Protocol

from blocksnoop_bench.frames import FrameReader, frame_fields
from otel_blocksnoop.events import StackSample
from otel_blocksnoop.stacks.austin import Austin, AustinError
from otel_blocksnoop.stacks.on_demand import OnDemandSampler
from otel_blocksnoop.stacks.pool import SamplerPool

NAMES = ("none", "continuous", "resident", "resident-normal", "spawn", "frames")
SETTLE_S = 0.4
"""Longest wait for a block's samples after its end (the product waits ~0.2 s)."""


class Source(Protocol):
    def attach(self, pid: int, python: str) -> None: ...
    def begin(self, pid: int, tid: int, start_ns: int) -> None: ...
    def end(self, pid: int, tid: int) -> None: ...
    def window(self, pid: int, tid: int, start_ns: int, end_ns: int) -> list[StackSample]: ...
    def covered_until(self, pid: int, tid: int) -> int: ...
    def stop(self) -> None: ...


class Nothing:
    def attach(self, pid: int, python: str) -> None:
        del pid, python

    def begin(self, pid: int, tid: int, start_ns: int) -> None:
        del pid, tid, start_ns

    def end(self, pid: int, tid: int) -> None:
        del pid, tid

    def window(self, pid: int, tid: int, start_ns: int, end_ns: int) -> list[StackSample]:
        del pid, tid, start_ns, end_ns
        return []

    def covered_until(self, pid: int, tid: int) -> int:
        del pid, tid
        return time.monotonic_ns()

    def stop(self) -> None:
        pass


class Pool:
    """The product's pool, continuous or on demand."""

    def __init__(self, austin: Austin, interval_us: int, on_demand: bool) -> None:
        self.pool = SamplerPool(austin, interval_us, on_demand=on_demand)

    def attach(self, pid: int, python: str) -> None:
        del python
        self.pool.ensure(pid)

    def begin(self, pid: int, tid: int, start_ns: int) -> None:
        self.pool.begin(pid, tid, start_ns)

    def end(self, pid: int, tid: int) -> None:
        self.pool.end(pid, tid)

    def window(self, pid: int, tid: int, start_ns: int, end_ns: int) -> list[StackSample]:
        return self.pool.window(pid, tid, start_ns, end_ns)

    def covered_until(self, pid: int, tid: int) -> int:
        return self.pool.covered_until(pid, tid)

    def stop(self) -> None:
        self.pool.stop()


class _Gatherer:
    """Stacks taken by a thread of ours from ``begin`` until ``end``, one per ``take``."""

    def __init__(self) -> None:
        self._samples: dict[int, list[StackSample]] = {}
        self._going: dict[int, threading.Event] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        self.first_latency_ns: list[int] = []

    def take(self, pid: int, tid: int) -> StackSample | None:
        raise NotImplementedError

    def begin(self, pid: int, tid: int, start_ns: int) -> None:
        del start_ns
        done = threading.Event()
        self._going[tid] = done
        thread = threading.Thread(target=self._run, args=(pid, tid, done), daemon=True)
        self._threads[tid] = thread
        thread.start()

    def _run(self, pid: int, tid: int, done: threading.Event) -> None:
        begun = time.monotonic_ns()
        first = True
        while not done.is_set():
            sample = self.take(pid, tid)
            if sample is not None:
                with self._lock:
                    self._samples.setdefault(tid, []).append(sample)
                if first:
                    self.first_latency_ns.append(time.monotonic_ns() - begun)
                    first = False
            self.pause()

    def pause(self) -> None:
        pass

    def end(self, pid: int, tid: int) -> None:
        del pid
        done = self._going.pop(tid, None)
        if done is not None:
            done.set()
        thread = self._threads.pop(tid, None)
        if thread is not None:
            thread.join()

    def window(self, pid: int, tid: int, start_ns: int, end_ns: int) -> list[StackSample]:
        del pid
        with self._lock:
            return [s for s in self._samples.get(tid, []) if start_ns <= s.time_ns <= end_ns]

    def covered_until(self, pid: int, tid: int) -> int:
        del pid, tid
        return time.monotonic_ns()  # end() joined the thread: all there is has arrived

    def stop(self) -> None:
        for tid in list(self._going):
            self.end(0, tid)


class Spawn(_Gatherer):
    def __init__(self, austin: Austin) -> None:
        super().__init__()
        self.austin = austin

    def attach(self, pid: int, python: str) -> None:
        del pid, python

    def take(self, pid: int, tid: int) -> StackSample | None:
        before = time.monotonic_ns()
        try:
            stacks = self.austin.where(pid)
        except AustinError:
            return None
        after = time.monotonic_ns()
        frames = stacks.get(tid)
        return StackSample((before + after) // 2, frames) if frames else None


class Frames(_Gatherer):
    def __init__(self, interval_us: int) -> None:
        super().__init__()
        self.interval_s = interval_us / 1e6
        self.reader: FrameReader | None = None

    def attach(self, pid: int, python: str) -> None:
        self.reader = FrameReader(pid, frame_fields(python))

    def take(self, pid: int, tid: int) -> StackSample | None:
        del pid
        if self.reader is None:
            return None
        before = time.monotonic_ns()
        frames = self.reader.stack(tid)
        after = time.monotonic_ns()
        return StackSample((before + after) // 2, frames) if frames else None

    def pause(self) -> None:
        time.sleep(self.interval_s)


def make(name: str, austin_path: Path, interval_us: int) -> Source:
    austin = Austin(austin_path)
    if name == "none":
        return Nothing()
    if name in ("continuous", "resident", "resident-normal"):
        OnDemandSampler.REALTIME = name == "resident"
        return Pool(austin, interval_us, on_demand=name != "continuous")
    if name == "spawn":
        return Spawn(austin)
    if name == "frames":
        return Frames(interval_us)
    msg = f"unknown source {name}"
    raise ValueError(msg)


def wait_covered(source: Source, pid: int, tid: int, end_ns: int) -> None:
    deadline = time.monotonic() + SETTLE_S
    while source.covered_until(pid, tid) < end_ns and time.monotonic() < deadline:
        time.sleep(0.001)


def spawn_austin_stream(austin: Path, pid: int, interval_us: int) -> subprocess.Popen[bytes]:
    """``austin -P -i INTERVAL -p PID``, as the pool starts it."""
    return subprocess.Popen(
        [str(austin), "-P", "-i", f"{interval_us}us", "-p", str(pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
