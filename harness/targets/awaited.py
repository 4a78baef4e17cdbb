"""Target app for the awaited-by chain: a task blocks the loop while named tasks await it.

Usage: awaited.py (--ready FIFO | --block-s SECONDS) --shape SHAPE [--uvloop]

The loop's main task is named "root". Shapes (who awaits the task named
"blocked", which blocks the loop in ``threading.Event.wait``):

- await: "request-1" awaits it (``await task``), "root" awaits "request-1";
- gather: "request-2" gathers it with "sibling", "root" awaits "request-2";
- taskgroup: "request-3" runs it and "sibling" in a TaskGroup, "root" awaits
  "request-3";
- shared: twelve tasks "waiter-00".."waiter-11" await it, gathered by
  "root"; a thirteenth, "quitter", awaited it (shielded) and was cancelled,
  so the set of its awaiters has a removed entry;
- chain: "root" awaits "hop-1", which awaits "hop-2", ... "hop-9", which
  awaits it.

With --ready, when it blocks, one JSON line goes to the FIFO: {"pid", "tid",
"python"}, and a line on stdin ends the block, and the app. With --block-s,
the block is a ``time.sleep`` of that long, and then the app ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable

STOP = threading.Event()
WAITERS = 12
HOPS = 9


HOW: list[str | float] = []
"""How to block: the FIFO to say so to, or how long to block for (set once, by main)."""


def block() -> None:
    """Block the loop here: until told on stdin, once the FIFO says where, or for so long."""
    how = HOW[0]
    if isinstance(how, float):
        time.sleep(how)
        os._exit(0)
    ready = {"pid": os.getpid(), "tid": threading.get_native_id(), "python": sys.version.split()[0]}
    with open(how, "w") as out:  # noqa: PTH123
        out.write(json.dumps(ready) + "\n")
    STOP.wait()
    os._exit(0)  # siblings idle for good: nothing else to wait for


async def idle() -> None:
    await asyncio.Event().wait()


async def blocked() -> None:
    block()


async def awaited() -> None:
    async def request() -> None:
        await asyncio.create_task(blocked(), name="blocked")

    await asyncio.create_task(request(), name="request-1")


async def gathered() -> None:
    async def request() -> None:
        sibling = asyncio.create_task(idle(), name="sibling")
        await asyncio.gather(asyncio.create_task(blocked(), name="blocked"), sibling)

    await asyncio.create_task(request(), name="request-2")


async def task_group() -> None:
    async def request() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(idle(), name="sibling")
            group.create_task(blocked(), name="blocked")

    await asyncio.create_task(request(), name="request-3")


async def shared() -> None:
    go = asyncio.Event()

    async def once_told() -> None:
        await go.wait()
        block()

    target = asyncio.create_task(once_told(), name="blocked")

    async def waiter() -> None:
        await target

    async def quits() -> None:
        await asyncio.shield(target)  # cancelled, it stops awaiting the target, which goes on

    waiters = [asyncio.create_task(waiter(), name=f"waiter-{i:02}") for i in range(WAITERS)]
    quitter = asyncio.create_task(quits(), name="quitter")
    await asyncio.sleep(0)  # each waiter now awaits the target
    quitter.cancel()
    await asyncio.gather(quitter, return_exceptions=True)
    go.set()
    await asyncio.gather(*waiters)


async def hop(n: int) -> None:
    if n > HOPS:
        await asyncio.create_task(blocked(), name="blocked")
    else:
        await asyncio.create_task(hop(n + 1), name=f"hop-{n}")


async def chain() -> None:
    await hop(1)


SHAPES: dict[str, Callable[[], Awaitable[None]]] = {
    "await": awaited,
    "gather": gathered,
    "taskgroup": task_group,
    "shared": shared,
    "chain": chain,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--ready")
    how.add_argument("--block-s", type=float)
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()

    def stop_on_stdin() -> None:
        sys.stdin.readline()
        STOP.set()

    threading.Thread(target=stop_on_stdin, daemon=True).start()
    HOW.append(args.ready if args.block_s is None else args.block_s)
    scenario = SHAPES[args.shape]

    async def root() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.set_name("root")
        await scenario()

    if args.uvloop:
        import uvloop  # noqa: PLC0415

        uvloop.run(root())
    else:
        asyncio.run(root())


if __name__ == "__main__":
    main()
