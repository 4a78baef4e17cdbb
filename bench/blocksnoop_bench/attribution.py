# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Attribution: does each block come with the right call site and the right cause.

One launch-mode sidecar run per block length D (2-100 ms), threshold D/2
(at least 1 ms), against apps/kinds_app.py, which blocks its loop N times
in each of seven ways (sleep, cpu, hashlib, read, subprocess, lock, gil),
shuffled, with idle awaits between. The app records its own monotonic
start/end, thread id and kind of each block, and the true call site (the
marked line of the app that blocks). Reports are paired with injected
blocks by time overlap on the same thread (the accuracy benchmark's
``pair``); when a block overlaps several reports, the longest overlap wins.

Attribution = the report's ``call_site`` (function, file, line) equals the
true one; cause = its ``cause`` (and ``syscall`` where one is expected)
matches the kind. Both are shares of all injected blocks: a missed block
counts as wrong. While the sidecar does not write ``cause``, those columns
say n/a.

The peer, blocksnoop 0.11.1 (peer.py), launches the same app with the same
seed and threshold in the same run, the order alternating per length; its
reports are scored by peer_scoring.py (the blocking function in the first
stack it lists, in the last, in any).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocksnoop_bench.pairing import Injected, Span, pair
from blocksnoop_bench.peer import PEER_VERSION, install_peer, run_peer_timed
from blocksnoop_bench.peer_scoring import score_peer
from blocksnoop_bench.procs import PYTHON, SID_PREFIX, Neighbours, TimedApp, run_timed_app
from blocksnoop_bench.report import Section, num, pct, table

DURATIONS_MS = (2.0, 5.0, 10.0, 50.0, 100.0)
KINDS = ("sleep", "cpu", "hashlib", "read", "subprocess", "lock", "gil")
THRESHOLD_FRACTION = 0.5
MIN_THRESHOLD_MS = 1.0
IDLE_MS = (20.0, 40.0)
QUIET_WAIT_S = 15.0
"""Longest wait before a run for other people's work on the machine to end."""
NS_PER_MS = 1_000_000
LONG_MS = 10.0
"""Blocks this long or longer have the stricter goals."""
GOAL_ATTRIBUTION_LONG = 99.0
GOAL_ATTRIBUTION_SHORT = 95.0
GOAL_CAUSE_LONG = 99.0
SELECT_SYSCALLS = frozenset({"select", "pselect6"})
"""time.sleep before CPython 3.11 waits in select(), not clock_nanosleep()."""


@dataclass(frozen=True, slots=True)
class Expected:
    """The cause a kind must get, and the syscall names accepted with it."""

    cause: str
    syscalls: frozenset[str] | None = None


def expected_cause(kind: str, python: str) -> Expected:
    """What the sidecar should say about a block of ``kind`` in a target on ``python``."""
    major, minor = (int(part) for part in python.split(".")[:2])
    if kind == "sleep":
        names = frozenset({"clock_nanosleep"}) if (major, minor) >= (3, 11) else SELECT_SYSCALLS
        return Expected("syscall", names)
    syscalls = {"read": "read", "subprocess": "wait4", "lock": "futex"}
    if kind in syscalls:
        return Expected("syscall", frozenset({syscalls[kind]}))
    return Expected("gil" if kind == "gil" else "cpu")


def blocks_per_kind(duration_ms: float, quick: bool) -> int:
    """Enough blocks per cell for a percentage with one-block resolution near 3%."""
    if quick:
        return 3
    if duration_ms >= 100:
        return 20
    if duration_ms >= 50:
        return 25
    return 30


def threshold_for(duration_ms: float) -> float:
    """Half the block length: far enough below it that every block crosses it."""
    return max(MIN_THRESHOLD_MS, duration_ms * THRESHOLD_FRACTION)


def _site(frame: dict[str, Any] | None) -> tuple[str, str, int] | None:
    if not frame:
        return None
    line = frame.get("line")
    return (
        str(frame.get("function")),
        os.path.normpath(str(frame.get("file"))),
        int(line) if line is not None else -1,
    )


def _app(duration_ms: float, count: int, seed: int, python: str) -> TimedApp:
    return TimedApp(
        "kinds_app.py",
        [
            f"--duration-ms={duration_ms:g}",
            f"--count={count}",
            "--idle-ms",
            f"{IDLE_MS[0]:g}",
            f"{IDLE_MS[1]:g}",
            f"--seed={seed}",
        ],
        expected_s=len(KINDS) * count * (2 * duration_ms + sum(IDLE_MS) / 2 + 10) / 1000,
        what=f"{duration_ms:g} ms attribution target",
        python=python,
    )


def _tag(duration_ms: float, python: str, tool: str) -> str:
    who = "" if tool == "ours" else f"{tool}-"
    name = (
        python.replace(":", "")
        if python.startswith(SID_PREFIX)
        else Path(python).parent.parent.name
    )
    return f"attribution-{who}{name or 'py'}-{duration_ms:g}ms"


def _run_one(app: TimedApp, duration_ms: float, raw_dir: Path) -> dict[str, Any]:
    threshold_ms = threshold_for(duration_ms)
    raw = raw_dir / _tag(duration_ms, app.python, "ours")
    timings, records = run_timed_app(app, threshold_ms, raw)
    return {
        "duration_ms": duration_ms,
        "threshold_ms": threshold_ms,
        "injected": json.loads(timings),
        "records": records,
    }


def _run_peer(venv: Path, app: TimedApp, duration_ms: float, raw_dir: Path) -> dict[str, Any]:
    """The same app under the peer; how often it names the blocking function, by stack listed."""
    raw = raw_dir / _tag(duration_ms, app.python, "peer")
    truth, records, offset = run_peer_timed(venv, app, threshold_for(duration_ms), raw)
    verdicts = score_peer(truth, records, offset)["verdicts"]
    return {
        "injected": len(verdicts),
        "detected": sum(v["detected"] for v in verdicts),
        "function_ok": sum(v["function_ok"] for v in verdicts),
        "function_last_stack": sum(v.get("function_last_stack", False) for v in verdicts),
        "function_in_stack": sum(v["function_in_stack"] for v in verdicts),
        "verdicts": verdicts,
    }


def _longest_overlap(span: Span, reports: list[Span]) -> int | None:
    """Index of the report sharing the most time with ``span`` (None if there is none)."""
    if not reports:
        return None
    shared = [min(span.end_ns, r.end_ns) - max(span.start_ns, r.start_ns) for r in reports]
    return shared.index(max(shared))


def _judge(
    block: dict[str, Any],
    report: dict[str, Any] | None,
    truth: tuple[str, str, int],
    names: frozenset[str],
    python: str,
) -> dict[str, Any]:
    """Score one injected block against the report paired with it (None: missed)."""
    if report is None:
        return {"detected": False, "site_ok": False, "function_ok": False, "no_stack": False}
    site = _site(report.get("call_site"))
    # Austin names a method "Class.method" on 3.11+ (co_qualname), "method" before.
    function_ok = site is not None and site[0] in names and site[1] == truth[1]
    verdict: dict[str, Any] = {
        "detected": True,
        "site_ok": function_ok and site is not None and site[2] == truth[2],
        "function_ok": function_ok,
        "no_stack": not report.get("stack"),
        "reported_site": list(site) if site else None,
        "cause": report.get("cause"),
        "syscall": report.get("syscall"),
    }
    if "cause" in report:
        want = expected_cause(block["kind"], python)
        verdict["cause_ok"] = report.get("cause") == want.cause and (
            want.syscalls is None or report.get("syscall") in want.syscalls
        )
    return verdict


def _analyse(run: dict[str, Any]) -> dict[str, Any]:
    app = run["injected"]
    python = app["python"]
    truths = {
        kind: (site["function"], os.path.normpath(site["file"]), site["line"])
        for kind, site in app["call_sites"].items()
    }
    names = {
        kind: frozenset({site["function"], site.get("qualname", site["function"])})
        for kind, site in app["call_sites"].items()
    }
    reports = [r for r in run["records"] if r.get("type") == "block"]
    verdicts: list[dict[str, Any]] = []
    by_tid: dict[int, list[int]] = {}
    for index, block in enumerate(app["blocks"]):
        by_tid.setdefault(block["tid"], []).append(index)
    for tid, indexes in by_tid.items():
        mine = [r for r in reports if r.get("tid") == tid]
        spans = [Span(r["start_monotonic_ns"], r["end_monotonic_ns"]) for r in mine]
        injected = [
            Injected(
                app["blocks"][i]["kind"],
                Span(app["blocks"][i]["start_ns"], app["blocks"][i]["end_ns"]),
            )
            for i in indexes
        ]
        pairing = pair(injected, spans)
        for local, index in enumerate(indexes):
            block = app["blocks"][index]
            found = pairing.hits.get(local, [])

            best = _longest_overlap(injected[local].span, [spans[r] for r in found])
            best = found[best] if best is not None else None
            verdict = _judge(
                block,
                mine[best] if best is not None else None,
                truths[block["kind"]],
                names[block["kind"]],
                python,
            )
            verdicts.append({"kind": block["kind"], "split": len(found) > 1, **verdict})
    cells = []
    for kind in KINDS:
        mine_v = [v for v in verdicts if v["kind"] == kind]
        wrong = Counter(
            f"{v['reported_site'][0]}:{v['reported_site'][2]}" if v.get("reported_site") else "none"
            for v in mine_v
            if v["detected"] and not v["site_ok"]
        )
        causes = Counter(f"{v.get('cause')}/{v.get('syscall')}" for v in mine_v if v["detected"])
        has_cause = any("cause_ok" in v for v in mine_v)
        lengths = [
            (b["end_ns"] - b["start_ns"]) / NS_PER_MS for b in app["blocks"] if b["kind"] == kind
        ]
        cells.append(
            {
                "kind": kind,
                "short": sum(1 for ms in lengths if ms < run["threshold_ms"]),
                "duration_ms": run["duration_ms"],
                "injected": len(mine_v),
                "detected": sum(v["detected"] for v in mine_v),
                "site_ok": sum(v["site_ok"] for v in mine_v),
                "function_ok": sum(v["function_ok"] for v in mine_v),
                "no_stack": sum(v["no_stack"] for v in mine_v),
                "cause_ok": sum(v.get("cause_ok", False) for v in mine_v) if has_cause else None,
                "split": sum(v["split"] for v in mine_v),
                "wrong_sites": dict(wrong.most_common(5)),
                "causes_seen": dict(causes.most_common(5)),
            }
        )
    summary: dict[str, Any] = next((r for r in run["records"] if r.get("type") == "summary"), {})
    return {
        "duration_ms": run["duration_ms"],
        "threshold_ms": run["threshold_ms"],
        "python": python,
        "cells": cells,
        "reported": len(reports),
        "lost_events": summary.get("lost_events"),
        "true_sites": {kind: list(site) for kind, site in truths.items()},
    }


def _share(part: int | None, whole: int) -> float | None:
    return None if part is None or not whole else 100 * part / whole


def _goal(duration_ms: float, what: str) -> float | None:
    if what == "site":
        return GOAL_ATTRIBUTION_LONG if duration_ms >= LONG_MS else GOAL_ATTRIBUTION_SHORT
    return GOAL_CAUSE_LONG if duration_ms >= LONG_MS else None


def _mark(value: float | None, goal: float | None) -> str:
    text = pct(value)
    if value is not None and goal is not None and value < goal:
        text += " (below goal)"
    return text


def _render(results: list[dict[str, Any]], elapsed_s: float) -> str:
    rows = []
    for result in results:
        d = result["duration_ms"]
        for cell in result["cells"]:
            n = cell["injected"]
            rows.append(
                [
                    num(d, 0),
                    cell["kind"],
                    str(n),
                    str(cell["detected"]),
                    _mark(_share(cell["site_ok"], n), _goal(d, "site")),
                    pct(_share(cell["function_ok"], n)),
                    _mark(_share(cell["cause_ok"], n), _goal(d, "cause")),
                    str(cell["no_stack"]),
                    ", ".join(f"{k} x{v}" for k, v in cell["wrong_sites"].items()) or "-",
                    ", ".join(f"{k} x{v}" for k, v in cell["causes_seen"].items()) or "-",
                ]
            )
    per_length = []
    failed = []
    for result in results:
        d = result["duration_ms"]
        cells = result["cells"]
        n = sum(c["injected"] for c in cells)
        site = _share(sum(c["site_ok"] for c in cells), n)
        has_cause = all(c["cause_ok"] is not None for c in cells)
        cause = _share(sum(c["cause_ok"] for c in cells), n) if has_cause else None
        site_goal, cause_goal = _goal(d, "site"), _goal(d, "cause")
        if site is None or (site_goal is not None and site < site_goal):
            failed.append(f"attribution at {d:g} ms")
        if cause_goal is not None and (cause is None or cause < cause_goal):
            failed.append(f"cause at {d:g} ms" + (" (not reported)" if cause is None else ""))
        per_length.append(
            [
                num(d, 0),
                num(result["threshold_ms"], 1),
                str(n),
                str(sum(c["detected"] for c in cells)),
                str(sum(c["short"] for c in cells)),
                _mark(site, site_goal),
                f">= {site_goal:g}%" if site_goal is not None else "-",
                _mark(cause, cause_goal),
                f">= {cause_goal:g}%" if cause_goal is not None else "-",
                str(sum(c["no_stack"] for c in cells)),
                str(result["lost_events"]),
            ]
        )
    pythons = sorted({r["python"] for r in results})
    verdict = "met for every length" if not failed else "not met: " + ", ".join(failed)
    return (
        f"Target Python {', '.join(pythons)}. Goals: attribution >= "
        f"{GOAL_ATTRIBUTION_LONG:g}% for blocks >= {LONG_MS:g} ms and >= "
        f"{GOAL_ATTRIBUTION_SHORT:g}% below; cause >= {GOAL_CAUSE_LONG:g}% for blocks >= "
        f"{LONG_MS:g} ms. Verdict: {verdict} (run took {elapsed_s:.0f} s).\n\n"
        "Attribution = the reported `call_site` (function, file and line) is the app's "
        "marked blocking line (the function by name or qualified name); cause = `cause` "
        "(and `syscall`: clock_nanosleep for sleep "
        "on 3.11+, select/pselect6 before; read; wait4; futex for lock) is right. Both are "
        "shares of all injected blocks (a missed block counts as wrong). "
        "No stack = a block reported without any Python stack. Shorter than threshold = "
        "blocks the app itself timed below the threshold (not the sidecar's doing).\n\n"
        + table(
            [
                "D (ms)",
                "threshold (ms)",
                "injected",
                "detected",
                "shorter than threshold",
                "attribution",
                "goal",
                "cause",
                "goal",
                "no stack",
                "lost",
            ],
            per_length,
            [True, True, True, True, True, True, False, True, False, True, True],
        )
        + "\nPer kind. Function = the right function and file, whatever the line. "
        "Wrong call sites and causes seen are `function:line x count` and "
        "`cause/syscall x count`.\n\n"
        + table(
            [
                "D (ms)",
                "kind",
                "injected",
                "detected",
                "attribution",
                "function",
                "cause",
                "no stack",
                "wrong call sites",
                "causes seen",
            ],
            rows,
            [True, False, True, True, True, True, True, True, False, False],
        )
        + f"\nSide by side with blocksnoop {PEER_VERSION}, launched on the same app with the "
        "same seed and threshold in the same run (the order alternating per length). Right "
        "function = the blocking function and file, whatever the line: ours in `call_site`; "
        "the peer's innermost frame of the app in the first stack it lists (what a reader "
        "sees first), in its last, or in any (peer_scoring.py). Shares of all injected "
        "blocks.\n\n" + _side_by_side(results)
    )


def _side_by_side(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        d = result["duration_ms"]
        n = sum(c["injected"] for c in result["cells"])
        peer = result["peer"]
        goal = _goal(d, "site")
        rows.append(
            [
                num(d, 0),
                str(n),
                f"{sum(c['detected'] for c in result['cells'])}/{n}",
                _mark(_share(sum(c["function_ok"] for c in result["cells"]), n), goal),
                f"{peer['detected']}/{peer['injected']}",
                _mark(_share(peer["function_ok"], peer["injected"]), goal),
                pct(_share(peer["function_last_stack"], peer["injected"])),
                pct(_share(peer["function_in_stack"], peer["injected"])),
                f">= {goal:g}%" if goal is not None else "-",
            ]
        )
    return table(
        [
            "D (ms)",
            "injected",
            "ours: detected",
            "ours: right function",
            "peer: detected",
            "peer: right function (first stack)",
            "peer: in last stack",
            "peer: in any stack",
            "goal",
        ],
        rows,
        [True, True, True, True, True, True, True, True, False],
    )


def run_attribution(
    quick: bool, raw_dir: Path, neighbours: Neighbours, python: str = PYTHON
) -> Section:
    """Run one launch-mode session per block length and tool, all seven kinds shuffled in it."""
    started = time.monotonic()
    venv = install_peer()
    results = []
    for seed, duration_ms in enumerate(DURATIONS_MS):
        count = blocks_per_kind(duration_ms, quick)
        app = _app(duration_ms, count, seed, python)
        sys.stderr.write(
            f"bench: attribution {duration_ms:g} ms x {count} per kind ({python})...\n"
        )
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
    version = results[0]["python"] if results else "?"
    return Section(
        slug=f"attribution-{version}",
        title=f"Attribution and cause (target Python {version})",
        body=_render(results, elapsed),
        data={"quick": quick, "python": python, "elapsed_s": elapsed, "runs": results},
    )
