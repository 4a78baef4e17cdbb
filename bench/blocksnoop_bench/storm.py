# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Storm: does the sidecar's memory stay bounded under a steady stream of blocks.

A launch-mode sidecar (``-t 10``, stack sampling and cause on, as by default)
watches apps/kinds_app.py blocking its loop 50 times a second with 12 ms
blocks of every kind in turn, for 10 minutes (1 in quick mode). Every 10 s
the runner reads the sidecar's RSS and that of its Austin children (the
launched app is a child too, and is left out), and the CPU of both.
It reports RSS at start, after one minute and at the end, the least-squares
slope over the last five minutes (or the last half of a shorter run), the
CPU used, blocks reported against blocks injected, and the lost events of
the closing summary.
"""

from __future__ import annotations

import bisect
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from blocksnoop_bench.attribution import KINDS
from blocksnoop_bench.procs import (
    APPS,
    CLK_TCK,
    PYTHON,
    BenchError,
    Sidecar,
    rss_mib,
)
from blocksnoop_bench.report import Section, num, pct, table
from harness.procs import children

THRESHOLD_MS = 10.0
BLOCK_MS = 12.0
RATE_PER_S = 50.0
SECONDS_FULL = 600.0
SECONDS_QUICK = 60.0
SAMPLE_EVERY_S = 10.0
SLOPE_WINDOW_S = 300.0
GOAL_SLOPE_MIB_PER_MIN = 0.1
"""Bounded memory: under 0.1 MiB/min over the last window (6 MiB an hour)."""


def _sample(sidecar: Sidecar, started: float) -> dict[str, Any] | None:
    """RSS and CPU of the sidecar and of its Austin children, which come and go.

    Austin CPU = the sidecar's reaped children (cutime+cstime) plus the live
    Austin processes; only valid while the launched app (the other child,
    reaped last) is still running, which ``app_alive`` says.
    """
    try:
        stat = (Path("/proc") / str(sidecar.pid) / "stat").read_text()
        rss = rss_mib(sidecar.pid)
    except (OSError, BenchError):
        return None  # the sidecar has exited
    fields = stat[stat.rindex(")") + 2 :].split()
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
    austin_rss = austin_cpu = 0.0
    austin_pids = []
    app_alive = False
    for child, comm, child_fields in children(sidecar.pid):
        if not comm.startswith("austin"):
            app_alive = True
            continue
        try:
            austin_rss += rss_mib(child)
        except (OSError, BenchError):
            continue  # it ended between the listing and the read
        austin_pids.append(child)
        austin_cpu += (int(child_fields[11]) + int(child_fields[12])) / CLK_TCK
    return {
        "t_s": time.monotonic() - started,
        "rss_mib": rss,
        "austin_rss_mib": austin_rss,
        "austin_pids": austin_pids,
        "cpu_s": own,
        "austin_cpu_s": reaped + austin_cpu,
        "app_alive": app_alive,
    }


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return 60 * cov / var


def _detected(blocks: list[dict[str, Any]], reports: list[dict[str, Any]]) -> int:
    """Injected blocks overlapped by some report on their thread (sorted sweep; runs are big)."""
    by_tid: dict[int, list[tuple[int, int]]] = {}
    for report in reports:
        by_tid.setdefault(report["tid"], []).append(
            (report["start_monotonic_ns"], report["end_monotonic_ns"])
        )
    for spans in by_tid.values():
        spans.sort()
    found = 0
    for block in blocks:
        spans = by_tid.get(block["tid"], [])
        # The last report starting before the block ends is the only candidate
        # (loop iterations of one thread never overlap each other).
        at = bisect.bisect_left(spans, (block["end_ns"],)) - 1
        if at >= 0 and spans[at][1] > block["start_ns"]:
            found += 1
    return found


def run_storm(quick: bool, raw_dir: Path, python: str = PYTHON) -> Section:
    """Watch a 50-blocks-per-second app for 10 minutes (1 quick) and sample memory."""
    seconds = SECONDS_QUICK if quick else SECONDS_FULL
    sys.stderr.write(f"bench: storm, {RATE_PER_S:g} blocks/s for {seconds:g} s...\n")
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="blocksnoop-bench-") as tmp:
        app_out = Path(tmp) / "injected.json"
        app = [
            python,
            str(APPS / "kinds_app.py"),
            f"--duration-ms={BLOCK_MS:g}",
            f"--rate={RATE_PER_S:g}",
            f"--seconds={seconds:g}",
            f"--out={app_out}",
            "--kinds",
            *KINDS,
        ]
        sidecar = Sidecar(["-t", f"{THRESHOLD_MS:g}", "--", *app], raw_dir / "storm.jsonl")
        try:
            sidecar.wait_attached()
            started = time.monotonic()
            deadline = started + seconds + 120
            next_at = started
            while sidecar.child.process.poll() is None:
                if time.monotonic() > deadline:
                    msg = f"failed to finish the storm: still running after {seconds + 120:g} s"
                    raise BenchError(msg)
                if time.monotonic() >= next_at:
                    sample = _sample(sidecar, started)
                    if sample is not None:
                        samples.append(sample)
                        sys.stderr.write(
                            f"bench:   storm t={sample['t_s']:.0f} s RSS "
                            f"{sample['rss_mib']:.1f} MiB + Austin "
                            f"{sample['austin_rss_mib']:.1f} MiB\n"
                        )
                    next_at += SAMPLE_EVERY_S
                time.sleep(min(1.0, max(0.05, next_at - time.monotonic())))
            code = sidecar.child.wait(timeout=30)
        finally:
            sidecar.child.stop()
        if code != 0 or not app_out.exists():
            msg = f"failed to run the storm target (exit {code}): "
            raise BenchError(msg + sidecar.stderr.text()[-800:])
        injected = json.loads(app_out.read_text())
    (raw_dir / "storm-injected.json").write_text(json.dumps(injected))
    records = sidecar.records()
    result = _analyse(injected, records, samples, seconds)
    return Section(
        slug="storm",
        title="Storm: memory under 50 blocks per second",
        body=_render(result),
        data={"quick": quick, **result, "samples": samples},
    )


def _analyse(
    injected: dict[str, Any],
    records: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    reports = [r for r in records if r.get("type") == "block"]
    summary = next((r for r in records if r.get("type") == "summary"), None)
    blocks = injected["blocks"]
    if len(samples) < 2:
        msg = "failed to sample the storm sidecar: fewer than two samples"
        raise BenchError(msg)
    total = [(s["t_s"], s["rss_mib"] + s["austin_rss_mib"]) for s in samples]
    window = min(SLOPE_WINDOW_S, samples[-1]["t_s"] / 2)
    tail_from = samples[-1]["t_s"] - window
    after_minute = next((s for s in samples if s["t_s"] >= 60 - 1), samples[-1])
    live = [s for s in samples if s["app_alive"]] or samples
    wall = live[-1]["t_s"] - live[0]["t_s"]
    return {
        "python": injected["python"],
        "seconds": seconds,
        "threshold_ms": THRESHOLD_MS,
        "block_ms": BLOCK_MS,
        "rate_per_s": RATE_PER_S,
        "kinds": sorted({b["kind"] for b in blocks}),
        "injected": len(blocks),
        "injected_below_threshold": sum(
            1 for b in blocks if (b["end_ns"] - b["start_ns"]) / 1e6 < THRESHOLD_MS
        ),
        "reported": len(reports),
        "detected": _detected(blocks, reports),
        "no_stack": sum(1 for r in reports if not r.get("stack")),
        "summary": summary,
        "rss_start_mib": samples[0]["rss_mib"],
        "rss_1min_mib": after_minute["rss_mib"],
        "rss_end_mib": samples[-1]["rss_mib"],
        "rss_max_mib": max(s["rss_mib"] for s in samples),
        "austin_rss_start_mib": samples[0]["austin_rss_mib"],
        "austin_rss_1min_mib": after_minute["austin_rss_mib"],
        "austin_rss_end_mib": samples[-1]["austin_rss_mib"],
        "slope_window_s": window,
        "slope_sidecar_mib_per_min": slope_per_min(
            [(s["t_s"], s["rss_mib"]) for s in samples if s["t_s"] >= tail_from]
        ),
        "slope_total_mib_per_min": slope_per_min([p for p in total if p[0] >= tail_from]),
        "cpu_own_pct": 100 * (live[-1]["cpu_s"] - live[0]["cpu_s"]) / wall if wall else None,
        "cpu_austin_pct": (
            100 * (live[-1]["austin_cpu_s"] - live[0]["austin_cpu_s"]) / wall if wall else None
        ),
        "austin_processes_seen": len({p for s in samples for p in s["austin_pids"]}),
    }


def _render(r: dict[str, Any]) -> str:
    slope = r["slope_total_mib_per_min"]
    verdict = "n/a" if slope is None else ("met" if slope <= GOAL_SLOPE_MIB_PER_MIN else "NOT met")
    summary = r["summary"] or {}
    rows = [
        [
            "sidecar",
            num(r["rss_start_mib"], 1),
            num(r["rss_1min_mib"], 1),
            num(r["rss_end_mib"], 1),
            num(r["rss_max_mib"], 1),
            num(r["slope_sidecar_mib_per_min"], 3),
        ],
        [
            "its Austin processes",
            num(r["austin_rss_start_mib"], 1),
            num(r["austin_rss_1min_mib"], 1),
            num(r["austin_rss_end_mib"], 1),
            "-",
            "-",
        ],
        [
            "both",
            num(r["rss_start_mib"] + r["austin_rss_start_mib"], 1),
            num(r["rss_1min_mib"] + r["austin_rss_1min_mib"], 1),
            num(r["rss_end_mib"] + r["austin_rss_end_mib"], 1),
            "-",
            num(slope, 3),
        ],
    ]
    injected = r["injected"]
    share = 100 * r["detected"] / injected if injected else None
    return (
        f"Target Python {r['python']}, `-t {r['threshold_ms']:g}`, {r['block_ms']:g} ms blocks "
        f"at {r['rate_per_s']:g}/s for {r['seconds']:g} s, kinds in turn: "
        f"{', '.join(r['kinds'])}. RSS sampled every {SAMPLE_EVERY_S:g} s from the moment "
        "the probes were attached. Goal (bounded memory): RSS slope over the last "
        f"{r['slope_window_s']:.0f} s <= {GOAL_SLOPE_MIB_PER_MIN:g} MiB/min: {verdict}.\n\n"
        + table(
            [
                "RSS (MiB)",
                "start",
                "after 1 min",
                "end",
                "max",
                f"slope last {r['slope_window_s']:.0f} s (MiB/min)",
            ],
            rows,
            [False, True, True, True, True, True],
        )
        + "\n"
        + table(
            ["figure", "value"],
            [
                ["sidecar CPU, own (% of one core)", num(r["cpu_own_pct"], 1)],
                ["its Austin processes' CPU (% of one core)", num(r["cpu_austin_pct"], 1)],
                ["Austin processes seen (distinct PIDs)", str(r["austin_processes_seen"])],
                ["blocks injected", f"{injected:,}"],
                [
                    "of which shorter than the threshold (app's clock)",
                    f"{r['injected_below_threshold']:,}",
                ],
                [
                    "blocks reported (records)",
                    f"{r['reported']:,}",
                ],
                [
                    "injected blocks overlapped by a report",
                    f"{r['detected']:,} ({pct(share)})",
                ],
                ["reported without a stack", f"{r['no_stack']:,}"],
                ["summary: blocks", str(summary.get("blocks", "n/a"))],
                ["summary: lost events", str(summary.get("lost_events", "n/a"))],
                ["summary: ignored blocks", str(summary.get("ignored_blocks", "n/a"))],
            ],
            [False, True],
        )
    )
