# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Accuracy: does every injected block come out, once, with the right length.

One launch-mode sidecar run per block length D, threshold 0.8 x D, against
apps/blocks_app.py, which blocks its loop N times per kind (CPU, sleep) with
idle awaits in between and records its own monotonic start/end of each
block. Reports are paired with injected blocks by overlap in time (both are
CLOCK_MONOTONIC), so nothing depends on order or count.

The peer, blocksnoop 0.11.1 (peer.py), launches the same app with the same
seed and threshold in the same run, the order alternating per length; its
reports carry a duration but no start or end, so they are paired by the
moment it printed them (peer_scoring.py).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from blocksnoop_bench.pairing import Injected, Span, pair
from blocksnoop_bench.peer import PEER_VERSION, install_peer, run_peer_timed
from blocksnoop_bench.peer_scoring import score_peer
from blocksnoop_bench.procs import Neighbours, TimedApp, run_timed_app
from blocksnoop_bench.report import Section, median, num, pct, table

DURATIONS_MS = (1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0)
KINDS = ("cpu", "sleep")
THRESHOLD_FRACTION = 0.8
IDLE_MS = (20.0, 50.0)
GOAL_ERROR_MS = 0.5
"""DESIGN.md: a block's duration within 0.5 ms of the app's own timing."""
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


def _app(duration_ms: float, count: int, seed: int) -> TimedApp:
    return TimedApp(
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


def _run_one(app: TimedApp, duration_ms: float, raw_dir: Path) -> dict[str, Any]:
    threshold_ms = duration_ms * THRESHOLD_FRACTION
    timings, records = run_timed_app(app, threshold_ms, raw_dir / f"accuracy-{duration_ms:g}ms")
    return {
        "duration_ms": duration_ms,
        "threshold_ms": threshold_ms,
        "injected": json.loads(timings),
        "records": records,
    }


def _run_peer(venv: Path, app: TimedApp, duration_ms: float, raw_dir: Path) -> dict[str, Any]:
    """The same app under the peer, scored per kind by peer_scoring's rules."""
    raw = raw_dir / f"accuracy-peer-{duration_ms:g}ms"
    truth, records, offset = run_peer_timed(venv, app, duration_ms * THRESHOLD_FRACTION, raw)
    scored = score_peer(truth, records, offset)
    cells = []
    for kind in KINDS:
        mine = [v for v in scored["verdicts"] if v["kind"] == kind]
        errors = [v["error_ms"] for v in mine if v["error_ms"] is not None]
        cells.append(
            {
                "kind": kind,
                "injected": len(mine),
                "detected": sum(v["detected"] for v in mine),
                "error_median_ms": median(errors),
                "error_max_abs_ms": max((abs(e) for e in errors), default=None),
            }
        )
    return {
        "cells": cells,
        "false_positives": scored["false_positives"],
        "verdicts": scored["verdicts"],
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
        f"otel-blocksnoop: recall {detected}/{injected} "
        f"({pct(100 * detected / injected if injected else None)}), "
        f"false positives {false_positives}, worst |error| {num(worst, 3)} ms. "
        f"Goal (100% recall, 0 false positives, |error| <= {GOAL_ERROR_MS:g} ms): {verdict}. "
        + _peer_headline(results)
        + f" (Run took {elapsed_s:.0f} s.)\n\n"
        "Truth: the app writes its own. apps/blocks_app.py reads `time.monotonic_ns()` "
        "(CLOCK_MONOTONIC, the clock of the kernel's timestamps) right before and after each "
        "blocking call and writes them to a JSON file when it exits; nothing a tool reports "
        "is used as truth. Error = the tool's duration - the app's; positive means the tool "
        "saw a longer loop iteration than the injected call. Ours is paired with the blocks "
        "by overlap, and its error splits exactly into lead (epoll return to the app's start "
        "stamp) plus trail (the app's end stamp to the next epoll entry): loop time the app "
        "did not time. The peer reports a duration (from its BPF timestamps) but no start or "
        "end, so it is paired by the moment it printed the report (peer_scoring.py).\n\n"
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
        + f"\nSide by side with blocksnoop {PEER_VERSION}, launched on the same app with the "
        "same seed and threshold in the same run (the order alternating per length).\n\n"
        + _side_by_side(results)
    )


def _peer_headline(results: list[dict[str, Any]]) -> str:
    cells = [cell for result in results for cell in result["peer"]["cells"]]
    injected = sum(c["injected"] for c in cells)
    detected = sum(c["detected"] for c in cells)
    worst = max((c["error_max_abs_ms"] or 0.0 for c in cells), default=0.0)
    false_positives = sum(r["peer"]["false_positives"] for r in results)
    return (
        f"blocksnoop {PEER_VERSION}, same run: recall {detected}/{injected} "
        f"({pct(100 * detected / injected if injected else None)}), "
        f"false positives {false_positives}, worst |error| {num(worst, 3)} ms."
    )


def _side_by_side(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in sorted(results, key=lambda r: r["duration_ms"]):
        peer = {cell["kind"]: cell for cell in result["peer"]["cells"]}
        for ours in result["cells"]:
            theirs = peer[ours["kind"]]
            rows.append(
                [
                    ours["kind"],
                    num(result["duration_ms"], 0),
                    str(ours["injected"]),
                    str(ours["detected"]),
                    num(ours["error_median_ms"], 3),
                    num(ours["error_max_abs_ms"], 3),
                    str(theirs["detected"]),
                    num(theirs["error_median_ms"], 3),
                    num(theirs["error_max_abs_ms"], 3),
                ]
            )
    rows.sort(key=lambda row: row[0])
    rows.append(
        [
            "false positives",
            "",
            "",
            str(sum(r["false_positives"] for r in results)),
            "",
            "",
            str(sum(r["peer"]["false_positives"] for r in results)),
            "",
            "",
        ]
    )
    return table(
        [
            "kind",
            "D (ms)",
            "injected",
            "ours: detected",
            "error median (ms)",
            "max abs (ms)",
            "peer: detected",
            "error median (ms)",
            "max abs (ms)",
        ],
        rows,
        [False, *[True] * 8],
    )


def run_accuracy(quick: bool, raw_dir: Path, neighbours: Neighbours) -> Section:
    """Run one launch-mode session per block length and tool, so each gets its own threshold."""
    started = time.monotonic()
    venv = install_peer()
    results = []
    for seed, duration_ms in enumerate(DURATIONS_MS):
        count = blocks_per_kind(duration_ms, quick)
        app = _app(duration_ms, count, seed)
        sys.stderr.write(f"bench: accuracy {duration_ms:g} ms x {count} per kind...\n")
        result: dict[str, Any] = {}
        for tool in ("ours", "peer") if seed % 2 == 0 else ("peer", "ours"):
            neighbours.wait_quiet(QUIET_WAIT_S)
            with neighbours.window() as window:
                if tool == "ours":
                    result.update(_analyse(_run_one(app, duration_ms, raw_dir)))
                    run = result
                else:
                    run = _run_peer(venv, app, duration_ms, raw_dir)
                    result["peer"] = run
            run["others_cpu_pct"] = window[0].foreign_cpu_pct
            run["other_sidecar"] = window[0].foreign_sidecar
        results.append(result)
    elapsed = time.monotonic() - started
    return Section(
        slug="accuracy",
        title="Accuracy",
        body=_render(results, elapsed),
        data={"quick": quick, "elapsed_s": elapsed, "runs": results},
    )
