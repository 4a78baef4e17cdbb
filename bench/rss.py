#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Where the sidecar's resident memory goes.

where  the sidecar attached (``-q -t 10``) to an idle asyncio app, with and
       without stacks, with and without OTLP export to a local receiver
       (harness/otlp.py); after ``--settle`` seconds its /proc/PID/smaps is
       summed by mapping: LLVM and clang, libbcc and the libraries only it
       loads, gRPC and protobuf's native modules, every other file (Python,
       its extensions, libc...), the BPF maps BCC mapped (its ring buffer),
       and anonymous memory (heap, Python's arenas, LLVM's allocations).
steps  one fresh process imports what the sidecar imports, step by step, then
       loads the BPF program with BCC: RSS and anonymous memory after each
       step tell which import or action the anonymous memory belongs to
       (bench/rss_steps.py, which imports nothing else first).
hold   one process holds the detector (-t 10) attached and watching the idle
       app, loaded today's way (``Detector.load()``, BCC in the process) or
       through ``kernel.loader`` (BCC in a child that exits), with and without
       the sidecar's imports (bench/rss_hold.py); ``--rounds`` of each in
       turn, medians: RSS, its parts, peak RSS, the compiler's peak, and the
       time from start of loading to attached.
USAGE: rss.py [--only where|steps|hold] [--settle S] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from blocksnoop_bench.procs import REPO
from blocksnoop_bench.report import num, table

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


HOLDERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("today: Detector.load(), bcc here", "bcc", ()),
    ("kernel.loader, bcc in a child", "loader", ()),
    ("today + the sidecar's imports", "bcc", ("--imports",)),
    ("kernel.loader + the sidecar's imports", "loader", ("--imports",)),
)
HOLD_COLUMNS = ("LLVM + clang", "libbcc + its libs", "BPF maps")


def hold_once(how: str, pid: int, extra: tuple[str, ...], settle: int) -> dict[str, Any]:
    """One bench/rss_hold.py run: its report, then its memory after ``settle`` s attached."""
    holder = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("rss_hold.py")), how, str(pid), *extra],
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
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in HOLDERS}
    try:
        for _ in range(rounds):
            for name, how, extra in HOLDERS:
                runs[name].append(hold_once(how, app.pid, extra, settle))
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
                mib(middle(r["child_peak_kib"] for r in reports)) if "loader" in name else "-",
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/rss.py", description=__doc__)
    parser.add_argument("--only", choices=("where", "steps", "hold"))
    parser.add_argument("--settle", type=positive_int, default=15)
    parser.add_argument("--rounds", type=positive_int, default=3, help="hold: rounds of each")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, kernel {os.uname().release}, MiB\n")
    if args.only in (None, "where"):
        print(where(args.settle), flush=True)
    if args.only in (None, "steps"):
        print(steps(), flush=True)
    if args.only in (None, "hold"):
        print(hold(args.rounds, min(args.settle, 5)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
