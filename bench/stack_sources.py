#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Stacks only during a block: which source, measured (BENCHMARKS.md, "Stacks on demand").

Subcommands (each prints a markdown table; raw data goes to bench/results/):

austin   Austin itself: latency from SIGCONT to its first sample's bytes,
         whether the first delta after a stop spans the stop, how far the
         anchor (arrival - summed deltas) moves across stops of 0.05 s to
         --long-stop s, its CPU while stopped; and ``austin -w`` run per
         block: time to a dump and its CPU.
fields   The frame fields a reader of our own needs beyond the context
         reader's layouts, with their offsets compiled from each pyenv
         CPython 3.9-3.13's headers (blocksnoop_bench/frames.py).
read     The prototype frame reader (blocksnoop_bench/frames.py): the cost
         of one stack read of an 18-frame thread, cold and warm, per
         CPython 3.11-3.13 found in pyenv.
idle     CPU of the stack source (this process + its children) while an
         asyncio app idles, per source, at threshold --threshold-ms.
blocks   apps/announced_app.py blocks its loop --count times in each of 7
         ways (kinds_app.py) per length in --durations; threshold = half
         the length (as ``run.py --only attribution``); the app announces
         each block, and ``begin`` is called at start + threshold/2 (the
         kernel trigger to come), ``end`` at the block's end. Per source:
         share of blocks whose voted call site (analysis.attribution) is the
         right function, first-stack latency after ``begin``, CPU per block
         (minus the same run with no source). --saturate N runs N busy
         processes meanwhile (every CPU busy); --rounds N repeats each cell.
busy     The busy work loop of apps/announced_app.py with a 20 ms block
         every 0.5 s (threshold 10 ms): steps per wall second and per app CPU
         second with each source, alternating rounds, medians against none.

Sources (blocksnoop_bench/sources.py): none, continuous (today), resident
(Austin stopped between blocks: the pool on demand; resident-normal: without
its real-time priority), spawn (``austin -w`` per block), frames (our own
reads of the frame chain; 3.11-3.13).

USAGE: stack_sources.py {austin,fields,read,idle,blocks,busy} [--python PATH]
       [--sources S ...] [--threshold-ms T] [--durations D ...] [--count N]
       [--seconds S] [--rounds N] [--saturate N] [--long-stop S]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import IO, Any

from blocksnoop_bench.frames import FrameReader, frame_fields
from blocksnoop_bench.procs import APPS, PYTHON, REPO, BenchError
from blocksnoop_bench.sources import NAMES, Source, make, spawn_austin_stream, wait_covered

from otel_blocksnoop.analysis.attribution import attribute
from otel_blocksnoop.stacks.austin import Austin
from otel_blocksnoop.stacks.mojo import MojoDecoder
from otel_blocksnoop.stacks.on_demand import State
from otel_blocksnoop.stacks.sampler import interval_for

AUSTIN = REPO / ".venv" / "bin" / "austin"
RESULTS = REPO / "bench" / "results"
NS_PER_MS = 1_000_000
IDLE_APP = (
    "import asyncio\nasync def m():\n    while True: await asyncio.sleep(0.5)\nasyncio.run(m())"
)
DEEP_APP = """
import threading, time
def deep(n):
    if n == 0:
        while True: time.sleep(0.01)
    return deep(n - 1)
print(threading.get_native_id(), flush=True)
deep(15)
"""


@dataclass(frozen=True, slots=True)
class Cpu:
    """CPU seconds of this process (all threads) and of its children, to the microsecond."""

    own_s: float
    children_s: float
    at_s: float


def task_cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` (schedstat, nanoseconds)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cpu_now(app: int) -> Cpu:
    """CPU by getrusage (this process, reaped children) and schedstat (ns, live Austins).

    The target ``app`` and the busy processes of --saturate (children too) are
    left out. /proc's tick counts (10 ms) are too coarse for a few
    milliseconds per block.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    live_ns = 0
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            if int(pid) != app and _comm(int(pid)) == "austin":
                live_ns += task_cpu_ns(int(pid))
    return Cpu(
        own_s=own.ru_utime + own.ru_stime,
        children_s=reaped.ru_utime + reaped.ru_stime + live_ns / 1e9,
        at_s=time.monotonic(),
    )


def _save(name: str, data: object) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"stack_sources-{name}.json").write_text(json.dumps(data, indent=1))


def _stdout(process: subprocess.Popen[Any]) -> int:
    if process.stdout is None:
        msg = "started without a stdout pipe"
        raise BenchError(msg)
    return process.stdout.fileno()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# -- austin --


def _read_samples(fd: int, decoder: MojoDecoder, seconds: float) -> list[tuple[int, list[Any]]]:
    """(arrival ns, samples completed) for each read during ``seconds``."""
    reads = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        data = os.read(fd, 1 << 16)
        if not data:
            break
        reads.append((time.monotonic_ns(), [*decoder.feed(data), decoder.pending()]))
    return reads


def cmd_austin(args: argparse.Namespace) -> None:
    app = subprocess.Popen([args.python, "-c", IDLE_APP])
    time.sleep(0.5)
    austin = spawn_austin_stream(AUSTIN, app.pid, 1000)
    fd = _stdout(austin)
    decoder = MojoDecoder()
    elapsed: dict[int, int] = {}

    def anchors(reads: list[tuple[int, list[Any]]]) -> list[int]:
        found: list[int] = []
        for arrival, items in reads:
            *samples, pending = items
            for sample in samples:
                elapsed[sample.tid] = elapsed.get(sample.tid, 0) + sample.delta_us
            if pending is not None:
                found.append(arrival - (elapsed.get(pending[0], 0) + pending[1]) * 1000)
        return found

    base = min(anchors(_read_samples(fd, decoder, 0.5)))
    rows = []
    stops = [0.05, 0.2, 1.0, 5.0, 30.0, args.long_stop]
    for stop_s in sorted(set(stops)):
        os.kill(austin.pid, signal.SIGSTOP)
        time.sleep(0.01)
        anchors(_read_samples(fd, decoder, 0.005))
        stopped = task_cpu_ns(austin.pid)
        time.sleep(stop_s)
        stopped_cpu = (task_cpu_ns(austin.pid) - stopped) / 1e9 / stop_s * 100
        sent = time.monotonic_ns()
        os.kill(austin.pid, signal.SIGCONT)
        select.select([fd], [], [], 1.0)
        first = time.monotonic_ns()
        reads = _read_samples(fd, decoder, 0.05)
        spans = [s.delta_us for _, items in reads for s in items[:-1]][:2]
        moved = [(a - base) / 1000 for a in anchors(reads)]
        rows.append(
            {
                "stop_s": stop_s,
                "first_bytes_us": (first - sent) / 1000,
                "first_deltas_us": spans,
                "anchor_moved_us_median": statistics.median(moved),
                "anchor_moved_us_min": min(moved),
                "austin_cpu_pct_stopped": stopped_cpu,
                "alive": austin.poll() is None,
            }
        )
    austin.kill()
    austin.wait()
    print("| stop | SIGCONT -> first bytes | first deltas (us) | anchor moved (us, min/median) "
          "| Austin CPU while stopped | alive after |")  # fmt: skip
    print("| ---: | ---: | --- | ---: | ---: | --- |")
    for row in rows:
        print(
            f"| {row['stop_s']:g} s | {row['first_bytes_us']:.0f} us | {row['first_deltas_us']} "
            f"| {row['anchor_moved_us_min']:.0f} / {row['anchor_moved_us_median']:.0f} "
            f"| {row['austin_cpu_pct_stopped']:.2f}% | {row['alive']} |"
        )
    spawned = _spawn_costs(app.pid, args.count)
    app.kill()
    app.wait()
    _save("austin", {"resume": rows, "spawn": spawned})


def _spawn_costs(pid: int, count: int) -> dict[str, Any]:
    """``austin -w`` per block, and a streaming Austin started per block: time and CPU."""
    result: dict[str, Any] = {}
    for what in ("where", "stream"):
        took, cpu = [], []
        for _ in range(count):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.monotonic_ns()
            if what == "where":
                Austin(AUSTIN).where(pid)
            else:
                process = spawn_austin_stream(AUSTIN, pid, 1000)
                decoder = MojoDecoder()
                while not decoder.feed(os.read(_stdout(process), 1 << 16)) and (
                    decoder.pending() is None
                ):
                    pass
                process.kill()
            took.append((time.monotonic_ns() - start) / NS_PER_MS)
            if what == "stream":
                process.wait()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1e3)
        result[what] = {"ms": took, "cpu_ms": cpu}
        print(
            f"| austin {'-w' if what == 'where' else '-P (to 1st sample)'} per block "
            f"| {statistics.median(took):.2f} ms (p90 {_pct(took, 0.9):.2f}) "
            f"| {statistics.median(cpu):.2f} ms CPU |"
        )
    return result


# -- read --


def _pythons(requested: list[str] | None) -> list[str]:
    if requested:
        return requested
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True)
    found: list[str] = []
    for minor in (11, 12, 13):
        candidates = sorted(Path(root.stdout.strip(), "versions").glob(f"3.{minor}.*/bin/python3"))
        found.extend(str(c) for c in candidates[-1:])
    return found


def cmd_read(args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    for python in _pythons(args.pythons):
        app = subprocess.Popen([python, "-c", DEEP_APP], stdout=subprocess.PIPE, text=True)
        tid = int(os.read(_stdout(app), 64))
        reader = FrameReader(app.pid, frame_fields(python))
        stack = reader.stack(tid) or ()
        warm, cold, reads = [], [], []
        for _ in range(args.count):
            before_reads = reader.memory.reads
            start = time.perf_counter_ns()
            reader.stack(tid)
            warm.append((time.perf_counter_ns() - start) / 1000)
            reads.append(reader.memory.reads - before_reads)
        for _ in range(max(10, args.count // 10)):
            reader.forget()
            reader.objects.new_walk()
            start = time.perf_counter_ns()
            reader.stack(tid)
            cold.append((time.perf_counter_ns() - start) / 1000)
        app.kill()
        app.wait()
        rows.append(
            {
                "python": python,
                "version": ".".join(map(str, reader.version)),
                "frames": len(stack),
                "innermost": [stack[-1].function, stack[-1].line] if stack else None,
                "warm_us": warm,
                "cold_us": cold,
                "reads": statistics.median(reads),
            }
        )
    print("| CPython | frames | innermost | reads | warm median (p99) | cold median |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['version']} | {row['frames']} | {row['innermost']} | {row['reads']:.0f} "
            f"| {statistics.median(row['warm_us']):.0f} us ({_pct(row['warm_us'], 0.99):.0f}) "
            f"| {statistics.median(row['cold_us']):.0f} us |"
        )
    _save("read", rows)


def cmd_fields(args: argparse.Namespace) -> None:
    del args
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True)
    offsets: dict[str, dict[str, int]] = {}
    for minor in (9, 10, 11, 12, 13):
        found = sorted(Path(root.stdout.strip(), "versions").glob(f"3.{minor}.*/bin/python3"))
        if found:
            offsets[f"3.{minor}"] = frame_fields(str(found[-1]))
    names = sorted({name for fields in offsets.values() for name in fields})
    print("| field | " + " | ".join(offsets) + " |")
    print("| --- |" + " ---: |" * len(offsets))
    for name in names:
        cells = " | ".join(str(fields.get(name, "-")) for fields in offsets.values())
        print(f"| {name} | {cells} |")
    _save("fields", offsets)


# -- runs against announced_app.py --


@dataclass
class Block:
    tid: int
    start_ns: int
    begin_ns: int = 0
    end_ns: int = 0
    kind: str = ""
    function: str = ""
    file: str = ""
    function_ok: bool = False
    samples: int = 0
    first_after_begin_ms: float | None = None
    nearby: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Run:
    source: str
    blocks: list[Block] = field(default_factory=list)
    own_cpu_s: float = 0.0
    children_cpu_s: float = 0.0
    wall_s: float = 0.0
    app: dict[str, Any] = field(default_factory=dict)


def _start_app(
    python: str, mode: str, fifo: Path, extra: list[str]
) -> tuple[subprocess.Popen[str], int]:
    app = subprocess.Popen(
        [python, str(APPS / "announced_app.py"), mode, "--announce", str(fifo), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    return app, int(os.read(_stdout(app), 64))


def _wait_attached(source: Source, name: str, pid: int, tid: int) -> None:
    """Until the source can give stacks (a pool: Austin attached; resident: stopped again)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if name == "continuous" and source.window(pid, tid, 0, time.monotonic_ns()):
            return
        if name.startswith("resident"):
            sampler = source.pool._samplers[pid]  # type: ignore[attr-defined]  # noqa: SLF001
            if getattr(sampler, "state", None) == State.STOPPED:
                return
        if name not in ("continuous", "resident", "resident-normal"):
            return
        time.sleep(0.01)


def drive(  # noqa: PLR0913 - one run's settings
    name: str,
    python: str,
    mode: str,
    *,
    threshold_ms: float,
    extra: list[str],
    truth: Path | None = None,
    measure_s: float | None = None,
) -> Run:
    """Run announced_app.py in ``mode`` with stack source ``name``; begin/end from its lines."""
    interval = interval_for(int(threshold_ms * NS_PER_MS))
    source = make(name, AUSTIN, interval)
    run = Run(name)
    with tempfile.TemporaryDirectory() as tmp:
        fifo = Path(tmp) / "announce"
        os.mkfifo(fifo)
        app, _tid = _start_app(python, mode, fifo, extra)
        try:
            source.attach(app.pid, python)
            _wait_attached(source, name, app.pid, _tid)
            ended: Queue[Block | None] = Queue()
            judge = threading.Thread(target=_judge, args=(source, app.pid, ended, truth, run))
            judge.start()
            before = cpu_now(app.pid)
            with fifo.open() as announcements:
                if measure_s is not None:
                    time.sleep(measure_s)
                else:
                    _follow(
                        source,
                        app.pid,
                        announcements,
                        threshold_ms=threshold_ms,
                        ended=ended,
                        run=run,
                    )
            after = cpu_now(app.pid)
            ended.put(None)
            judge.join()
        finally:
            if measure_s is not None:
                app.kill()
            app.wait()
            source.stop()
    run.own_cpu_s = after.own_s - before.own_s
    run.children_cpu_s = after.children_s - before.children_s
    run.wall_s = after.at_s - before.at_s
    return run


def _follow(  # noqa: PLR0913 - the run's parts, passed in
    source: Source,
    pid: int,
    announcements: IO[str],
    *,
    threshold_ms: float,
    ended: Queue[Block | None],
    run: Run,
) -> None:
    current: Block | None = None
    for line in announcements:
        parts = line.split()
        if parts[0] == "B":
            current = Block(tid=int(parts[1]), start_ns=int(parts[2]))
            trigger = current.start_ns + int(threshold_ms * NS_PER_MS / 2)
            wait = (trigger - time.monotonic_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
            current.begin_ns = time.monotonic_ns()
            source.begin(pid, current.tid, current.start_ns)
        elif parts[0] == "E" and current is not None:
            current.end_ns, current.kind, current.start_ns = int(parts[1]), parts[2], int(parts[3])
            source.end(pid, current.tid)
            run.blocks.append(current)
            ended.put(current)
            current = None


def _judge(
    source: Source, pid: int, ended: Queue[Block | None], truth: Path | None, run: Run
) -> None:
    """Vote over each ended block's samples, as the analysis does."""
    pending: list[Block] = []
    while (block := ended.get()) is not None:
        wait_covered(source, pid, block.tid, block.end_ns)
        samples = source.window(pid, block.tid, block.start_ns, block.end_ns)
        block.samples = len(samples)
        if not samples:  # what was there around it, for the record
            around = source.window(pid, block.tid, block.start_ns - 30 * NS_PER_MS, block.end_ns)
            block.nearby = [
                (
                    (s.time_ns - block.start_ns) / NS_PER_MS,
                    s.frames[-1].function if s.frames else "",
                )
                for s in around[-5:]
            ]
        after = [s.time_ns for s in samples if s.time_ns >= block.begin_ns]
        if after:
            block.first_after_begin_ms = (min(after) - block.begin_ns) / NS_PER_MS
        found = attribute([s.frames for s in samples])
        if found is not None and found.call_site is not None:
            block.function, block.file = found.call_site.function, found.call_site.file
        pending.append(block)
    if truth is None or not truth.exists():
        return
    sites = json.loads(truth.read_text())["call_sites"]
    for block in pending:
        site = sites.get(block.kind, {})
        names = {site.get("function"), site.get("qualname")}
        same_file = os.path.normpath(block.file) == os.path.normpath(site.get("file", ""))
        block.function_ok = block.function in names and same_file
    run.blocks = pending


def cmd_idle(args: argparse.Namespace) -> None:
    rows = []
    for name in args.sources:
        run = drive(
            name,
            args.python,
            "idle",
            threshold_ms=args.threshold_ms,
            extra=[],
            measure_s=args.seconds,
        )
        rows.append(run)
        print(
            f"| {name} | {100 * run.own_cpu_s / run.wall_s:.2f}% "
            f"| {100 * run.children_cpu_s / run.wall_s:.2f}% |",
            flush=True,
        )
    _save("idle", [r.__dict__ for r in rows])


def _hogs(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` processes spinning in pure Python: a saturated machine."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def cmd_blocks(args: argparse.Namespace) -> None:
    results = []
    hogs = _hogs(args.saturate)
    print("| D (ms) | source | blocks | right function | same, begin in time | no stack "
          "| first stack after begin (median ms) "
          "| CPU per block (ms): ours + Austin |")  # fmt: skip
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for duration in args.durations:
            cells = _blocks_cells(args, duration)
            for name, runs in cells.items():
                if name != "none":
                    results.append(_blocks_row(duration, name, runs, cells["none"]))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    _save("blocks", {"saturate": args.saturate, "rows": results})


def _blocks_cells(args: argparse.Namespace, duration: float) -> dict[str, list[Run]]:
    """Each source's runs at one length, the sources in a new order each round."""
    names = ["none", *[s for s in args.sources if s != "none"]]
    cells: dict[str, list[Run]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            with tempfile.TemporaryDirectory() as tmp:
                truth = Path(tmp) / "truth.json"
                extra = [f"--duration-ms={duration:g}", f"--count={args.count}"]
                extra += ["--out", str(truth), f"--seed={round_index}"]
                cells[name].append(
                    drive(
                        name,
                        args.python,
                        "blocks",
                        threshold_ms=duration / 2,
                        extra=extra,
                        truth=truth,
                    )
                )
    return cells


def _blocks_row(duration: float, name: str, runs: list[Run], none: list[Run]) -> dict[str, Any]:
    blocks = [b for run in runs for b in run.blocks]
    n = max(1, len(blocks))
    ok = sum(b.function_ok for b in blocks)
    # begin came before the block ended (the simulated trigger was on time)
    on_time = [b for b in blocks if b.begin_ns < b.end_ns]
    ok_on_time = sum(b.function_ok for b in on_time)
    empty = sum(b.samples == 0 for b in blocks)
    firsts = [b.first_after_begin_ms for b in blocks if b.first_after_begin_ms]
    ours = (sum(r.own_cpu_s for r in runs) - sum(r.own_cpu_s for r in none)) / n * 1000
    austin = (sum(r.children_cpu_s for r in runs) - sum(r.children_cpu_s for r in none)) / n
    print(
        f"| {duration:g} | {name} | {len(blocks)} | {100 * ok / n:.1f}% "
        f"| {100 * ok_on_time / max(1, len(on_time)):.1f}% of {len(on_time)} | {empty} "
        f"| {statistics.median(firsts) if firsts else float('nan'):.2f} "
        f"| {ours:.2f} + {austin * 1000:.2f} |",
        flush=True,
    )
    return {
        "duration_ms": duration,
        "source": name,
        "blocks": [b.__dict__ for b in blocks],
        "own_cpu_s": [r.own_cpu_s for r in runs],
        "children_cpu_s": [r.children_cpu_s for r in runs],
        "none_own_cpu_s": [r.own_cpu_s for r in none],
        "none_children_cpu_s": [r.children_cpu_s for r in none],
        "wall_s": [r.wall_s for r in runs],
    }


def cmd_busy(args: argparse.Namespace) -> None:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in ["none", *args.sources]}
    order = list(rows)
    for round_index in range(args.rounds):
        random.Random(round_index).shuffle(order)
        for name in order:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "busy.json"
                extra = ["--duration-ms=20", "--rate=2", f"--seconds={args.seconds:g}"]
                extra += ["--out", str(out)]
                drive(name, args.python, "busy", threshold_ms=args.threshold_ms, extra=extra)
                rows[name].append(json.loads(out.read_text()))
    base_wall = statistics.median(r["steps"] / r["wall_s"] for r in rows["none"])
    base_cpu = statistics.median(r["steps"] / r["cpu_s"] for r in rows["none"])
    print("| source | steps per wall s (median) | vs none | steps per app CPU s | vs none |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, results in rows.items():
        wall = statistics.median(r["steps"] / r["wall_s"] for r in results)
        cpu = statistics.median(r["steps"] / r["cpu_s"] for r in results)
        print(
            f"| {name} | {wall:.0f} | {100 * (wall / base_wall - 1):+.1f}% | {cpu:.0f} "
            f"| {100 * (cpu / base_cpu - 1):+.1f}% |"
        )
    _save("busy", rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/stack_sources.py", description=__doc__)
    parser.add_argument("command", choices=("austin", "fields", "read", "idle", "blocks", "busy"))
    parser.add_argument("--python", default=PYTHON, help="the target's interpreter")
    parser.add_argument(
        "--pythons", nargs="*", help="read: interpreters (default: pyenv 3.11-3.13)"
    )
    parser.add_argument("--sources", nargs="+", default=[n for n in NAMES if n != "none"])
    parser.add_argument("--threshold-ms", type=float, default=10.0)
    parser.add_argument("--durations", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1, help="blocks: runs per cell; busy: rounds")
    parser.add_argument("--saturate", type=int, default=0, help="blocks: busy processes meanwhile")
    parser.add_argument("--long-stop", type=float, default=60.0)
    args = parser.parse_args(argv)
    {
        "austin": cmd_austin,
        "fields": cmd_fields,
        "read": cmd_read,
        "idle": cmd_idle,
        "blocks": cmd_blocks,
        "busy": cmd_busy,
    }[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
