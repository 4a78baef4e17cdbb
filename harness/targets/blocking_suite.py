"""A small test suite for the pytest plugin's tests: three tests block the loop, two do not.

Copied as ``test_blocking.py`` and run by a real pytest with ``--blocksnoop``
(tests/integration/test_gate.py). Each blocking test first awaits, so its
loop runs before it blocks, and blocks for well over 100 ms on an idle machine:
- ``time.sleep`` in a coroutine (pytest-asyncio),
- a C extension call that holds the GIL (``hashlib.pbkdf2_hmac``), under
  plain ``asyncio.run`` in a sync test,
- a slow pure-Python loop (pytest-asyncio).
The line of each blocking call is marked ``# blocks: NAME`` for the test to find.
Of the two that do not block a loop, one sleeps with no loop running (its
thread is out of epoll from the last test's loop to the next one's: that is
no block), the other only awaits, right after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest


@pytest.mark.asyncio
async def test_sleeps_in_a_coroutine() -> None:
    await asyncio.sleep(0.01)
    time.sleep(0.3)  # blocks: sleep


def test_hashes_in_a_c_extension() -> None:
    async def derive_key() -> bytes:
        await asyncio.sleep(0.01)
        return hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 600_000)  # blocks: pbkdf2

    assert len(asyncio.run(derive_key())) == 32


@pytest.mark.asyncio
async def test_counts_in_pure_python() -> None:
    await asyncio.sleep(0.01)
    total = 0
    for number in range(3_000_000):  # blocks: loop
        total += number * number % 7  # blocks: loop
    assert total > 0


def test_sleeps_with_no_loop_running() -> None:
    time.sleep(0.3)  # no event loop runs: nothing is blocked


@pytest.mark.asyncio
async def test_awaits_without_blocking() -> None:
    for _ in range(10):
        await asyncio.sleep(0.02)
