#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""What ``pytest --blocksnoop=MS`` adds to each test that does not block.

A generated suite of ``--tests`` trivial pytest-asyncio tests (one
``await asyncio.sleep(0)``) and as many trivial sync tests runs alternately
without and with ``--blocksnoop``, ``--rounds`` times each. A conftest times
each test's whole protocol (setup, call, teardown) with ``perf_counter_ns``
from the outermost hook; the table gives each round's median per kind, and the
difference of the medians over the rounds: the per-test overhead (three
answers of the sidecar per test, one per phase).

USAGE: pytest_plugin_cost.py [--tests N] [--rounds R] [--threshold MS]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SUITE = """
import asyncio

import pytest


@pytest.mark.asyncio
@pytest.mark.parametrize("n", range({tests}))
async def test_async(n: int) -> None:
    await asyncio.sleep(0)


@pytest.mark.parametrize("n", range({tests}))
def test_plain(n: int) -> None:
    assert n >= 0
"""

CONFTEST = """
import os
import time

import pytest

TIMES = []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.perf_counter_ns()
    try:
        return (yield)
    finally:
        TIMES.append((item.originalname, time.perf_counter_ns() - start))


def pytest_unconfigure(config):
    with open(os.environ["COST_OUT"], "w") as out:
        out.writelines(f"{name} {ns}\\n" for name, ns in TIMES)
"""

KINDS = ("test_async", "test_plain")


def one_run(directory: Path, extra: list[str]) -> dict[str, float]:
    """Median ms per test of each kind, in one pytest run."""
    out = directory / "times.txt"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "asyncio", *extra],
        cwd=directory,
        env={**os.environ, "COST_OUT": str(out)},
        check=True,
        capture_output=True,
    )
    per: dict[str, list[float]] = {}
    for line in out.read_text().splitlines():
        name, ns = line.split()
        per.setdefault(name, []).append(int(ns) / 1e6)
    return {kind: statistics.median(values) for kind, values in per.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=100.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plugin-cost-") as tmp:
        directory = Path(tmp)
        (directory / "test_many.py").write_text(SUITE.format(tests=args.tests))
        (directory / "conftest.py").write_text(CONFTEST)
        (directory / "pytest.ini").write_text(
            "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        )
        off: list[dict[str, float]] = []
        on: list[dict[str, float]] = []
        for _ in range(args.rounds):
            off.append(one_run(directory, []))
            on.append(one_run(directory, [f"--blocksnoop={args.threshold:g}"]))
    print(f"{'kind':<11} {'without (ms, per round)':<32} {'with':<32} overhead (ms)")
    for kind in KINDS:
        without = [round(r[kind], 3) for r in off]
        with_ = [round(r[kind], 3) for r in on]
        added = statistics.median(with_) - statistics.median(without)
        print(f"{kind:<11} {without!s:<32} {with_!s:<32} {added:+.3f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
