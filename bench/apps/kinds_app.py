# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Attribution target: an asyncio app that blocks its loop in seven known ways.

Kinds: ``sleep`` (time.sleep), ``cpu`` (pure-Python busy loop), ``hashlib``
(pbkdf2_hmac, CPU in a C extension), ``read`` (os.read on a pipe a timer
thread writes to), ``subprocess`` (subprocess.run of sleep), ``lock`` (a
threading.Lock another thread holds while sleeping) and ``gil`` (another
thread spins in pure Python while the loop makes GIL-releasing calls).

For every block the app records its own CLOCK_MONOTONIC start and end, its
native thread id, the kind, and the true call site: the function, file and
line of the application line that blocks. Lines are found at start-up by
searching this file for the ``# BLOCK: <kind>`` marker comments, so editing
the file never leaves a stale number. Only the standard library is used, and
only syntax CPython 3.9 accepts, so the runner can use any pyenv interpreter.

Two schedules: ``--count N`` blocks per kind, shuffled, with random idle
awaits between (attribution); or ``--rate R --seconds S``, R blocks per
second cycling through the kinds for S seconds (storm).

It writes nothing to stdout: in launch mode that stream is the sidecar's.

USAGE: kinds_app.py --duration-ms D --out FILE (--count N | --rate R --seconds S)
                    [--kinds K ...] [--idle-ms MIN MAX] [--seed S]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import inspect
import json
import math
import os
import platform
import random
import re
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

KINDS = ("sleep", "cpu", "hashlib", "read", "subprocess", "lock", "gil")
WARMUP_AWAITS = 10
"""Idle awaits before the first block, so start-up iterations settle first."""
MARKER = re.compile(r"#\s*BLOCK:\s*(\w+)")
HASH_CALIBRATION_ROUNDS = 20_000


class Hog:
    """A thread that spins in pure Python, holding the GIL, while ``go`` is set.

    It lives for the whole run (a daemon, ending with ``close``), so starting
    or joining it never falls inside a block.
    """

    def __init__(self) -> None:
        self.go = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gil-hog", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            if not self.go.wait(timeout=0.1):
                continue
            while self.go.is_set():
                for _ in range(1000):
                    pass

    def close(self) -> None:
        self.go.clear()
        self.done.set()
        self.thread.join(timeout=5)


class Helper:
    """A thread told through a pipe to wait so long, then act; the request never blocks.

    Created once, so no thread start or join falls inside a block. A NaN
    request ends it.
    """

    def __init__(self, name: str) -> None:
        self._control_r, self._control_w = os.pipe()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def request(self, seconds: float) -> None:
        os.write(self._control_w, struct.pack("d", seconds))

    def _serve(self) -> None:
        self.setup()
        while True:
            raw = os.read(self._control_r, 8)
            if len(raw) < 8 or math.isnan(seconds := struct.unpack("d", raw)[0]):
                return
            time.sleep(seconds)
            self.act()

    def setup(self) -> None:
        """Run once on the helper's thread before the first request."""

    def act(self) -> None:
        """Run on the helper's thread once the requested time has passed."""

    def close(self) -> None:
        self.request(math.nan)
        self.thread.join(timeout=5)


class Writer(Helper):
    """Writes a byte to ``data`` after the requested time: the loop's read returns then."""

    def __init__(self) -> None:
        self.data, self._data_w = os.pipe()
        super().__init__("pipe-writer")

    def act(self) -> None:
        os.write(self._data_w, b"x")


class Holder(Helper):
    """Holds ``lock`` except for a moment after each request's time has passed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._done_r, self._done_w = os.pipe()
        super().__init__("lock-holder")

    def setup(self) -> None:
        self.lock.acquire()

    def act(self) -> None:
        self.lock.release()
        os.read(self._done_r, 1)  # the loop thread has taken the lock and given it back
        self.lock.acquire()

    def done(self) -> None:
        """Say the lock is free again, so the holder takes it for the next block."""
        os.write(self._done_w, b"x")


class Blocker:
    """One method per kind; each blocks the calling thread for about ``seconds``."""

    def __init__(self) -> None:
        self.hog = Hog()
        self.writer = Writer()
        self.holder = Holder()
        self.hash_rounds_per_s = self._calibrate_hash()

    @staticmethod
    def _calibrate_hash() -> float:
        """Best of three, so a busy moment at start does not make every block short."""
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", HASH_CALIBRATION_ROUNDS)
            best = min(best, time.perf_counter() - start)
        return HASH_CALIBRATION_ROUNDS / best

    def block_sleep(self, seconds: float) -> None:
        time.sleep(seconds)  # BLOCK: sleep

    def block_cpu(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # BLOCK: cpu
            pass

    def block_hashlib(self, seconds: float) -> None:
        # Chunks of a quarter of the length up to a deadline: the speed of a
        # calibrated single call varies too much on a shared machine.
        rounds = max(1, int(seconds / 4 * self.hash_rounds_per_s))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", rounds)  # BLOCK: hashlib

    def block_read(self, seconds: float) -> None:
        self.writer.request(seconds)
        os.read(self.writer.data, 1)  # BLOCK: read

    def block_subprocess(self, seconds: float) -> None:
        subprocess.run(["sleep", f"{seconds:.6f}"], check=True)  # BLOCK: subprocess

    def block_lock(self, seconds: float) -> None:
        while not self.holder.lock.locked():  # the holder may not have taken it back yet
            time.sleep(0.0005)
        self.holder.request(seconds)
        self.holder.lock.acquire()  # BLOCK: lock
        self.holder.lock.release()
        self.holder.done()

    def block_gil(self, seconds: float) -> None:
        self.hog.go.set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0)  # BLOCK: gil
        self.hog.go.clear()

    def close(self) -> None:
        self.hog.close()
        self.writer.close()
        self.holder.close()

    def method(self, kind: str) -> Callable[[float], None]:
        return getattr(self, f"block_{kind}")  # type: ignore[no-any-return]


def call_sites() -> dict[str, dict[str, Any]]:
    """Map each kind to the function, file and line of its marked blocking line."""
    source = Path(__file__).read_text().splitlines()
    lines: dict[str, int] = {}
    for number, text in enumerate(source, start=1):
        match = MARKER.search(text)
        if match and not text.lstrip().startswith("#"):
            lines[match.group(1)] = number
    sites = {}
    for kind in KINDS:
        function = getattr(Blocker, f"block_{kind}")
        code = function.__code__
        line = lines[kind]
        body, first = inspect.getsourcelines(function)
        if not first <= line < first + len(body):
            msg = f"marker for {kind} is outside {code.co_name}"
            raise RuntimeError(msg)
        sites[kind] = {
            "function": code.co_name,
            "qualname": function.__qualname__,
            "file": code.co_filename,
            "line": line,
        }
    return sites


async def _inject(
    blocker: Blocker,
    schedule: list[str],
    duration_s: float,
    idle_ms: tuple[float, float],
    rng: random.Random,
) -> dict[str, list[dict[str, Any]]]:
    blocks: list[dict[str, Any]] = []
    idles: list[dict[str, Any]] = []
    tid = threading.get_native_id()

    async def idle() -> None:
        start = time.monotonic_ns()
        await asyncio.sleep(rng.uniform(*idle_ms) / 1000)
        idles.append({"start_ns": start, "end_ns": time.monotonic_ns()})

    for _ in range(WARMUP_AWAITS):
        await idle()
    for kind in schedule:
        block = blocker.method(kind)
        start = time.monotonic_ns()
        block(duration_s)
        end = time.monotonic_ns()
        blocks.append({"kind": kind, "tid": tid, "start_ns": start, "end_ns": end})
        await idle()
    return {"blocks": blocks, "idles": idles}


async def _storm(
    blocker: Blocker, kinds: list[str], duration_s: float, rate: float, seconds: float
) -> dict[str, list[dict[str, Any]]]:
    """Start a block every 1/rate s, kinds in turn, for ``seconds``; idle in between."""
    blocks: list[dict[str, Any]] = []
    tid = threading.get_native_id()
    period_ns = round(1e9 / rate)
    first = time.monotonic_ns() + period_ns
    total = int(seconds * rate)
    for index in range(total):
        due = first + index * period_ns
        wait_ns = due - time.monotonic_ns()
        await asyncio.sleep(max(0.0, wait_ns / 1e9))
        kind = kinds[index % len(kinds)]
        block = blocker.method(kind)
        start = time.monotonic_ns()
        block(duration_s)
        blocks.append({"kind": kind, "tid": tid, "start_ns": start, "end_ns": time.monotonic_ns()})
    await asyncio.sleep(0.05)
    return {"blocks": blocks, "idles": []}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration-ms", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the app's timings")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--count", type=int, help="blocks of each kind, shuffled")
    parser.add_argument("--rate", type=float, help="blocks per second (storm)")
    parser.add_argument("--seconds", type=float, help="how long the storm lasts")
    parser.add_argument("--idle-ms", type=float, nargs=2, default=(20.0, 50.0))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.count is None) == (args.rate is None) or (args.rate and not args.seconds):
        parser.error("give either --count, or --rate and --seconds")
    return args


def main() -> None:
    """Run one schedule, then write the timings and the true call sites as JSON."""
    args = _parse_args()
    rng = random.Random(args.seed)
    sites = call_sites()
    blocker = Blocker()
    duration_s = args.duration_ms / 1000
    try:
        if args.count is not None:
            schedule = [kind for kind in args.kinds for _ in range(args.count)]
            rng.shuffle(schedule)
            idle_ms = (args.idle_ms[0], args.idle_ms[1])
            timings = asyncio.run(_inject(blocker, schedule, duration_s, idle_ms, rng))
        else:
            timings = asyncio.run(
                _storm(blocker, list(args.kinds), duration_s, args.rate, args.seconds)
            )
    finally:
        blocker.close()
    record = {
        "pid": os.getpid(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "duration_ms": args.duration_ms,
        "call_sites": sites,
        **timings,
    }
    args.out.write_text(json.dumps(record))


if __name__ == "__main__":
    main()
