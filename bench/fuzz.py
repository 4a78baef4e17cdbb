#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Every parser of outside input fuzzed for minutes: the unit tests' properties, run long.

The properties are those of harness/fuzz/ (each module's ``TARGETS``),
which the unit tests (tests/unit/test_fuzz_*.py) also run: the MOJO stream
and Austin's -w dump, the target's memory as the context reader walks it,
its interpreter's ELF file, the /proc files, the kernel's records and the
OTEL_* environment.
The unit tests run each on a fixed, small budget with the same examples every
time; here each runs with new random examples (Hypothesis, no deadline, no
example database) in rounds of --round examples until --seconds have passed.
A round that finds a failure shrinks it, prints the smallest input and its
error, and the parser's next round starts afresh; failures are counted once
per distinct error (type and where it was raised).

Per parser it prints the examples run (every call of the property,
shrinking included), the distinct failures found, and at the end the peak RSS
of the process (the properties also assert their own memory bounds).

USAGE: fuzz.py [--seconds S] [--round N] [--only TEXT[,TEXT...]]
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings

from harness.fuzz import Target, austin_where, context_reader, elf, kernel, mojo, otel_env, proc

MODULES = (mojo, austin_where, context_reader, elf, proc, kernel, otel_env)


def targets() -> list[tuple[str, Target]]:
    """(name, Target) of every fuzz module, in module order."""
    return [item for module in MODULES for item in module.TARGETS.items()]


def failure_key(error: BaseException) -> str:
    """Type and innermost place of an error: the same bug found twice is one failure."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(error).__name__} at {where}"


def fuzz(target: Target, seconds: float, round_size: int) -> tuple[int, dict[str, str]]:
    """Examples run and distinct failures (key -> the smallest failing input) within ``seconds``."""
    calls = 0

    def counted(check: Callable[[Any], None]) -> Callable[[Any], None]:
        def run(value: object) -> None:
            nonlocal calls
            calls += 1
            check(value)

        return run

    test = given(target.strategy)(
        settings(
            max_examples=round_size,
            deadline=None,
            database=None,
            derandomize=False,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )(counted(target.check))
    )
    failures: dict[str, str] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            test()
        except Exception as error:  # noqa: BLE001 - a failure found is the result, not a crash
            key = failure_key(error)
            notes = "\n".join(getattr(error, "__notes__", []))
            failures.setdefault(key, f"{error!r}\n{notes}")
    return calls, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="per parser (180)")
    parser.add_argument("--round", type=int, default=2000, help="examples per round (2000)")
    parser.add_argument(
        "--only", default="", help="parsers whose name holds one of these texts (comma-separated)"
    )
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the SDK warns about every bad value it is fed
    wanted = [text.strip() for text in args.only.lower().split(",")]
    chosen = [(name, t) for name, t in targets() if any(text in name.lower() for text in wanted)]
    print(f"{len(chosen)} parsers, {args.seconds:g} s each, rounds of {args.round} examples")
    print(f"{'parser':<34} {'seconds':>8} {'examples':>10} {'failures':>9}")
    total_failures = 0
    details: list[str] = []
    for name, target in chosen:
        started = time.monotonic()
        calls, failures = fuzz(target, args.seconds, args.round)
        elapsed = time.monotonic() - started
        total_failures += len(failures)
        print(f"{name:<34} {elapsed:>8.0f} {calls:>10,} {len(failures):>9}", flush=True)
        details.extend(f"--- {name}: {key}\n{text}" for key, text in failures.items())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the fuzzing process: {peak_mib:.0f} MiB")
    for detail in details:
        print(detail)
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
