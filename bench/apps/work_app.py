# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Busy target: asyncio tasks doing small JSON work, ``await asyncio.sleep(0)`` between steps.

TASKS tasks each encode and decode a small JSON document (tens of
microseconds) per step, then yield to the loop, so the loop runs a real
iteration per few steps: a service under steady load rather than the empty
``sleep(0)`` loop of spin_app.py. About every REPORT_MS it prints
``MONOTONIC_NS STEPS PROCESS_CPU_NS``; the runner turns any window of those
lines into steps per wall second and per CPU second of the app.
SIGTERM/SIGINT stop it.

USAGE: work_app.py [--tasks N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

TASKS = 20
REPORT_MS = 100
DOCUMENT = {
    "id": 12345,
    "user": {"name": "ada", "roles": ["admin", "dev"], "active": True},
    "items": [{"sku": f"sku-{i}", "qty": i, "price": i * 1.25} for i in range(8)],
    "tags": ["a", "b", "c"],
}


async def _work(counter: list[int], running: list[bool]) -> None:
    while running[0]:
        json.loads(json.dumps(DOCUMENT))
        counter[0] += 1
        await asyncio.sleep(0)


async def _report(counter: list[int], running: list[bool]) -> None:
    while running[0]:
        sys.stdout.write(f"{time.monotonic_ns()} {counter[0]} {time.process_time_ns()}\n")
        sys.stdout.flush()
        await asyncio.sleep(REPORT_MS / 1000)


async def _main(tasks: int) -> None:
    loop = asyncio.get_running_loop()
    running = [True]

    def stop() -> None:
        running[0] = False

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    counter = [0]
    await asyncio.gather(
        _report(counter, running), *(_work(counter, running) for _ in range(tasks))
    )


def main() -> None:
    """Run until signalled; the runner decides the windows, not the app."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=TASKS)
    asyncio.run(_main(parser.parse_args().tasks))


if __name__ == "__main__":
    main()
