#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Node mode's cost: many idle apps watched at once, and apps that keep coming and going.

idle   one sidecar in node mode (``--match``, defaults: stacks, cause, trace
       links) started first; one idle asyncio app (bench/apps/idle_app.py,
       a loop iteration every 0.5 s) is started and found, then ``--apps - 1``
       more. After each step and ``--settle`` s: the sidecar's RSS, its
       Austins' (one per app) RSS summed, and the CPU of the sidecar and of
       its children over ``--seconds`` (% of one core). ``--otlp``: the
       sidecar exports to an OTLP receiver (harness/otlp.py) in this process,
       so each app also has its meter provider (OTEL_METRIC_EXPORT_INTERVAL).
churn  a fresh sidecar the same way; for ``--churn-seconds`` s, ``--live``
       blocker apps (harness/targets/blocker.py) run at any time, each started
       after the sidecar, blocking its loop once for 60 ms 1.2-2.5 s after its
       start and exiting 0.3 s later, a new one started as one exits. The
       sidecar's RSS is read every 5 s: its slope (MiB per minute, by least
       squares, after the first 30 s) says whether memory grows with the
       processes seen; CPU (sidecar and children) per app started; blocks
       reported for the apps against the blocks they made; and the summary's
       processes (found, let go, state still held).

USAGE: node_cost.py [--only idle|churn] [--apps N] [--seconds S] [--settle S]
                    [--churn-seconds S] [--live K] [--threshold MS] [--otlp] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from blocksnoop_bench.procs import (
    APPS,
    PYTHON,
    REPO,
    BenchError,
    Child,
    Sidecar,
    cpu_times,
    rss_mib,
)

from harness import TARGETS
from harness.otlp import OtlpReceiver
from harness.procs import children
from otel_blocksnoop.cli import positive_int

WATCHING = "watching PID"
RSS_EVERY_S = 5.0
WARM_UP_S = 30.0
FIND_TIMEOUT_S = 30.0


def _watched(sidecar: Sidecar) -> int:
    return sum(1 for line in sidecar.stderr.lines if WATCHING in line)


def _wait_watched(sidecar: Sidecar, count: int) -> None:
    deadline = time.monotonic() + FIND_TIMEOUT_S
    while _watched(sidecar) < count:
        if time.monotonic() > deadline:
            msg = f"the sidecar watches {_watched(sidecar)} apps, not {count}"
            raise BenchError(msg)
        time.sleep(0.1)


def _austins(sidecar: Sidecar) -> list[int]:
    return [pid for pid, comm, _ in children(sidecar.pid) if comm == "austin"]


def _measure(sidecar: Sidecar, seconds: float) -> dict[str, float]:
    before = cpu_times(sidecar.pid)
    time.sleep(seconds)
    own, kids = cpu_times(sidecar.pid).percent_since(before)
    austins = _austins(sidecar)
    austin_rss = 0.0
    for pid in austins:
        try:
            austin_rss += rss_mib(pid)
        except (OSError, BenchError):
            continue
    return {
        "sidecar_rss_mib": round(rss_mib(sidecar.pid), 1),
        "austins": len(austins),
        "austins_rss_mib": round(austin_rss, 1),
        "sidecar_cpu_pct": round(own, 2),
        "children_cpu_pct": round(kids, 2),
    }


def idle(  # noqa: PLR0913 - the phase's knobs
    apps: int, seconds: float, settle_s: float, threshold_ms: float, work: Path, *, otlp: bool
) -> None:
    marker = f"node-bench-idle-{os.getpid()}"
    receiver = OtlpReceiver().start() if otlp else None
    if receiver is not None:  # the sidecar inherits it; the receiver runs in this process
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{receiver.grpc_endpoint}"
        os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    sidecar = Sidecar(["-t", f"{threshold_ms:g}", "--match", marker], work / "idle.jsonl")
    started: list[Child] = []
    try:
        sidecar.stderr.wait_for(lambda line: "Ctrl-C to stop" in line, 60, "the sidecar start")
        for count in (1, apps):
            while len(started) < count:
                started.append(
                    Child(
                        [PYTHON, str(APPS / "idle_app.py"), marker],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            _wait_watched(sidecar, count)
            time.sleep(settle_s)
            measured = _measure(sidecar, seconds)
            print(json.dumps({"phase": "idle", "otlp": otlp, "apps": count, **measured}))
    finally:
        sidecar.stop()
        for child in started:
            child.stop()
        if receiver is not None:
            receiver.stop()
            for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"):
                os.environ.pop(name, None)


def _blocker(out: Path, rng: random.Random) -> subprocess.Popen[bytes]:
    delay = rng.uniform(1.2, 2.5)
    return subprocess.Popen(
        [
            PYTHON,
            str(TARGETS / "blocker.py"),
            "sleep",
            "--ms",
            "60",
            "--delay",
            f"{delay:.2f}",
            "--linger",
            "0.3",
            "--out",
            str(out),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _threads_and_fds(pid: int) -> tuple[int, int]:
    """The sidecar's threads and open file descriptors now."""
    status = (Path("/proc") / str(pid) / "status").read_text()
    threads = next(
        int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:")
    )
    return threads, sum(1 for _ in (Path("/proc") / str(pid) / "fd").iterdir())


def _same(reported: dict[str, Any], made: dict[str, Any]) -> bool:
    """The reported block is the made one: same thread, overlapping in time."""
    return bool(
        reported["tid"] == made["tid"]
        and reported["start_monotonic_ns"] < made["end_ns"]
        and reported["end_monotonic_ns"] > made["start_ns"]
    )


def churn(seconds: float, live: int, threshold_ms: float, work: Path) -> None:
    truth = work / "churn-truth.jsonl"  # in a directory of this run's own: the marker
    pattern = f"blocker.py sleep .* --out {re.escape(str(truth))}$"
    sidecar = Sidecar(["-t", f"{threshold_ms:g}", "--match", pattern], work / "churn.jsonl")
    rng = random.Random(14)
    running: list[subprocess.Popen[bytes]] = []
    pids: set[int] = set()
    rss: list[tuple[float, float]] = []
    held: list[tuple[int, int]] = []  # threads and open fds of the sidecar, with rss
    try:
        sidecar.stderr.wait_for(lambda line: "Ctrl-C to stop" in line, 60, "the sidecar start")
        start = time.monotonic()
        before = cpu_times(sidecar.pid)
        next_rss = start
        while (now := time.monotonic()) - start < seconds:
            for process in [p for p in running if p.poll() is not None]:
                running.remove(process)
            while len(running) < live:
                process = _blocker(truth, rng)
                running.append(process)
                pids.add(process.pid)
            if now >= next_rss:
                rss.append((now - start, rss_mib(sidecar.pid)))
                held.append(_threads_and_fds(sidecar.pid))
                next_rss += RSS_EVERY_S
            time.sleep(0.05)
        for process in running:
            process.wait(timeout=10)
        own, kids = cpu_times(sidecar.pid).percent_since(before)
        elapsed = time.monotonic() - start
        time.sleep(3)  # the last blocks' samples and export
    finally:
        sidecar.stop()
        for process in running:
            process.kill()
            process.wait()
    made = [json.loads(line) for line in truth.read_text().splitlines() if line.strip()]
    reported = [r for r in sidecar.records() if r.get("type") == "block" and r["pid"] in pids]
    found = [t for t in made if any(_same(r, t) for r in reported)]
    others = Counter(
        f"{r['end_reason']}/{r['cause']}" for r in reported if not any(_same(r, t) for t in made)
    )
    steady = [(t, m) for t, m in rss if t >= WARM_UP_S]
    slope = statistics.linear_regression([t for t, _ in steady], [m for _, m in steady]).slope
    summary = sidecar.summary() or {}
    cpu_s = (own + kids) / 100 * elapsed
    print(
        json.dumps(
            {
                "phase": "churn",
                "seconds": round(elapsed),
                "apps_started": len(pids),
                "blocks_made": len(made),
                "blocks_reported": len(reported),
                "blocks_made_and_reported": len(found),
                "other_blocks_by_end_and_cause": dict(others),
                "sidecar_cpu_pct": round(own, 2),
                "children_cpu_pct": round(kids, 2),
                "cpu_ms_per_app": round(cpu_s / len(pids) * 1000, 1),
                "rss_first_mib": round(rss[0][1], 1),
                "rss_at_warm_up_mib": round(steady[0][1], 1),
                "rss_last_mib": round(rss[-1][1], 1),
                "rss_max_mib": round(max(m for _, m in rss), 1),
                "rss_slope_mib_per_min": round(slope * 60, 3),
                "rss_by_minute_mib": [round(m, 1) for t, m in rss if t % 60 < RSS_EVERY_S],
                "threads_fds_by_minute": [
                    h for (t, _), h in zip(rss, held, strict=True) if t % 60 < RSS_EVERY_S
                ],
                "processes": summary.get("processes"),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("idle", "churn"))
    parser.add_argument("--apps", type=positive_int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--churn-seconds", type=float, default=240.0)
    parser.add_argument("--live", type=positive_int, default=10)
    parser.add_argument("--threshold", type=float, default=50.0)
    parser.add_argument(
        "--otlp", action="store_true", help="idle: export to an OTLP receiver in this process"
    )
    parser.add_argument("--keep", type=Path, help="keep the sidecars' output and truth here")
    args = parser.parse_args()
    os.chdir(REPO)
    with tempfile.TemporaryDirectory(prefix="node-bench-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=True)
        try:
            if args.only in (None, "idle"):
                idle(args.apps, args.seconds, args.settle, args.threshold, work, otlp=args.otlp)
            if args.only in (None, "churn"):
                churn(args.churn_seconds, args.live, args.threshold, work)
        except BenchError as exc:
            sys.stderr.write(f"node_cost: {exc}\n")
            sys.exit(1)
        finally:
            Child.stop_all()


if __name__ == "__main__":
    main()
