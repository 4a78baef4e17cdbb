"""Target app: handlers that make several different blocking calls in one callback.

Usage: calls.py [--out FILE] [--delay S] [--ms MS,MS,...] [--rounds N] [--uvloop]

Each handler runs in one loop iteration and calls, one after the other, some
of: time.sleep, a pure-Python CPU loop, hashlib.pbkdf2_hmac, a socket read
(the peer sends after a while) and a lock another thread holds. The handlers
make 2, 3 and 5 calls (``HANDLERS``). Each is timed by the app itself and
written as a JSON line (stdout, or --out), in the next iteration: the
whole callback as ``timed`` (scenario "calls-N") plus ``calls``, each call's
``name``, the ``function`` that makes it (the call site the sidecar must
name) and its ``start_ns``/``end_ns`` (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from blocker import busy, held_lock, pbkdf2
from truth import emit, timed


def nap(seconds: float) -> None:
    time.sleep(seconds)


def read_socket(seconds: float) -> None:
    """Wait in recv for a peer that sends after ``seconds``."""
    ours, peer = socket.socketpair()
    timer = threading.Timer(seconds, peer.send, (b"x",))
    timer.start()
    ours.recv(1)
    timer.join()
    ours.close()
    peer.close()


CALLS: dict[str, Callable[[float], None]] = {
    "sleep": nap,
    "cpu": busy,
    "hashlib": pbkdf2,
    "socket": read_socket,
    "lock": held_lock,
}

# Each handler's calls and their lengths in ms: no two sleeps alike, so that the
# kernel's books (time asleep per syscall) tell which call slept in which.
HANDLERS: dict[str, tuple[tuple[str, float], ...]] = {
    "calls-2": (("sleep", 30), ("cpu", 25)),
    "calls-3": (("hashlib", 25), ("socket", 20), ("sleep", 14)),
    "calls-5": (("sleep", 12), ("cpu", 20), ("hashlib", 28), ("socket", 18), ("lock", 24)),
}


ROUND_PAUSE_S = 0.5
"""Between rounds: blocks of a round come 80 ms apart, rounds do not run into each other."""


def handler(out: TextIO, scenario: str, scale: float) -> None:
    """One callback making each of its calls in turn; the truth is written in the next."""
    calls: list[dict[str, Any]] = []
    start = time.monotonic_ns()
    for name, ms in HANDLERS[scenario]:
        blocker = CALLS[name]
        began = time.monotonic_ns()
        blocker(ms * scale / 1000)
        ended = time.monotonic_ns()
        calls.append(
            {"name": name, "function": blocker.__name__, "start_ns": began, "end_ns": ended}
        )
    line = {**timed(scenario, start, time.monotonic_ns()), "calls": calls}
    asyncio.get_running_loop().call_soon(emit, out, line)


async def main_async(out: TextIO, delay: float, scale: float, rounds: int) -> None:
    await asyncio.sleep(delay)
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        for scenario in HANDLERS:
            loop.call_soon(handler, out, scenario, scale)
            await asyncio.sleep(0.08)
        await asyncio.sleep(ROUND_PAUSE_S)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", help="write the truth here instead of stdout")
    parser.add_argument("--delay", type=float, default=0.0, help="idle this long before")
    parser.add_argument("--scale", type=float, default=1.0, help="calls this many times longer")
    parser.add_argument("--rounds", type=int, default=1, help="run the handlers this many times")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    out = Path(args.out).open("a") if args.out else sys.stdout  # noqa: SIM115 - lives with the process
    coro = main_async(out, args.delay, args.scale, args.rounds)
    if args.uvloop:
        import uvloop  # noqa: PLC0415 - only some runs need it

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
