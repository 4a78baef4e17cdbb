"""A small asyncio service that blocks its own event loop in a few common ways.

Run it under the sidecar with ``make demo``; each block below is reported.
"""

import asyncio
import hashlib
import os
import threading
import time


def slow_hash() -> bytes:
    return hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 200_000)


def busy_loop(seconds: float) -> int:
    # Seconds of this thread's CPU: the same work on a quiet or a busy machine.
    deadline = time.thread_time() + seconds
    n = 0
    while time.thread_time() < deadline:
        n += 1
    return n


def gil_hog(stop: threading.Event) -> None:
    """A worker thread that keeps the GIL busy with pure Python."""
    while not stop.is_set():
        sum(range(1000))


def stat_many(seconds: float) -> None:
    """Small syscalls on the loop; each gives the GIL away and must win it back."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        os.stat("/")  # noqa: PTH116 - the syscall is the point


def fetch_config(lock: threading.Lock) -> None:
    with lock:  # held by a thread that is itself waiting
        pass


async def heartbeat() -> None:
    while True:
        await asyncio.sleep(0.01)


async def handler(round_no: int) -> None:
    print(f"demo app: round {round_no}: time.sleep(0.15) on the loop", flush=True)
    time.sleep(0.15)
    await asyncio.sleep(0.2)
    print(f"demo app: round {round_no}: pbkdf2_hmac on the loop", flush=True)
    slow_hash()
    await asyncio.sleep(0.2)
    print(f"demo app: round {round_no}: pure-Python busy loop for 60 ms", flush=True)
    busy_loop(0.06)
    await asyncio.sleep(0.2)


async def contention() -> None:
    print("demo app: a worker thread hogs the GIL while the loop makes syscalls", flush=True)
    stop = threading.Event()
    worker = threading.Thread(target=gil_hog, args=(stop,), name="gil-hog")
    worker.start()
    stat_many(0.1)
    stop.set()
    worker.join()
    await asyncio.sleep(0.2)
    print("demo app: the loop waits 1.3 s for a lock another thread holds", flush=True)
    lock = threading.Lock()
    lock.acquire()
    threading.Timer(1.3, lock.release).start()
    fetch_config(lock)
    await asyncio.sleep(0.2)


def side_loop() -> None:
    async def side() -> None:
        await asyncio.sleep(0.1)
        print("demo app: side thread's loop: time.sleep(0.08)", flush=True)
        time.sleep(0.08)

    asyncio.run(side())


async def main() -> None:
    beat = asyncio.create_task(heartbeat())
    thread = threading.Thread(target=side_loop, name="side-loop")
    thread.start()
    for round_no in (1, 2):
        await handler(round_no)
    await contention()
    await asyncio.sleep(0.5)  # idle awaits are not blocks
    thread.join()
    beat.cancel()


if __name__ == "__main__":
    asyncio.run(main())
