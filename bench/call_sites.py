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

``--stacks-from`` runs ours once per stack reader given (``auto``, ``austin``,
``memory``: the sidecar's option), each a tool of its own in the tables.

The CPU of ours (the sidecar and its Austin, read every 50 ms while it runs) from
the first handler's start to the last one's end is given per blocked second.

USAGE: call_sites.py [--rounds N] [--python PATH] [--stacks-from READER ...] [--no-peer]
                     [--app-rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from blocksnoop_bench.peer import Peer, install_peer, wall_minus_mono_ns
from blocksnoop_bench.peer_scoring import observed_monotonic_ns
from blocksnoop_bench.procs import CLK_TCK, REPO, _stat_fields, python_argv

from harness import TARGETS
from otel_blocksnoop.cli import positive_int
from otel_blocksnoop.stacks.memory import STACK_READERS

APP = TARGETS / "calls.py"
APP_FILES = {str(APP), str(TARGETS / "blocker.py")}
THRESHOLD_MS = 10
NAMED_FROM_MS = 5.0
HANDLER = "handler"
PEER = "blocksnoop 0.11.1"
MS = 1_000_000
RUN_TIMEOUT_S = 120
PEER_LATENCY_NS = 2_000_000_000
CPU_EVERY_S = 0.05
"""How often the sidecar's CPU is read while it runs (its own, and its Austin's)."""
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


class CpuWatch:
    """The sidecar's CPU (all its threads) and its Austin's, read every ``CPU_EVERY_S``.

    The launched app is the sidecar's child too, and is left out: only a child
    whose command names Austin counts. Read as it runs, because a reaped
    Austin's time lands in the sidecar's children's time together with the app's.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.readings: list[tuple[int, float]] = []  # (CLOCK_MONOTONIC ns, CPU s)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _ticks(self, pid: int | str) -> int:
        fields = _stat_fields(pid)
        return int(fields[11]) + int(fields[12])

    def _austins(self) -> list[str]:
        """Children of the sidecar that run Austin.

        In an app's mount namespace its loader runs it with ``--argv0 austin``:
        the name is in one of the first three arguments.
        """
        found = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[:3]
                if any(b"austin" in arg.rsplit(b"/", 1)[-1] for arg in argv):
                    found.append(child)
        return found

    def _run(self) -> None:
        while not self._done.wait(CPU_EVERY_S):
            try:
                ticks = self._ticks(self.pid) + sum(self._ticks(a) for a in self._austins())
            except OSError:
                continue  # a child came or went while read: the next reading
            self.readings.append((time.monotonic_ns(), ticks / CLK_TCK))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def between(self, start_ns: int, end_ns: int) -> float | None:
        """CPU seconds from the last reading before ``start_ns`` to the first after ``end_ns``."""
        before = [r for r in self.readings if r[0] <= start_ns]
        after = [r for r in self.readings if r[0] >= end_ns]
        if not before or not after:
            return None
        return after[0][1] - before[-1][1]


def run_ours(
    python: str, raw: Path, stacks_from: str = "auto", app_rounds: int = 1
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Our sidecar launching the app: a verdict per handler, with share errors, and its cost.

    The cost: CPU of the sidecar and its Austin from the first handler's start
    to the last one's end, and the blocked time reported meanwhile.
    """
    truth_path = raw / "ours-truth.jsonl"
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "otel_blocksnoop", "--json", "-q", "-t", str(THRESHOLD_MS),
         "--stacks-from", stacks_from, "--", *python_argv(python), str(APP), "--delay", "1",
         "--rounds", str(app_rounds), "--out", str(truth_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
    )  # fmt: skip
    watch = CpuWatch(sidecar.pid)
    try:
        stdout, _ = sidecar.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        watch.stop()
        sidecar.kill()
    (raw / "ours.jsonl").write_text(stdout)
    blocks = [r for r in map(json.loads, stdout.splitlines()) if r["type"] == "block"]
    verdicts = []
    handlers = _truth(truth_path)
    for handler in handlers:
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
    start_ns, end_ns = handlers[0]["start_ns"], handlers[-1]["end_ns"]
    cpu_s = watch.between(start_ns, end_ns)
    blocked_s = sum(
        b["duration_ms"] / 1000
        for b in blocks
        if start_ns <= b["end_monotonic_ns"] and b["start_monotonic_ns"] <= end_ns
    )
    cost = {"cpu_s": cpu_s, "blocked_s": blocked_s} if cpu_s is not None else {}
    return verdicts, cost


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


def _share(errors: list[float]) -> str:
    return f"{statistics.median(errors):.1f} / {max(errors):.1f} ms" if errors else "no shares"


def _table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        (
            "| handler | tool | blocks | every call named | in the order made | calls named "
            "| functions listed it did not call | sampled throughout | share error, median / max "
            "(those) | (all blocks) | shares off by > 10 ms |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for handler in ("calls-2", "calls-3", "calls-5"):
        for tool, verdicts in results.items():
            mine = [v for v in verdicts if v["handler"] == handler and v["detected"]]
            whole = [v for v in mine if v.get("whole")]
            errors = [e for v in whole for e in v["share_errors_ms"]]
            every = [e for v in mine for e in v.get("share_errors_ms", [])]
            shared = tool != PEER  # the peer gives no shares
            lines.append(
                f"| {handler} | {tool} | {len(mine)} | {sum(v['all_named'] for v in mine)} "
                f"| {sum(v['in_order'] for v in mine)} | {sum(v['named'] for v in mine)}/"
                f"{sum(v['calls'] for v in mine)} | {sum(len(v['others']) for v in mine)} "
                f"| {len(whole) if shared else '-'} | {_share(errors)} | {_share(every)} "
                f"| {sum(e > 10 for e in every) if shared else '-'} |"
            )
    return "\n".join(lines)


def _cost_table(costs: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        "| tool | runs | sidecar + Austin CPU per blocked second, median (min-max) |",
        "|---|---|---|",
    ]
    for tool, measured in costs.items():
        per = [c["cpu_s"] / c["blocked_s"] for c in measured if c["blocked_s"]]
        if per:
            spread = f"{min(per) * 1000:.0f}-{max(per) * 1000:.0f}"
            lines.append(
                f"| {tool} | {len(per)} | {statistics.median(per) * 1000:.0f} ms ({spread}) |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/call_sites.py", description=__doc__)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--python", default=sys.executable, help="the app's interpreter")
    parser.add_argument(
        "--stacks-from", nargs="+", default=["auto"], choices=STACK_READERS,
        help="ours once per stack reader",
    )  # fmt: skip
    parser.add_argument("--no-peer", action="store_true", help="ours only")
    parser.add_argument(
        "--app-rounds", type=positive_int, default=1, help="the app's handlers per run of ours"
    )
    args = parser.parse_args(argv)
    venv = None if args.no_peer else install_peer()
    tools = [
        f"ours ({reader})" if len(args.stacks_from) > 1 else "ours" for reader in args.stacks_from
    ]
    readers = dict(zip(tools, args.stacks_from, strict=True))
    if venv is not None:
        tools.append(PEER)
    results: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    costs: dict[str, list[dict[str, float]]] = {tool: [] for tool in tools}
    with tempfile.TemporaryDirectory(prefix="blocksnoop-calls-") as tmp:
        for round_ in range(args.rounds):
            shift = round_ % len(tools)
            for number, tool in enumerate(tools[shift:] + tools[:shift]):
                raw = Path(tmp) / f"{round_}-{number}"
                raw.mkdir()
                if venv is not None and tool == PEER:
                    results[tool] += run_peer(venv, args.python, raw)
                else:
                    verdicts, cost = run_ours(args.python, raw, readers[tool], args.app_rounds)
                    results[tool] += verdicts
                    costs[tool] += [cost] if cost else []
    print(f"{args.rounds} rounds, threshold {THRESHOLD_MS} ms, app on {args.python}")
    print(_table(results))
    print()
    print(_cost_table(costs))
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
