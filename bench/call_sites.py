#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Every call site of a block, side by side with blocksnoop 0.11.1 (issue 17).

Launches harness/targets/calls.py (handlers making 2, 3 and 5 different
blocking calls in one callback: sleep, a CPU loop, pbkdf2, a socket read, a
lock wait; each call timed by the app) under ``otel-blocksnoop --json -t 10``
and under blocksnoop 0.11.1 (installed by the bench, bench/blocksnoop_bench/peer.py)
at the same threshold, in alternating rounds. Per handler's block and tool:
whether every call of 5 ms or more is named (the innermost frame of the app
in our ``call_sites``; in any of the peer's ``python_stacks``), whether they
come in the order they were made, how many functions are listed that the
handler did not call in that block, and (ours only: the peer gives no
shares) how far each share is from the call's time in the sampled part of
the block.

USAGE: call_sites.py [--rounds N] [--python PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from blocksnoop_bench.peer import Peer, install_peer, wall_minus_mono_ns
from blocksnoop_bench.peer_scoring import observed_monotonic_ns
from blocksnoop_bench.procs import REPO

from harness import TARGETS
from otel_blocksnoop.cli import positive_int

APP = TARGETS / "calls.py"
APP_FILES = {str(APP), str(TARGETS / "blocker.py")}
THRESHOLD_MS = 10
NAMED_FROM_MS = 5.0
HANDLER = "handler"
MS = 1_000_000
RUN_TIMEOUT_S = 120
PEER_LATENCY_NS = 2_000_000_000
UNSAMPLED_SHARE = 0.1
"""Shares are scored on blocks sampled throughout: past the unsampled head, at most this
share of the block without samples (on a busy machine Austin may be kept from a stretch)."""


def _truth(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _dedupe(functions: list[str]) -> list[str]:
    """Neighbouring repeats as one: the truth is timed per function."""
    out: list[str] = []
    for function in functions:
        if not out or out[-1] != function:
            out.append(function)
    return out


def _verdict(listed: list[str], handler: dict[str, Any], seen_from_ns: int) -> dict[str, Any]:
    """Named all, in order, and what else was listed, for one handler's block."""
    calls = [
        c
        for c in handler["calls"]
        if (c["end_ns"] - max(c["start_ns"], seen_from_ns)) >= NAMED_FROM_MS * MS
    ]
    wanted = [c["function"] for c in calls]
    made = {c["function"] for c in handler["calls"]} | {HANDLER}
    firsts = _dedupe([f for f in listed if f in wanted])
    seen_once = list(dict.fromkeys(firsts))
    return {
        "handler": handler["scenario"],
        "calls": len(wanted),
        "named": sum(f in listed for f in wanted),
        "all_named": all(f in listed for f in wanted),
        "in_order": seen_once == wanted,
        "listed": listed,
        "others": sorted({f for f in listed if f not in made}),
    }


def run_ours(python: str, raw: Path) -> list[dict[str, Any]]:
    """Our sidecar launching the app; a verdict per handler, with share errors."""
    truth_path = raw / "ours-truth.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "otel_blocksnoop", "--json", "-q", "-t", str(THRESHOLD_MS), "--",
         python, str(APP), "--delay", "1", "--out", str(truth_path)],
        capture_output=True, text=True, check=False, timeout=RUN_TIMEOUT_S, cwd=REPO,
    )  # fmt: skip
    (raw / "ours.jsonl").write_text(done.stdout)
    blocks = [r for r in map(json.loads, done.stdout.splitlines()) if r["type"] == "block"]
    verdicts = []
    for handler in _truth(truth_path):
        found = [
            b
            for b in blocks
            if b["start_monotonic_ns"] < handler["end_ns"]
            and b["end_monotonic_ns"] > handler["start_ns"]
        ]
        if len(found) != 1:
            verdicts.append({"handler": handler["scenario"], "detected": False})
            continue
        block = found[0]
        sites = block["call_sites"]
        seen_from = block["start_monotonic_ns"] + int((sites[0]["offset_ms"] if sites else 0) * MS)
        verdict = _verdict(_dedupe([s["function"] for s in sites]), handler, seen_from)
        errors = []
        for call in handler["calls"]:
            seen_ms = (call["end_ns"] - max(call["start_ns"], seen_from)) / MS
            if seen_ms < NAMED_FROM_MS:
                continue
            share = sum(s["share_ms"] for s in sites if s["function"] == call["function"])
            if share:
                errors.append(abs(share - seen_ms))
        gaps_ms = max(0.0, block["unsampled_ms"] - (sites[0]["offset_ms"] if sites else 0))
        whole = gaps_ms <= UNSAMPLED_SHARE * block["duration_ms"]
        verdicts.append({**verdict, "detected": True, "share_errors_ms": errors, "whole": whole})
    return verdicts


def run_peer(venv: Path, python: str, raw: Path) -> list[dict[str, Any]]:
    """The peer launching the app; its stacks' innermost app frames, in list order."""
    truth_path = raw / "peer-truth.jsonl"
    before = wall_minus_mono_ns()
    peer = Peer(
        venv,
        ["-t", str(THRESHOLD_MS), "--", python, str(APP), "--delay", "1", "--out", str(truth_path)],
        raw / "peer.jsonl",
    )
    try:
        peer.child.wait(timeout=RUN_TIMEOUT_S)
    finally:
        peer.child.stop()
    offset = (before + wall_minus_mono_ns()) // 2
    reports = [r for r in peer.records() if r.get("type") == "blocking_event"]
    verdicts = []
    for handler in _truth(truth_path):
        found = [
            r
            for r in reports
            if handler["end_ns"] - 2 * MS
            <= observed_monotonic_ns(r, offset)
            <= handler["end_ns"] + PEER_LATENCY_NS
        ]
        if not found:
            verdicts.append({"handler": handler["scenario"], "detected": False})
            continue
        report = min(found, key=lambda r: observed_monotonic_ns(r, offset))
        listed = []
        for stack in report.get("python_stacks") or []:
            mine = [f for f in stack if str(f.get("file")) in APP_FILES]
            if mine:
                listed.append(str(mine[-1].get("function")))
        verdicts.append({**_verdict(_dedupe(listed), handler, 0), "detected": True})
    return verdicts


def _table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        (
            "| handler | tool | blocks | every call named | in the order made | calls named "
            "| functions listed it did not call | share error, median / max (blocks sampled "
            "throughout) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for handler in ("calls-2", "calls-3", "calls-5"):
        for tool, verdicts in results.items():
            mine = [v for v in verdicts if v["handler"] == handler and v["detected"]]
            whole = [v for v in mine if v.get("whole")]
            errors = [e for v in whole for e in v["share_errors_ms"]]
            share = (
                f"{statistics.median(errors):.1f} / {max(errors):.1f} ms" if errors else "no shares"
            )
            lines.append(
                f"| {handler} | {tool} | {len(mine)} | {sum(v['all_named'] for v in mine)} "
                f"| {sum(v['in_order'] for v in mine)} | {sum(v['named'] for v in mine)}/"
                f"{sum(v['calls'] for v in mine)} | {sum(len(v['others']) for v in mine)} "
                f"| {share} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/call_sites.py", description=__doc__)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--python", default=sys.executable, help="the app's interpreter")
    args = parser.parse_args(argv)
    venv = install_peer()
    results: dict[str, list[dict[str, Any]]] = {"ours": [], "blocksnoop 0.11.1": []}
    with tempfile.TemporaryDirectory(prefix="blocksnoop-calls-") as tmp:
        for round_ in range(args.rounds):
            order = ("ours", "peer") if round_ % 2 == 0 else ("peer", "ours")
            for tool in order:
                raw = Path(tmp) / f"{round_}-{tool}"
                raw.mkdir()
                if tool == "ours":
                    results["ours"] += run_ours(args.python, raw)
                else:
                    results["blocksnoop 0.11.1"] += run_peer(venv, args.python, raw)
    print(f"{args.rounds} rounds, threshold {THRESHOLD_MS} ms, app on {args.python}")
    print(_table(results))
    print()
    for tool, verdicts in results.items():
        for verdict in verdicts:
            if verdict["detected"]:
                errors = ", ".join(f"{e:.1f}" for e in verdict.get("share_errors_ms", []))
                note = f"  (share errors ms: {errors})" if errors else ""
                if "whole" in verdict and not verdict["whole"]:
                    note += " (not sampled throughout)"
                print(f"{tool:<18} {verdict['handler']}: {' > '.join(verdict['listed'])}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
