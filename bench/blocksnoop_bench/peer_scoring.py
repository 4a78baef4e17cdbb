# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Score both tools' reports of one kinds_app run against the app's own truth.

Ours: every block record carries its CLOCK_MONOTONIC start and end, so a
report is paired with the injected block it overlaps most (the attribution
benchmark's rule). The right function = its ``call_site`` (the innermost
application frame) is the marked blocking method, by name or qualified name,
in the app's file; "in its stack" = that method is anywhere in the stack.

The peer (blocksnoop 0.11.1, ``--json``): a ``blocking_event`` gives the
duration (from its BPF timestamps), but no start or end, only
``observed_at``, the wall-clock millisecond at which it printed the event
(right after the block ended: it reports as soon as the kernel event
arrives). That instant is moved to CLOCK_MONOTONIC with the offset between
the two clocks read by the bench around the run, and the report is paired
with the latest injected block, not yet paired, that ended before it (with
2 ms of slack for the millisecond rounding) and at most MAX_LATENCY_S
before. ``python_stacks`` is a list of stacks, outermost frame first; the
right function = the innermost frame of the app's file in the FIRST stack
(what a reader sees first) is the blocking method. The peer lists every
distinct stack Austin saw from 200 ms (its correlation padding) before the
block to the moment the event arrived, oldest first, so idle frames and the
blocks before come first; "last stack" scores the last one listed instead,
and "in any stack" = the method appears in any of the stacks listed.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from blocksnoop_bench.pairing import Injected, Span, pair

NS_PER_MS = 1_000_000
MAX_LATENCY_S = 2.0
ROUNDING_SLACK_NS = 2 * NS_PER_MS


def truth_names(app: dict[str, Any]) -> dict[str, tuple[frozenset[str], str]]:
    """Per kind: the accepted function names (plain and qualified) and the app's file.

    apps/blocks_app.py marks no call sites: its blocks are scored for detection only.
    """
    return {
        kind: (
            frozenset({site["function"], site.get("qualname", site["function"])}),
            os.path.normpath(site["file"]),
        )
        for kind, site in app.get("call_sites", {}).items()
    }


def _frame_is(frame: dict[str, Any] | None, names: frozenset[str], file: str) -> bool:
    if not frame:
        return False
    return str(frame.get("function")) in names and os.path.normpath(str(frame.get("file"))) == file


def _verdict(block: dict[str, Any], duration_ms: float | None) -> dict[str, Any]:
    true_ms = (block["end_ns"] - block["start_ns"]) / NS_PER_MS
    return {
        "kind": block["kind"],
        "true_ms": true_ms,
        "detected": duration_ms is not None,
        "error_ms": None if duration_ms is None else duration_ms - true_ms,
        "function_ok": False,
        "function_in_stack": False,
    }


def score_ours(app: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Verdict per injected block, and the reports that overlap no injected block."""
    names = truth_names(app)
    reports = [r for r in records if r.get("type") == "block"]
    spans = [Span(r["start_monotonic_ns"], r["end_monotonic_ns"]) for r in reports]
    injected = [Injected(b["kind"], Span(b["start_ns"], b["end_ns"])) for b in app["blocks"]]
    pairing = pair(injected, spans)
    verdicts = []
    for index, block in enumerate(app["blocks"]):
        found = pairing.hits.get(index, [])
        if not found:
            verdicts.append(_verdict(block, None))
            continue
        target = injected[index].span
        best = max(
            found,
            key=lambda r: (
                min(target.end_ns, spans[r].end_ns) - max(target.start_ns, spans[r].start_ns)
            ),
        )
        report = reports[best]
        verdict = _verdict(block, spans[best].duration_ns / NS_PER_MS)
        wanted, file = names[block["kind"]]
        verdict["function_ok"] = _frame_is(report.get("call_site"), wanted, file)
        verdict["function_in_stack"] = any(
            _frame_is(frame, wanted, file) for frame in report.get("stack") or []
        )
        verdict["reported_function"] = (report.get("call_site") or {}).get("function")
        verdicts.append(verdict)
    return {"verdicts": verdicts, "false_positives": len(pairing.false_positives)}


def observed_monotonic_ns(record: dict[str, Any], wall_minus_mono_ns: int) -> int:
    """The peer's ``observed_at`` (UTC, ms) on CLOCK_MONOTONIC."""
    stamp = dt.datetime.fromisoformat(str(record["observed_at"]))
    whole_s = int(stamp.replace(microsecond=0).timestamp())
    return whole_s * 1_000_000_000 + stamp.microsecond * 1000 - wall_minus_mono_ns


def _innermost_app_frame(stack: list[dict[str, Any]], file: str) -> dict[str, Any] | None:
    """The innermost frame of the app's own file in one of the peer's stacks."""
    mine = [f for f in stack if os.path.normpath(str(f.get("file"))) == file]
    return mine[-1] if mine else None


def score_peer(
    app: dict[str, Any], records: list[dict[str, Any]], wall_minus_mono_ns: int
) -> dict[str, Any]:
    """Verdict per injected block; pairing by report time, as the module docstring says."""
    names = truth_names(app)
    blocks = app["blocks"]
    reports = sorted(
        (r for r in records if r.get("type") == "blocking_event"),
        key=lambda r: int(r.get("event_number", 0)),
    )
    paired: dict[int, tuple[dict[str, Any], int]] = {}
    false_positives = 0
    for report in reports:
        seen_ns = observed_monotonic_ns(report, wall_minus_mono_ns)
        candidates = [
            i
            for i, block in enumerate(blocks)
            if i not in paired
            and seen_ns - MAX_LATENCY_S * 1e9 <= block["end_ns"] <= seen_ns + ROUNDING_SLACK_NS
        ]
        if not candidates:
            false_positives += 1
            continue
        chosen = max(candidates, key=lambda i: blocks[i]["end_ns"])
        paired[chosen] = (report, seen_ns)
    verdicts = []
    for index, block in enumerate(blocks):
        if index not in paired:
            verdicts.append(_verdict(block, None))
            continue
        report, seen_ns = paired[index]
        verdict = _verdict(block, float(report["duration_ms"]))
        verdict["report_latency_ms"] = (seen_ns - block["end_ns"]) / NS_PER_MS
        if block["kind"] not in names:  # an app that knows no call sites: detection only
            verdicts.append(verdict)
            continue
        wanted, file = names[block["kind"]]
        stacks = report.get("python_stacks") or []
        first = _innermost_app_frame(stacks[0], file) if stacks else None
        last = _innermost_app_frame(stacks[-1], file) if stacks else None
        verdict["function_ok"] = _frame_is(first, wanted, file)
        verdict["function_last_stack"] = _frame_is(last, wanted, file)
        verdict["function_in_stack"] = any(
            _frame_is(frame, wanted, file) for stack in stacks for frame in stack
        )
        verdict["reported_function"] = first.get("function") if first else None
        verdict["stacks_listed"] = len(stacks)
        verdicts.append(verdict)
    return {"verdicts": verdicts, "false_positives": false_positives}
