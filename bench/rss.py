#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Where the sidecar's resident memory goes.

where  the sidecar attached (``-q -t 10``) to an idle asyncio app, with and
       without stacks, with and without OTLP export to a local receiver
       (harness/otlp.py); after ``--settle`` seconds its /proc/PID/smaps is
       summed by mapping: LLVM and clang, libbcc and the libraries only it
       loads (none since BCC runs in the compiler process), gRPC and
       protobuf's native modules, every other file (Python, its extensions,
       libc...), the mapped BPF maps (the ring buffers), and anonymous
       memory (heap, Python's arenas).
steps  one fresh process imports what the sidecar imports, step by step, then
       loads the BPF program as ``Detector.load()`` does: RSS and anonymous
       memory after each step tell which import or action the anonymous
       memory belongs to (bench/rss_steps.py, which imports nothing else first).
hold   one process holds the detector (-t 10) attached and watching the idle
       app, loaded as the sidecar does (BCC in a compiler process that
       exits), with and without the sidecar's imports (bench/rss_hold.py);
       ``--rounds`` of each in turn, medians: RSS, its parts, peak RSS, the
       compiler's peak, and the time from start of loading to attached.
compare
       this tree's sidecar against another checkout's (``--before DIR``, e.g.
       ``git archive COMMIT otel_blocksnoop bpf | tar -x -C DIR``), in
       alternating rounds, with its defaults (stacks, cause, trace links)
       at ``-t 10``: RSS attached to the idle app after ``--settle`` s; RSS
       sampled each second during a storm (apps/kinds_app.py, 50 blocks/s of
       12 ms, every kind, ``--storm-seconds``), after its first 10 s; and the
       time from starting a launch-mode sidecar to its first block on stdout
       (the app blocks 50 ms in its first loop iteration).

USAGE: rss.py [--only where|steps|hold|compare] [--settle S] [--rounds N]
              [--before DIR] [--storm-seconds S]
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
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from blocksnoop_bench.procs import REPO, json_records
from blocksnoop_bench.report import num, spread, table

from harness.otlp import OtlpReceiver
from otel_blocksnoop.cli import positive_int

IDLE_APP = (
    "import asyncio\nasync def m():\n    while True: await asyncio.sleep(0.5)\nasyncio.run(m())"
)
THRESHOLD_MS = "10"

# Mapping names (last field of a /proc/PID/smaps header line) by group.
GROUPS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("LLVM + clang", re.compile(r"/libLLVM|/libclang")),
    (
        "libbcc + its libs",
        re.compile(r"/lib(bcc|bpf|bsd|edit|elf|icu\w*|md|tinfo|xml2|z3)[-.]"),
    ),
    ("gRPC + protobuf .so", re.compile(r"/grpc/|/google/_upb/")),
    ("BPF maps", re.compile(r"^anon_inode:bpf")),
    ("other files", re.compile(r"^/")),
)
ANONYMOUS = "heap + anonymous"
COLUMNS = (*(name for name, _ in GROUPS), ANONYMOUS)

WHERE_MODES: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("stacks, no export", (), None),
    ("--no-stacks, no export", ("--no-stacks",), None),
    ("stacks, OTLP http/protobuf", (), "http/protobuf"),
    ("--no-stacks, OTLP http/protobuf", ("--no-stacks",), "http/protobuf"),
    ("stacks, OTLP grpc", (), "grpc"),
    ("--no-stacks, OTLP grpc", ("--no-stacks",), "grpc"),
)


def smaps_groups(pid: int) -> dict[str, int]:
    """RSS in KiB of ``pid``'s mappings, summed by ``GROUPS`` (the rest is anonymous)."""
    kib: Counter[str] = Counter()
    group = ANONYMOUS
    header = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if header.match(line):
            fields = line.split(None, 5)
            name = fields[5].strip() if len(fields) > 5 else ""
            group = next((g for g, pattern in GROUPS if pattern.search(name)), ANONYMOUS)
        elif line.startswith("Rss:"):
            kib[group] += int(line.split()[1])
    return dict(kib)


def rollup(pid: int | str) -> dict[str, int]:
    """The KiB fields of /proc/PID/smaps_rollup (Rss, Pss, Anonymous...)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields


def mib(kib: float) -> str:
    return num(kib / 1024)


def start_idle_app() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", IDLE_APP])


SIDECAR = (sys.executable, "-m", "otel_blocksnoop")


def where(settle: int) -> str:
    """One sidecar per mode, each against a fresh idle app; smaps after ``settle`` s."""
    rows = []
    with OtlpReceiver() as receiver:
        endpoints = {"grpc": receiver.grpc_endpoint, "http/protobuf": receiver.http_endpoint}
        for name, flags, protocol in WHERE_MODES:
            export: tuple[str, ...] = ()
            if protocol is not None:
                endpoint = endpoints[protocol]
                if protocol == "grpc":
                    endpoint = f"http://{endpoint}"
                export = ("--otlp-endpoint", endpoint, "--otlp-protocol", protocol)
            app = start_idle_app()
            sidecar = subprocess.Popen(
                [
                    *SIDECAR,
                    "-q",
                    "-t",
                    THRESHOLD_MS,
                    *flags,
                    *export,
                    str(app.pid),
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
            )
            try:
                time.sleep(settle)
                groups = smaps_groups(sidecar.pid)
                total = rollup(sidecar.pid)
            finally:
                sidecar.terminate()
                sidecar.wait()
                app.kill()
                app.wait()
            rows.append(
                [
                    name,
                    mib(total["Rss"]),
                    *(mib(groups.get(column, 0)) for column in COLUMNS),
                ]
            )
    headers = ["sidecar (-t 10, idle app)", "RSS", *COLUMNS]
    return table(headers, rows, [False, *[True] * (len(headers) - 1)])


def steps() -> str:
    child = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("rss_steps.py"))],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    rows = []
    for line in child.stdout.splitlines():
        step = json.loads(line)
        rows.append([step["step"], mib(step["rss"]), mib(step["anon"]), num(step["s"], 2)])
    return table(["step (one process)", "RSS", "anonymous", "took (s)"], rows, [False, *[True] * 3])


HOLDERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Detector.load(), BCC in the compiler process", ()),
    ("the same after the sidecar's imports", ("--imports",)),
)
HOLD_COLUMNS = ("LLVM + clang", "libbcc + its libs", "BPF maps")


def hold_once(pid: int, extra: tuple[str, ...], settle: int) -> dict[str, Any]:
    """One bench/rss_hold.py run: its report, then its memory after ``settle`` s attached."""
    holder = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("rss_hold.py")), str(pid), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert holder.stdin is not None  # noqa: S101 - both pipes were asked for
    assert holder.stdout is not None  # noqa: S101
    try:
        report: dict[str, Any] = json.loads(holder.stdout.readline())
        time.sleep(settle)
        report["groups"] = smaps_groups(holder.pid)
        report["rollup"] = rollup(holder.pid)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    return report


def middle(values: Iterable[float]) -> float:
    return statistics.median(values)


def hold(rounds: int, settle: int) -> str:
    """Each way of holding the program, ``rounds`` times in turn, against one idle app."""
    app = start_idle_app()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in HOLDERS}
    try:
        for _ in range(rounds):
            for name, extra in HOLDERS:
                runs[name].append(hold_once(app.pid, extra, settle))
    finally:
        app.kill()
        app.wait()
    rows = []
    for name, reports in runs.items():
        groups = [report.pop("groups") for report in reports]
        rows.append(
            [
                name,
                mib(middle(report["rollup"]["Rss"] for report in reports)),
                mib(middle(report["rollup"]["Anonymous"] for report in reports)),
                *(mib(middle(g.get(column, 0) for g in groups)) for column in HOLD_COLUMNS),
                mib(middle(report["peak_kib"] for report in reports)),
                mib(middle(report["child_peak_kib"] for report in reports)),
                num(middle(report["load_s"] for report in reports), 2),
                "yes" if any(report["bcc"] for report in reports) else "no",
            ]
        )
    headers = [
        f"holding the detector (-t 10), median of {rounds}",
        "RSS",
        "anonymous",
        *HOLD_COLUMNS,
        "peak RSS",
        "compiler's peak",
        "load + attach (s)",
        "bcc imported",
    ]
    return table(headers, rows, [False, *[True] * 8, False])


STORM_WARMUP_S = 10.0
"""Storm samples start after this: attach, the first stacks, the exporters' first batch."""
FIRST_BLOCK_APP = (
    "import asyncio, time\n"
    "async def m():\n"
    "    time.sleep(0.05)\n"
    "    await asyncio.sleep(0.2)\n"
    "asyncio.run(m())"
)


def tree_sidecar(tree: Path, args: list[str], **popen: Any) -> subprocess.Popen[str]:  # noqa: ANN401
    """The sidecar of the checkout at ``tree`` (this venv's interpreter and packages)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.Popen([*SIDECAR, *args], cwd=tree, env=env, text=True, **popen)


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def idle_rss(tree: Path, settle: int) -> float:
    """KiB resident after ``settle`` s attached to a fresh idle app."""
    app = start_idle_app()
    sidecar = tree_sidecar(
        tree, ["-q", "-t", THRESHOLD_MS, str(app.pid)], stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(settle)
        return rollup(sidecar.pid)["Rss"]
    finally:
        stop(sidecar)
        app.kill()
        app.wait()


def storm_rss(tree: Path, seconds: int) -> dict[str, Any]:
    """KiB resident each second of a storm past its warm-up, and how many blocks came out."""
    app = [
        sys.executable,
        str(REPO / "bench" / "apps" / "kinds_app.py"),
        "--duration-ms=12",
        "--rate=50",
        f"--seconds={seconds}",
        "--out=/dev/null",
    ]
    args = ["--json", "-q", "-t", THRESHOLD_MS, "--", *app]
    with tempfile.TemporaryDirectory(prefix="blocksnoop-rss-") as tmp:
        records = Path(tmp) / "storm.jsonl"
        with records.open("w") as out:
            sidecar = tree_sidecar(tree, args, stdout=out)
        started = time.monotonic()
        samples = []
        try:
            while sidecar.poll() is None:
                time.sleep(1)
                if time.monotonic() - started >= STORM_WARMUP_S and sidecar.poll() is None:
                    samples.append(vm_rss_kib(sidecar.pid))
        finally:
            stop(sidecar)
        blocks = sum(1 for record in json_records(records) if record.get("type") == "block")
    return {"samples": samples[:-1], "blocks": blocks}  # the last one: the app's exit


def first_block_s(tree: Path) -> float:
    """Seconds from starting a launch-mode sidecar to its first block record on stdout."""
    started = time.monotonic()
    args = ["--json", "-q", "-t", THRESHOLD_MS, "--", sys.executable, "-c", FIRST_BLOCK_APP]
    sidecar = tree_sidecar(tree, args, stdout=subprocess.PIPE)
    assert sidecar.stdout is not None  # noqa: S101 - asked for
    try:
        for line in sidecar.stdout:
            if json.loads(line).get("type") == "block":
                return time.monotonic() - started
    finally:
        stop(sidecar)
    msg = "the sidecar reported no block"
    raise RuntimeError(msg)


def cell(values: list[float], scale: float, digits: int) -> str:
    """Median (lowest to highest round) of ``values / scale``."""
    scaled = [value / scale for value in values]
    return f"{num(statistics.median(scaled), digits)} ({spread(scaled, digits)})"


def compare(before: Path, rounds: int, settle: int, storm_seconds: int) -> str:
    """``before`` and this tree, alternating in each round; medians (lowest to highest round)."""
    trees = {"before": before.resolve(), "after": REPO}
    runs: dict[str, dict[str, list[float]]] = {
        name: {"idle": [], "storm": [], "storm peak": [], "blocks": [], "first": []}
        for name in trees
    }
    for round_no in range(rounds):
        order = list(trees.items()) if round_no % 2 == 0 else list(reversed(trees.items()))
        for name, tree in order:
            sys.stderr.write(f"rss: round {round_no + 1}, {name}\n")
            run = runs[name]
            run["first"].append(first_block_s(tree))
            run["idle"].append(idle_rss(tree, settle))
            storm = storm_rss(tree, storm_seconds)
            run["storm"].append(statistics.median(storm["samples"]))
            run["storm peak"].append(max(storm["samples"]))
            run["blocks"].append(storm["blocks"])
    rows = []
    for name, tree in trees.items():
        run = runs[name]

        rows.append(
            [
                f"{name} ({tree})",
                cell(run["idle"], 1024, 1),
                cell(run["storm"], 1024, 1),
                cell(run["storm peak"], 1024, 1),
                cell(run["blocks"], 1, 0),
                cell(run["first"], 1, 2),
            ]
        )
    headers = [
        f"sidecar, -t {THRESHOLD_MS}, median of {rounds} (lowest to highest)",
        f"RSS idle app, {settle} s (MiB)",
        "RSS storm, median of 1 s samples (MiB)",
        "RSS storm, highest sample (MiB)",
        f"blocks reported in {storm_seconds} s",
        "start to first block (s)",
    ]
    return table(headers, rows, [False, *[True] * 5])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/rss.py", description=__doc__)
    parser.add_argument("--only", choices=("where", "steps", "hold", "compare"))
    parser.add_argument("--settle", type=positive_int, default=15)
    parser.add_argument("--rounds", type=positive_int, default=3, help="hold, compare: rounds")
    parser.add_argument("--before", type=Path, help="compare: the checkout to compare with")
    parser.add_argument("--storm-seconds", type=positive_int, default=40)
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, kernel {os.uname().release}, MiB\n")
    if args.only in (None, "where"):
        print(where(args.settle), flush=True)
    if args.only in (None, "steps"):
        print(steps(), flush=True)
    if args.only in (None, "hold"):
        print(hold(args.rounds, min(args.settle, 5)), flush=True)
    if args.only == "compare" or (args.only is None and args.before is not None):
        if args.before is None:
            parser.error("compare needs --before DIR")
        print(compare(args.before, args.rounds, args.settle, args.storm_seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
