#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Our frame reader (process/frames) against Austin on the same blocks, and its cost.

Subcommands (each prints a markdown table; raw data goes to bench/results/):

blocks  apps/announced_app.py blocks its loop --count times in each of 7 ways
        (kinds_app.py), --duration-ms each. A quarter into each block (after
        its announcement), the loop thread's stack is read by our reader,
        dumped by ``austin -w``, and read by us again; the block counts when
        all three came before its end. Per kind: how often our call site
        (analysis.attribution.call_site) and Austin's are the true one
        (kinds_app's marked line: function, file, line), and how often ours
        and Austin's are the same frame.
cost    One stack read of a sleeping thread 17 frames deep (the prototype's
        figure in BENCHMARKS.md, "Stacks on demand"): --reads reads, warm
        (code objects decoded) and cold (a new reader each time, its
        set-up timed apart), in microseconds, with the remote reads per stack.

The target runs on pyenv's CPython 3.13 unless --python names another
interpreter or a version (3.11, 3.12: read by their generated layouts; 3.13+:
by the offsets they publish) taken from pyenv, or --sid MINOR takes Debian
sid's 3.MINOR (3.14, 3.15; scripts/sid-pythons.sh makes its root), run in
that root under pivot_root as the tests run it (harness.mntns), with
bench/apps bound at its host path.

USAGE: frame_source.py {blocks,cost} [--python PATH|3.X | --sid MINOR] [--no-austin]
       [--count N] [--duration-ms D] [--reads N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from blocksnoop_bench.procs import APPS, REPO, BenchError

from harness.interpreters import SID_MINORS, pyenv_python, sid_python
from harness.mntns import pivot_root_command, sid_root
from otel_blocksnoop.analysis.attribution import call_site
from otel_blocksnoop.events import Frame
from otel_blocksnoop.process.frames import FrameReader
from otel_blocksnoop.stacks.austin import Austin, AustinError

RESULTS = REPO / "bench" / "results"
NS_PER_MS = 1_000_000
DEEP_APP = """
import threading, time
def deep(n):
    if n == 0:
        while True: time.sleep(0.01)
    return deep(n - 1)
print(threading.get_native_id(), flush=True)
deep(15)
"""


@dataclass
class Block:
    tid: int
    start_ns: int
    kind: str = ""
    end_ns: int = 0
    read_ns: list[int] = field(default_factory=list)  # ours, Austin's dump, ours again: ends
    ours: list[dict[str, Any]] | None = None
    austin: list[dict[str, Any]] | None = None
    ours_again: list[dict[str, Any]] | None = None
    read_us: list[float] = field(default_factory=list)

    @property
    def ours_in_time(self) -> bool:
        """Our first read came before the block's end."""
        return bool(self.read_ns) and self.read_ns[0] < self.end_ns

    @property
    def in_time(self) -> bool:
        """All three reads came before the block's end."""
        return bool(self.read_ns) and self.read_ns[-1] < self.end_ns


def _frames(stack: tuple[Frame, ...] | None) -> list[dict[str, Any]] | None:
    return None if stack is None else [asdict(frame) for frame in stack]


def _site(stack: list[dict[str, Any]] | None) -> Frame | None:
    return call_site([Frame(**f) for f in stack]) if stack else None


def _python(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The target's interpreter (as the app sees it) and the argv prefix that runs it."""
    if args.sid is not None:
        inside = sid_python(args.sid)
        if inside is None:
            msg = f"no CPython 3.{args.sid} root: run scripts/sid-pythons.sh"
            raise BenchError(msg)
        root = sid_root()
        root = replace(root, binds=(*root.binds, (str(APPS), str(APPS))))
        return f"Debian sid's {inside}", pivot_root_command(root, [inside])
    version = re.fullmatch(r"3\.(\d+)", args.python or "3.13")
    if version is None:
        return args.python, [args.python]
    found = pyenv_python(int(version[1]))
    if found is None:
        msg = f"no CPython 3.{version[1]} under pyenv: pass --python PATH"
        raise BenchError(msg)
    return str(found), [str(found)]


def _save(name: str, data: object) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"frame_source-{name}.json").write_text(json.dumps(data, indent=1))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def cmd_blocks(args: argparse.Namespace) -> None:
    python, run = _python(args)
    dumper = None if args.no_austin else Austin.find()
    blocks: list[Block] = []
    with tempfile.TemporaryDirectory() as tmp:
        fifo, truth = Path(tmp) / "announce", Path(tmp) / "truth.json"
        os.mkfifo(fifo)
        command = [*run, str(APPS / "announced_app.py"), "blocks", "--announce", str(fifo)]
        schedule = ["--count", str(args.count), "--duration-ms", str(args.duration_ms)]
        app = subprocess.Popen(
            [*command, *schedule, "--out", str(truth)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            _first_line(app)  # the loop runs
            reader = FrameReader(app.pid)
            with fifo.open() as announcements:
                blocks.extend(_follow(announcements, reader, dumper, args.duration_ms))
            app.wait(timeout=60)
        finally:
            app.kill()
            app.wait()
        sites = json.loads(truth.read_text())["call_sites"]
    rows = _judge(blocks, sites)
    _save("blocks", {"python": python, "blocks": [asdict(b) for b in blocks], "rows": rows})
    print(f"\n{python}, {args.count} blocks of each kind, {args.duration_ms} ms each\n")
    print(
        "| kind | ours read in the block | ours right | all three reads in the block |"
        " of those: ours right | Austin right | ours = Austin | whole stacks equal |"
        " our read, median us |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['kind']} | {row['ours_in_time']}/{row['blocks']} | {row['ours_alone_right']} |"
            f" {row['in_time']} | {row['ours_right']} | {row['austin_right']} | {row['same']} |"
            f" {row['same_stack']} | {row['read_us']:.0f} |"
        )
    print("\n(right: the call site is kinds_app's marked line: function, file and line)")


def _first_line(app: subprocess.Popen[str]) -> str:
    if app.stdout is None:
        msg = "started without a stdout pipe"
        raise BenchError(msg)
    return app.stdout.readline()


def _follow(
    announcements: IO[str], reader: FrameReader, dumper: Austin | None, duration_ms: float
) -> Iterator[Block]:
    """Each block announced, read by us, dumped by Austin and read by us again while it lasts."""
    pid = reader.pid
    current: Block | None = None
    for line in announcements:
        parts = line.split()
        if parts[0] == "B":
            current = Block(tid=int(parts[1]), start_ns=int(parts[2]))
            wait = (current.start_ns + duration_ms * NS_PER_MS / 4 - time.monotonic_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
            before = time.perf_counter_ns()
            current.ours = _frames(reader.stack(current.tid))
            current.read_us.append((time.perf_counter_ns() - before) / 1000)
            current.read_ns.append(time.monotonic_ns())
            try:
                dump = dumper.where(pid).get(current.tid) if dumper is not None else None
                current.austin = _frames(dump)
            except AustinError:
                current.austin = None
            current.read_ns.append(time.monotonic_ns())
            before = time.perf_counter_ns()
            current.ours_again = _frames(reader.stack(current.tid))
            current.read_us.append((time.perf_counter_ns() - before) / 1000)
            current.read_ns.append(time.monotonic_ns())
        elif parts[0] == "E" and current is not None:
            current.end_ns, current.kind, current.start_ns = int(parts[1]), parts[2], int(parts[3])
            yield current
            current = None


def _judge(blocks: list[Block], sites: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for kind in sorted({b.kind for b in blocks}):
        site = sites[kind]
        names = {site["function"], site["qualname"]}

        def right(
            frame: Frame | None, site: dict[str, Any] = site, names: set[str] = names
        ) -> bool:
            return (
                frame is not None
                and frame.function in names
                and os.path.normpath(frame.file) == os.path.normpath(site["file"])
                and frame.line == site["line"]
            )

        of_kind = [b for b in blocks if b.kind == kind]
        ours_timely = [b for b in of_kind if b.ours_in_time]
        timely = [b for b in of_kind if b.in_time]
        ours = [_site(b.ours) for b in timely]
        theirs = [_site(b.austin) for b in timely]
        rows.append(
            {
                "kind": kind,
                "blocks": len(of_kind),
                "ours_in_time": len(ours_timely),
                "ours_alone_right": sum(right(_site(b.ours)) for b in ours_timely),
                "in_time": len(timely),
                "ours_right": sum(map(right, ours)),
                "austin_right": sum(map(right, theirs)),
                "same": sum(o is not None and o == t for o, t in zip(ours, theirs, strict=True)),
                "same_stack": sum(b.ours is not None and b.ours == b.austin for b in timely),
                "read_us": statistics.median(us for b in of_kind for us in b.read_us),
            }
        )
    return rows


def cmd_cost(args: argparse.Namespace) -> None:
    python, run = _python(args)
    app = subprocess.Popen([*run, "-c", DEEP_APP], stdout=subprocess.PIPE, text=True)
    try:
        tid = int(_first_line(app))
        setup_us, cold_us, warm_us = [], [], []
        reader = FrameReader(app.pid)
        depth = len(reader.stack(tid) or ())
        for _ in range(args.reads):
            before = time.perf_counter_ns()
            fresh = FrameReader(app.pid)
            made = time.perf_counter_ns()
            stack = fresh.stack(tid)
            done = time.perf_counter_ns()
            if stack is None or len(stack) != depth:
                msg = f"a cold read gave {stack}"
                raise BenchError(msg)
            setup_us.append((made - before) / 1000)
            cold_us.append((done - made) / 1000)
        reads_before = reader.reads
        for _ in range(args.reads):
            before = time.perf_counter_ns()
            stack = reader.stack(tid)
            warm_us.append((time.perf_counter_ns() - before) / 1000)
            if stack is None or len(stack) != depth:
                msg = f"a warm read gave {stack}"
                raise BenchError(msg)
        per_stack = (reader.reads - reads_before) / args.reads
    finally:
        app.kill()
        app.wait()
    result = {
        "python": python,
        "frames": depth,
        "remote_reads_per_stack": per_stack,
        "warm_us": {"median": statistics.median(warm_us), "p90": _pct(warm_us, 0.9)},
        "cold_us": {"median": statistics.median(cold_us), "p90": _pct(cold_us, 0.9)},
        "setup_us": {"median": statistics.median(setup_us), "p90": _pct(setup_us, 0.9)},
    }
    _save("cost", result)
    print(f"\n{python}: one stack of {depth} frames, {per_stack:.0f} remote reads (warm)\n")
    print("| read | median us | p90 us |")
    print("|---|---:|---:|")
    for name in ("warm", "cold", "setup"):
        figures = result[f"{name}_us"]
        print(f"| {name} | {figures['median']:.0f} | {figures['p90']:.0f} |")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/frame_source.py", description=__doc__)
    parser.add_argument("command", choices=("blocks", "cost"))
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--python", help="the target's interpreter, or 3.X: pyenv's (default: pyenv's 3.13)"
    )
    where.add_argument(
        "--sid", type=int, choices=SID_MINORS, help="Debian sid's 3.MINOR, in its root"
    )
    parser.add_argument(
        "--no-austin",
        action="store_true",
        help="blocks: ours only (Austin 4.0.0 cannot read 3.15: each dump fails after 2 s)",
    )
    parser.add_argument("--count", type=int, default=10, help="blocks: blocks of each kind")
    parser.add_argument("--duration-ms", type=float, default=40.0, help="blocks: each block")
    parser.add_argument("--reads", type=int, default=300, help="cost: reads of each kind")
    args = parser.parse_args(argv)
    {"blocks": cmd_blocks, "cost": cmd_cost}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
