#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Austin's MOJO stream read two ways: austin-python's MojoStreamReader and our MojoDecoder.

The stream is a recorded Austin 4 capture (tests/data/austin_two_loops.mojo:
two asyncio loops, 374 samples) made long: the capture once, then its samples
again and again, without the metadata and the string and frame definitions,
which a live Austin sends only once. Each run is a fresh process that reads
the stream from a pipe, as the sidecar reads Austin's stdout, at most
--chunk bytes a read (default 8,192: Python's default pipe buffer, which
austin.simple reads through, and about what the sidecar drains in one of its
100 ms reads at ~1,400 samples/s):

  ours           os.read(chunk) -> MojoDecoder.feed (otel_blocksnoop/stacks/mojo.py)
  austin-python  MojoStreamReader over the pipe, buffered by chunk, as austin.simple does

Per run: CPU time (process_time) per sample over the whole stream, and RSS
growth from the end of the first copy to the end of the stream. One more run
per reader under tracemalloc gives the growth of the Python heap over the
same span, which, unlike RSS, does not depend on the allocator. Both readers
must see the same samples (count and summed time deltas). The readers
alternate run by run; medians over --repeats runs.

The product would use austin-python's reader only if its heap stays flat and
it costs at most 20% more CPU per sample than ours (BENCHMARKS.md, "MOJO
stream readers").

USAGE: mojo_reader.py [--copies N] [--repeats N] [--chunk BYTES] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from austin.format.mojo import (
    AustinSample,
    MojoFrame,
    MojoMetadata,
    MojoStack,
    MojoStreamReader,
    MojoString,
)
from blocksnoop_bench.procs import REPO
from blocksnoop_bench.report import median, num, pct, spread, table

from otel_blocksnoop.cli import positive_int
from otel_blocksnoop.stacks.mojo import MojoDecoder

CAPTURE = REPO / "tests" / "data" / "austin_two_loops.mojo"
READERS = ("ours", "austin-python")
CPU_LIMIT_PCT = 20.0
"""Extra CPU per sample over ours that austin-python's reader may cost."""
FLAT_BYTES_PER_SAMPLE = 1.0
"""Heap growth per sample below which memory counts as flat (a kept sample is >100 bytes)."""
CHILD_TIMEOUT_S = 600.0
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
EPILOG = """examples:
  mojo_reader.py                  # 200 copies (74,800 samples), 5 runs per reader
  mojo_reader.py --quick          # 20 copies, 3 runs per reader (~15 s)
  mojo_reader.py --chunk 65536    # as if the pipe were drained a whole buffer at a time
"""


def long_stream(copies: int) -> tuple[bytes, int]:
    """The capture, then its samples ``copies - 1`` more times; and its samples per copy."""
    reader = MojoStreamReader(io.BytesIO(CAPTURE.read_bytes()))
    events = list(reader.parse())
    once = b"".join(event.raw for event in events)
    definitions = (MojoMetadata, MojoString, MojoFrame)
    again = b"".join(event.raw for event in events if not isinstance(event, definitions))
    per_copy = sum(isinstance(event, MojoStack) for event in events)
    return reader.header + once + again * (copies - 1), per_copy


# The child: one reader, one run.


@dataclass(slots=True)
class _Tally:
    """What a reader saw, and memory at the end of the first copy."""

    warm_after: int
    samples: int = 0
    time_us: int = 0
    warm: tuple[int, int] | None = None

    def add(self, delta_us: int) -> None:
        self.samples += 1
        self.time_us += delta_us
        if self.warm is None and self.samples >= self.warm_after:
            self.warm = _memory()


def _memory() -> tuple[int, int]:
    """(RSS, traced Python heap) in bytes; the heap is 0 unless tracemalloc runs."""
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_BYTES
    return rss, tracemalloc.get_traced_memory()[0]


def _read_ours(fd: int, chunk: int, tally: _Tally) -> None:
    decoder = MojoDecoder()
    while data := os.read(fd, chunk):
        for sample in decoder.feed(data):
            tally.add(sample.delta_us)
    for sample in decoder.flush():
        tally.add(sample.delta_us)


def _read_austin_python(fd: int, chunk: int, tally: _Tally) -> None:
    with open(fd, "rb", buffering=chunk, closefd=False) as pipe:
        for event in MojoStreamReader(pipe):
            if isinstance(event, AustinSample):
                tally.add(event.metrics.time or 0)


def child(reader: str, chunk: int, warm_after: int, trace: bool) -> dict[str, Any]:
    """Read stdin to its end with ``reader``; what it saw and what it cost."""
    read = _read_ours if reader == "ours" else _read_austin_python
    tally = _Tally(warm_after)
    if trace:
        tracemalloc.start()
    started = time.process_time()
    read(sys.stdin.fileno(), chunk, tally)
    cpu_s = time.process_time() - started
    end = _memory()
    warm = tally.warm or end
    return {
        "samples": tally.samples,
        "time_us": tally.time_us,
        "cpu_s": cpu_s,
        "rss_growth": end[0] - warm[0],
        "heap_growth": end[1] - warm[1],
        "rss_end": end[0],
    }


# The parent: the stream, the runs, the table.


def run(
    reader: str, stream: bytes, chunk: int, per_copy: int, *, trace: bool = False
) -> dict[str, Any]:
    """One fresh process of ``reader`` reading ``stream`` from a pipe."""
    argv = [sys.executable, __file__, "--child", reader, "--chunk", str(chunk)]
    argv += ["--warm-after", str(per_copy), *(["--tracemalloc"] if trace else [])]
    done = subprocess.run(
        argv, input=stream, capture_output=True, timeout=CHILD_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        msg = f"failed to read the stream with {reader}: {done.stderr.decode(errors='replace')}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(copies: int, repeats: int, chunk: int) -> dict[str, Any]:
    """Every run of both readers, alternating, then one traced run of each."""
    stream, per_copy = long_stream(copies)
    runs: dict[str, list[dict[str, Any]]] = {reader: [] for reader in READERS}
    for _ in range(repeats):
        for reader in READERS:
            runs[reader].append(run(reader, stream, chunk, per_copy))
            sys.stderr.write(".")
            sys.stderr.flush()
    traced = {reader: run(reader, stream, chunk, per_copy, trace=True) for reader in READERS}
    sys.stderr.write("\n")
    seen = {(r["samples"], r["time_us"]) for rs in [*runs.values(), traced.values()] for r in rs}
    if len(seen) != 1:
        msg = f"the readers disagree on the stream: (samples, summed time) {sorted(seen)}"
        raise RuntimeError(msg)
    return {
        "copies": copies,
        "chunk": chunk,
        "bytes": len(stream),
        "samples": runs["ours"][0]["samples"],
        "runs": runs,
        "traced": traced,
    }


def report(data: dict[str, Any]) -> str:
    samples = data["samples"]
    measured = samples - samples // data["copies"]  # memory: after the first copy
    us = {reader: [r["cpu_s"] * 1e6 / samples for r in data["runs"][reader]] for reader in READERS}
    rows = []
    for reader in READERS:
        rss = [r["rss_growth"] / MIB for r in data["runs"][reader]]
        heap = data["traced"][reader]["heap_growth"]
        per_sample_us = median(us[reader]) or 0.0
        rows.append(
            [
                reader,
                num(per_sample_us, 2),
                spread(us[reader], 2),
                num(per_sample_us / 10, 1),
                num(median(rss), 1),
                num(heap / MIB, 2),
                num(heap / measured, 1),
            ]
        )
    ours, theirs = median(us["ours"]) or 0.0, median(us["austin-python"]) or 0.0
    extra_pct = (theirs / ours - 1) * 100 if ours else None
    heap_per_sample = data["traced"]["austin-python"]["heap_growth"] / measured
    flat = heap_per_sample < FLAT_BYTES_PER_SAMPLE
    cheap = extra_pct is not None and extra_pct <= CPU_LIMIT_PCT
    verdict = (
        "austin-python's reader qualifies"
        if flat and cheap
        else "austin-python's reader does not qualify; the product keeps its own decoder"
    )
    repeats = len(data["runs"]["ours"])
    return (
        f"austin-python {metadata.version('austin-python')}, Python {platform.python_version()}. "
        f"{samples:,} samples ({data['copies']} copies of the capture, "
        f"{data['bytes'] / MIB:.1f} MiB), read {data['chunk']:,} bytes at a time from a "
        f"pipe; {repeats} runs per reader, alternating, medians; memory from the end of "
        f"the first copy to the end ({measured:,} samples).\n\n"
        + table(
            [
                "reader",
                "CPU per sample (us)",
                "range (us)",
                "% of a core at 1,000 samples/s",
                "RSS growth (MiB)",
                "heap growth (MiB, tracemalloc)",
                "heap bytes per sample",
            ],
            rows,
            [False, *[True] * 6],
        )
        + f"\naustin-python's reader costs {pct(extra_pct, 0, sign=True)} CPU per sample "
        f"(limit {pct(CPU_LIMIT_PCT, 0, sign=True)}); its heap "
        f"{'stays flat' if flat else f'grows by {heap_per_sample:,.0f} bytes per sample'}: "
        f"{verdict}.\n"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/mojo_reader.py",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--copies", type=positive_int, default=200, help="default 200")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs per reader")
    parser.add_argument("--chunk", type=positive_int, default=8192, help="bytes per read")
    parser.add_argument("--quick", action="store_true", help="20 copies, 3 runs per reader")
    parser.add_argument("--child", choices=READERS, help=argparse.SUPPRESS)
    parser.add_argument("--warm-after", type=positive_int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.child, args.chunk, args.warm_after, args.tracemalloc)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    copies, repeats = (20, 3) if args.quick else (args.copies, args.repeats)
    print(report(measure(copies, repeats, args.chunk)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
