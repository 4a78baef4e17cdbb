"""Target app for integration tests: an asyncio loop that blocks in known ways.

Usage: blocker.py SCENARIO [--ready FIFO] [--go] [--uvloop] [--ms N] [--out FILE] [--after S]

Each block is timed by the app itself and written as a JSON line (stdout, or --out)
{"scenario", "tid", "start_ns", "end_ns"} (CLOCK_MONOTONIC), plus the same two
times on the app's wall clock ("start_unix_ns", "end_unix_ns"), so the test can
compare the sidecar's report with the truth. With --ready, "ready <tid>" is
written to the FIFO once the loop runs; with --go, the blocks start only
after a line arrives on stdin (read off the loop, so it keeps iterating).
"""

from __future__ import annotations

import _thread
import argparse
import asyncio
import ctypes
import errno
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from truth import emit, timed

BLOCK_S = 0.12
SYS_FUTEX = 202
"""x86_64's futex syscall: the lock of the ``contended`` scenario is a bare futex word."""
FUTEX_WAIT, FUTEX_WAKE = 0, 1


OUT = sys.stdout


def record(scenario: str, start_ns: int) -> None:
    """Note a block's end now; write it in the loop's next iteration, outside the block.

    Written at once, the line's JSON and write() would stretch the very iteration
    it times (by over a millisecond on a busy machine)."""
    line = timed(scenario, start_ns, time.monotonic_ns())
    try:
        asyncio.get_running_loop().call_soon(emit, OUT, line)
    except RuntimeError:  # no loop in this thread
        emit(OUT, line)


def busy(seconds: float) -> None:
    """Spin for ``seconds`` of this thread's CPU time: on a busy machine the
    block lasts longer, but the app's own work stays what it says."""
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass


def _seconds_per_round() -> float:
    """Timed once at start, outside any block, so a block is one call only.

    CPU time of this thread, best of three: timed on the wall clock on a busy
    machine, a round looked slower than it is and the block came out short."""
    rounds = 20_000
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", rounds)
        best = min(best, (time.thread_time() - start) / rounds)
    return best


PER_ROUND = _seconds_per_round()


def pbkdf2(seconds: float) -> None:
    hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", max(1, int(seconds / PER_ROUND)))


def start_thread(run: Callable[[], None]) -> None:
    """Start a thread without waiting for it to start.

    ``threading.Thread.start`` waits in an ``Event``, which a free-threaded
    build's lock spins for in sched_yield: on a busy machine that wait could
    outlast the very call a scenario blocks in, and be its call site."""
    _thread.start_new_thread(run, ())


def read_pipe(seconds: float) -> None:
    """Read a pipe another thread writes to after ``seconds``."""
    read_end, write_end = os.pipe()

    def write_later() -> None:
        time.sleep(seconds)
        os.write(write_end, b"x")

    start_thread(write_later)
    os.read(read_end, 1)
    os.close(read_end)
    os.close(write_end)


def wait_subprocess(seconds: float) -> None:
    subprocess.run(["sleep", str(seconds)], check=True)


def held_lock(seconds: float) -> None:
    """Take a lock another thread holds while it sleeps ``seconds``.

    Taken here first and released by that thread (a ``threading.Lock`` may be)."""
    lock = threading.Lock()
    lock.acquire()

    def release_later() -> None:
        time.sleep(seconds)
        lock.release()

    start_thread(release_later)
    lock.acquire()
    lock.release()


def contended_lock(seconds: float) -> None:
    """Wait, again and again, for a lock a busy thread holds 1 ms (of its CPU) at a time.

    Many short futex waits while another thread runs Python: what a GIL wait
    looks like to the kernel, here a lock's (on a free-threaded build, no GIL).
    The lock is a bare futex word handed back and forth, as a C extension's
    own lock may be: a free-threaded build's ``threading.Lock`` (and any
    object's critical section) spins in sched_yield before it sleeps, so on a
    busy machine its waits would be yields, not futex waits. The holder sleeps
    on a second word until the lock is handed back, as a thread waiting for
    the GIL does: a thread that never leaves its CPU has its time booked only
    when it does, so a spinning holder looks to the kernel like no sibling ran.
    """
    futex = ctypes.CDLL(None, use_errno=True).syscall
    futex.restype = ctypes.c_long
    futex.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                      ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]  # fmt: skip
    held = ctypes.c_int(1)  # 1: the holder's, 0: the loop's turn
    back = ctypes.c_int(0)  # 1: the loop has handed the lock back
    held_at, back_at = ctypes.addressof(held), ctypes.addressof(back)
    poll = (ctypes.c_long * 2)(0, 10_000_000)  # a timespec: 10 ms, to see the stop
    stop = [False]

    def holder() -> None:
        while not stop[0]:
            until = time.thread_time() + 0.001
            while time.thread_time() < until:
                pass
            back.value = 0
            held.value = 0
            futex(SYS_FUTEX, held_at, FUTEX_WAKE, 1, None, None, 0)
            while not stop[0]:  # asleep until handed back (EAGAIN: back is no longer 0)
                slept = futex(SYS_FUTEX, back_at, FUTEX_WAIT, 0, poll, None, 0)
                if slept == -1 and ctypes.get_errno() == errno.EAGAIN:
                    break

    start_thread(holder)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while held.value:
            futex(SYS_FUTEX, held_at, FUTEX_WAIT, 1, None, None, 0)
        held.value = 1
        back.value = 1
        futex(SYS_FUTEX, back_at, FUTEX_WAKE, 1, None, None, 0)
    stop[0] = True


def gil_contention(seconds: float) -> None:
    """Another thread runs pure Python while the loop makes calls that release the GIL."""
    stop = threading.Event()
    spinning = threading.Event()

    def hog() -> None:
        spinning.set()
        while not stop.is_set():
            for _ in range(1000):
                pass

    thread = threading.Thread(target=hog)
    thread.start()
    spinning.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        os.stat("/")  # noqa: PTH116 - a plain syscall that releases the GIL
    stop.set()
    thread.join()


def deadlock(seconds: float) -> None:
    """Take a lock the loop already holds: stuck until the timeout (a hang, for tests)."""
    lock = threading.Lock()
    lock.acquire()
    lock.acquire(timeout=seconds)


BLOCKERS: dict[str, Callable[[float], None]] = {
    "sleep": time.sleep,
    "cpu": busy,
    "hashlib": pbkdf2,
    "read": read_pipe,
    "subprocess": wait_subprocess,
    "lock": held_lock,
    "gil": gil_contention,
    "contended": contended_lock,
}


UNEVEN = (("cpu", 4), ("hashlib", 1), ("sleep", 2), ("read", 1))
"""The "uneven" scenario: one function (``busy``) blocks the loop far longer than the others."""
ALONE = ("contended",)
"""Ways of blocking run only when named, not in "all"."""
ALL = tuple(name for name in BLOCKERS if name not in ALONE)


async def block_once(scenario: str, seconds: float) -> None:
    await asyncio.sleep(0.05)
    start = time.monotonic_ns()
    BLOCKERS[scenario](seconds)
    record(scenario, start)
    await asyncio.sleep(0.05)


async def idle() -> None:
    for _ in range(3):
        await asyncio.sleep(0.3)


async def scenario_main(args: argparse.Namespace) -> None:
    seconds = args.ms / 1000
    if args.scenario == "early":
        # Before any await: the block falls in the first milliseconds of the process.
        start = time.monotonic_ns()
        time.sleep(seconds)
        record("early", start)
        return
    if args.scenario == "idle":
        await idle()
        return
    if args.scenario == "deadlock":
        await asyncio.sleep(0.05)
        start = time.monotonic_ns()
        deadlock(seconds)
        record("deadlock", start)
        await asyncio.sleep(args.linger)
        return
    if args.scenario == "native":
        # A native thread (no Python thread state) that calls epoll and then
        # works 150 ms between calls: a poller, not an event loop.
        import ctypes  # noqa: PLC0415

        poller = ctypes.CDLL(os.environ["NATIVE_POLLER"])
        poller.start_poller(150, 4)
        await block_once("sleep", seconds)
        await asyncio.sleep(0.8)
        return
    if args.scenario == "all":
        for name in ALL:
            await block_once(name, seconds)
    elif args.scenario == "uneven":
        for name, times in UNEVEN:
            for _ in range(times):
                await block_once(name, seconds)
    else:
        await block_once(args.scenario, seconds)
    await asyncio.sleep(args.linger)


def run_loop(coro_factory: Callable[[], object], use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop  # noqa: PLC0415 - only some scenarios need it

        uvloop.run(coro_factory())  # type: ignore[arg-type]
    else:
        asyncio.run(coro_factory())  # type: ignore[arg-type]


async def gate(args: argparse.Namespace, loop_tids: list[int] | None = None) -> None:
    """Say "ready <main tid> <loop thread tids...>" on the FIFO, then wait for "go"."""
    if args.ready:
        tids = [threading.get_native_id(), *(loop_tids or [])]
        with open(args.ready, "w") as fifo:  # noqa: ASYNC230, PTH123 - a FIFO opens at once here
            fifo.write(f"ready {' '.join(map(str, tids))}\n")
    if args.go:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "scenario",
        choices=[
            *BLOCKERS,
            "all",
            "uneven",
            "idle",
            "early",
            "thread",
            "two-threads",
            "native",
            "deadlock",
        ],
    )
    parser.add_argument("--ready")
    parser.add_argument("--go", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--ms", type=float, default=BLOCK_S * 1000)
    parser.add_argument("--linger", type=float, default=0.0, help="idle this long after")
    parser.add_argument("--delay", type=float, default=0.0, help="idle this long before")
    parser.add_argument("--out", help="write the block records here instead of stdout")
    parser.add_argument(
        "--after", type=float, default=0.0, help="after the loop ends, work this long without one"
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="after that work, run the scenario once more in a new loop (asyncio.run again)",
    )
    parser.add_argument(
        "--close-ms",
        type=float,
        default=0.0,
        help="closing the loop (after asyncio.run's last iteration) takes this long, on CPU",
    )
    return parser.parse_args()


def run_loop_threads(args: argparse.Namespace) -> None:
    """Loops in threads of their own, blocking one after the other."""
    count = 1 if args.scenario == "thread" else 2
    started = threading.Barrier(count + 1)
    go = threading.Event()
    tids: list[int] = []

    def loop_thread(index: int) -> None:
        async def body() -> None:
            tids.append(threading.get_native_id())
            started.wait()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            await asyncio.sleep(0.05 + 0.2 * index)
            start = time.monotonic_ns()
            time.sleep(args.ms / 1000)
            record(f"thread-{index}", start)
            await asyncio.sleep(0.05)

        run_loop(body, args.uvloop)

    async def main_loop() -> None:
        threads = [
            threading.Thread(target=loop_thread, args=(i,), name=f"loop-{i}") for i in range(count)
        ]
        for thread in threads:
            thread.start()
        started.wait()
        await gate(args, tids)
        go.set()
        while any(thread.is_alive() for thread in threads):
            await asyncio.sleep(0.02)

    run_loop(main_loop, use_uvloop=False)


def slow_closing(close_s: float) -> None:
    """Loops whose ``close`` spins first: asyncio.run's way out, stretched."""

    class SlowClosingLoop(asyncio.SelectorEventLoop):
        def close(self) -> None:
            if not self.is_closed():
                busy(close_s)
            super().close()

    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return SlowClosingLoop()

    asyncio.set_event_loop_policy(Policy())


def main() -> None:
    args = parse_args()
    if args.close_ms:
        slow_closing(args.close_ms / 1000)
    if args.out:
        global OUT  # noqa: PLW0603 - set once, before any block
        OUT = Path(args.out).open("a")  # noqa: SIM115 - lives as long as the process

    if args.scenario in ("thread", "two-threads"):
        run_loop_threads(args)
        return

    async def body() -> None:
        if args.scenario != "early":
            await gate(args)
        await asyncio.sleep(args.delay)
        await scenario_main(args)

    run_loop(body, args.uvloop)
    if args.after:
        # The thread left its loop (for good, or until --again): out of epoll, not a block.
        time.sleep(args.after)
    if args.again:
        run_loop(body, args.uvloop)


if __name__ == "__main__":
    main()
