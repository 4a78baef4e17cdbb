# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Accuracy: does every injected block come out, once, with the right length.

One launch-mode sidecar run per block length D, threshold 0.8 x D, against
apps/blocks_app.py, which blocks its loop N times per kind (CPU, sleep) with
idle awaits in between and records its own monotonic start/end of each
block. Reports are paired with injected blocks by overlap in time (both are
CLOCK_MONOTONIC), so nothing depends on order or count.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocksnoop_bench.procs import Neighbours, TimedApp, run_timed_app
from blocksnoop_bench.report import Section, num, pct, table

DURATIONS_MS = (1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0)
KINDS = ("cpu", "sleep")
THRESHOLD_FRACTION = 0.8
IDLE_MS = (20.0, 50.0)
GOAL_ERROR_MS = 1.0
QUIET_WAIT_S = 15.0
"""Longest wait before a run for other people's work on the machine to end."""
NS_PER_MS = 1_000_000


def blocks_per_kind(duration_ms: float, quick: bool) -> int:
    """Enough blocks for a stable median while the whole run stays near a minute."""
    if quick:
        return 2 if duration_ms >= 500 else 5
    if duration_ms >= 500:
        return 10
    if duration_ms >= 100:
        return 30
    if duration_ms >= 50:
        return 40
    return 50


@dataclass(frozen=True, slots=True)
class Span:
    """A time interval on CLOCK_MONOTONIC, the clock both sides report in."""

    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        """Length in ns; kept integral so sub-microsecond errors are not rounded away."""
        return self.end_ns - self.start_ns

    def overlaps(self, other: Span) -> bool:
        """Pair by overlap, not by order: a missed or extra report shifts nothing."""
        return self.start_ns < other.end_ns and other.start_ns < self.end_ns


@dataclass(frozen=True, slots=True)
class Injected:
    """One block as the app timed it."""

    kind: str
    span: Span


@dataclass(frozen=True, slots=True)
class Pairing:
    """Reports and injected blocks of one run, paired by overlap."""

    hits: dict[int, list[int]]  # injected index -> indexes of reports overlapping it
    false_positives: list[int]  # reports overlapping no injected block
    merged: int  # reports overlapping more than one injected block

    def singles(
        self, injected: list[Injected], reports: list[Span], kind: str
    ) -> list[tuple[Span, Span]]:
        """Return (injected, reported) spans of the blocks reported exactly once.

        A split or merged report has no single length to compare, and is
        counted on its own instead.
        """
        return [
            (injected[i].span, reports[found[0]])
            for i, found in self.hits.items()
            if injected[i].kind == kind and len(found) == 1
        ]


def pair(injected: list[Injected], reports: list[Span]) -> Pairing:
    """Pair every report with the injected blocks it overlaps (quadratic; runs are small)."""
    hits: dict[int, list[int]] = {}
    false_positives: list[int] = []
    merged = 0
    for r, report in enumerate(reports):
        overlapping = [i for i, block in enumerate(injected) if block.span.overlaps(report)]
        if not overlapping:
            false_positives.append(r)
        if len(overlapping) > 1:
            merged += 1
        for i in overlapping:
            hits.setdefault(i, []).append(r)
    return Pairing(hits=hits, false_positives=false_positives, merged=merged)


def _run_one(duration_ms: float, count: int, raw_dir: Path, seed: int) -> dict[str, Any]:
    threshold_ms = duration_ms * THRESHOLD_FRACTION
    app = TimedApp(
        "blocks_app.py",
        [
            f"--duration-ms={duration_ms:g}",
            f"--count={count}",
            "--idle-ms",
            f"{IDLE_MS[0]:g}",
            f"{IDLE_MS[1]:g}",
            f"--seed={seed}",
        ],
        expected_s=2 * count * (duration_ms + sum(IDLE_MS) / 2) / 1000,
        what=f"{duration_ms:g} ms accuracy target",
    )
    timings, records = run_timed_app(app, threshold_ms, raw_dir / f"accuracy-{duration_ms:g}ms")
    return {
        "duration_ms": duration_ms,
        "threshold_ms": threshold_ms,
        "injected": json.loads(timings),
        "records": records,
    }


def _analyse(run: dict[str, Any]) -> dict[str, Any]:
    injected = [
        Injected(b["kind"], Span(b["start_ns"], b["end_ns"])) for b in run["injected"]["blocks"]
    ]
    blocks = [r for r in run["records"] if r.get("type") == "block"]
    reports = [Span(r["start_monotonic_ns"], r["end_monotonic_ns"]) for r in blocks]
    idles = [Span(i["start_ns"], i["end_ns"]) for i in run["injected"]["idles"]]
    pairing = pair(injected, reports)
    summary: dict[str, Any] = next((r for r in run["records"] if r.get("type") == "summary"), {})
    cells = []
    for kind in KINDS:
        of_kind = [i for i, block in enumerate(injected) if block.kind == kind]
        singles = pairing.singles(injected, reports, kind)
        errors = [(rep.duration_ns - inj.duration_ns) / NS_PER_MS for inj, rep in singles]
        # error = lead + trail: loop time before the app's start stamp and after its end stamp.
        leads = [(inj.start_ns - rep.start_ns) / NS_PER_MS for inj, rep in singles]
        trails = [(rep.end_ns - inj.end_ns) / NS_PER_MS for inj, rep in singles]
        measured = [injected[i].span.duration_ns / NS_PER_MS for i in of_kind]
        cells.append(
            {
                "kind": kind,
                "duration_ms": run["duration_ms"],
                "threshold_ms": run["threshold_ms"],
                "injected": len(of_kind),
                "detected": sum(1 for i in of_kind if i in pairing.hits),
                "split": sum(1 for i in of_kind if len(pairing.hits.get(i, [])) > 1),
                "app_measured_median_ms": statistics.median(measured) if measured else None,
                "error_median_ms": statistics.median(errors) if errors else None,
                "error_max_abs_ms": max((abs(e) for e in errors), default=None),
                "error_min_ms": min(errors, default=None),
                "error_max_ms": max(errors, default=None),
                "lead_median_ms": statistics.median(leads) if leads else None,
                "lead_max_ms": max(leads, default=None),
                "trail_median_ms": statistics.median(trails) if trails else None,
                "trail_max_ms": max(trails, default=None),
            }
        )
    fp_spans = [reports[r] for r in pairing.false_positives]
    return {
        "duration_ms": run["duration_ms"],
        "threshold_ms": run["threshold_ms"],
        "cells": cells,
        "reported": len(reports),
        "false_positives": len(fp_spans),
        "false_positives_in_idle_awaits": sum(
            1 for fp in fp_spans if any(fp.overlaps(idle) for idle in idles)
        ),
        "false_positive_ms": [fp.duration_ns / NS_PER_MS for fp in fp_spans],
        "merged": pairing.merged,
        "lost_events": summary.get("lost_events"),
        "ignored_blocks": summary.get("ignored_blocks"),
        "thread_kinds": sorted({str(b.get("thread_kind")) for b in blocks}),
    }


def _render(results: list[dict[str, Any]], elapsed_s: float) -> str:
    cells = [cell for result in results for cell in result["cells"]]
    rows = [
        [
            cell["kind"],
            num(cell["duration_ms"], 0),
            num(cell["threshold_ms"], 1),
            str(cell["injected"]),
            str(cell["detected"]),
            pct(100 * cell["detected"] / cell["injected"] if cell["injected"] else None),
            num(cell["app_measured_median_ms"], 3),
            num(cell["error_median_ms"], 3),
            num(cell["error_max_abs_ms"], 3),
            num(cell["lead_max_ms"], 3),
            num(cell["trail_max_ms"], 3),
        ]
        for cell in sorted(cells, key=lambda c: (c["kind"], c["duration_ms"]))
    ]
    per_run = [
        [
            num(r["duration_ms"], 0),
            num(r["threshold_ms"], 1),
            str(r["reported"]),
            str(r["false_positives"]),
            ", ".join(num(ms, 2) for ms in r["false_positive_ms"][:6]) or "-",
            str(r["merged"]),
            str(r["lost_events"]),
            str(r["ignored_blocks"]),
            num(r["others_cpu_pct"], 0) + ("+sidecar" if r["other_sidecar"] else ""),
        ]
        for r in results
    ]
    injected = sum(c["injected"] for c in cells)
    detected = sum(c["detected"] for c in cells)
    false_positives = sum(r["false_positives"] for r in results)
    worst = max((c["error_max_abs_ms"] or 0.0 for c in cells), default=0.0)
    missing_goal = [
        f"{c['kind']} {c['duration_ms']:g} ms"
        for c in cells
        if c["detected"] < c["injected"] or (c["error_max_abs_ms"] or 0.0) > GOAL_ERROR_MS
    ]
    verdict = (
        "met in every cell"
        if not missing_goal and false_positives == 0
        else "not met for: " + (", ".join(missing_goal) or "false positives")
    )
    return (
        f"Recall {detected}/{injected} ({pct(100 * detected / injected if injected else None)}), "
        f"false positives {false_positives}, worst |error| {num(worst, 3)} ms "
        f"(run took {elapsed_s:.0f} s). "
        f"Goal (100% recall, 0 false positives, |error| <= {GOAL_ERROR_MS:g} ms): {verdict}.\n\n"
        "Error = sidecar duration - the app's own `time.monotonic_ns()` around the block; "
        "positive means the sidecar saw a longer loop iteration than the injected call. "
        "It splits exactly into lead (epoll return to the app's start stamp) plus trail "
        "(the app's end stamp to the next epoll entry): loop time the app did not time.\n\n"
        + table(
            [
                "kind",
                "D (ms)",
                "threshold (ms)",
                "injected",
                "detected",
                "recall",
                "app-measured median (ms)",
                "error median (ms)",
                "error max abs (ms)",
                "lead max (ms)",
                "trail max (ms)",
            ],
            rows,
            [False, *[True] * 10],
        )
        + "\nPer run (one launch-mode sidecar each; both kinds interleaved). Others' CPU: "
        "what processes this benchmark did not start used meanwhile, in % of one core "
        "(+sidecar: another otel-blocksnoop ran too); CPU contention lengthens the trail.\n\n"
        + table(
            [
                "D (ms)",
                "threshold (ms)",
                "reported",
                "false positives",
                "their durations (ms)",
                "merged",
                "lost",
                "ignored",
                "others' CPU (%)",
            ],
            per_run,
            [True, True, True, True, False, True, True, True, True],
        )
    )


def run_accuracy(quick: bool, raw_dir: Path, neighbours: Neighbours) -> Section:
    """Run one launch-mode session per block length, so each gets its own threshold."""
    started = time.monotonic()
    results = []
    for seed, duration_ms in enumerate(DURATIONS_MS):
        count = blocks_per_kind(duration_ms, quick)
        sys.stderr.write(f"bench: accuracy {duration_ms:g} ms x {count} per kind...\n")
        neighbours.wait_quiet(QUIET_WAIT_S)
        with neighbours.window() as window:
            run = _run_one(duration_ms, count, raw_dir, seed)
        result = _analyse(run)
        result["others_cpu_pct"] = window[0].foreign_cpu_pct
        result["other_sidecar"] = window[0].foreign_sidecar
        results.append(result)
    elapsed = time.monotonic() - started
    return Section(
        slug="accuracy",
        title="Accuracy",
        body=_render(results, elapsed),
        data={"quick": quick, "elapsed_s": elapsed, "runs": results},
    )
