"""Target app for on-demand stack tests: its loop stays blocked for as long as the test says.

Usage: held.py --ready FIFO

Says "ready <tid>" on the FIFO once the loop runs. Each "hold" line on stdin
makes the loop say "holding <tid> <now_ns>" on the FIFO, then spin in
``hold_the_loop`` (pure Python); a "release" line ends that block, and the app
says "released <start_ns> <end_ns>" (CLOCK_MONOTONIC; the block proper starts
after "holding" was written). End of stdin ends the app.
The test thus knows the block is going on while it acts, without sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import threading
import time
from typing import IO


def read_line() -> str:
    """One line of stdin, read unbuffered: the held loop reads the same fd."""
    data = b""
    while not data.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            break
        data += byte
    return data.decode().strip()


def hold_the_loop() -> None:
    """Spin until "release" arrives on stdin."""
    while True:
        ready, _, _ = select.select([0], [], [], 0)
        if ready and read_line() == "release":
            return


def say(fifo: IO[str], text: str) -> None:
    fifo.write(text + "\n")
    fifo.flush()


async def main(ready: str) -> None:
    loop = asyncio.get_running_loop()
    tid = threading.get_native_id()
    with open(ready, "w") as fifo:  # noqa: ASYNC230, PTH123 - a FIFO opens at once here
        say(fifo, f"ready {tid}")
        while await loop.run_in_executor(None, read_line) == "hold":
            await asyncio.sleep(0.01)
            say(fifo, f"holding {tid} {time.monotonic_ns()}")
            start = time.monotonic_ns()  # the block proper: after saying so
            hold_the_loop()
            end = time.monotonic_ns()
            say(fifo, f"released {start} {end}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready", required=True)
    asyncio.run(main(parser.parse_args().ready))
