# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Trace links: is each block's span the child of the right request span, and at what cost.

Three measurements:

accuracy  one launch-mode sidecar (``-t 5``, OTLP gRPC export to an
          in-process receiver, harness/otlp.py) per target interpreter,
          against apps/linked_app.py: concurrent requests, each in its own
          span (half of the blocks in a child span "query"), block the loop
          one at a time for 10, 20 and 50 ms; some blocks happen outside any
          span. The app records the span active during each block. Exported
          ``eventloop.block`` spans are paired with blocks by wall-clock
          overlap on the same thread; each block is then right (parent = the
          app's span), wrong (another parent), unlinked, or missed. The same
          is done with the sidecar's JSON lines (CLOCK_MONOTONIC), which must
          agree.
bursts   several requests blocking back to back in ONE loop iteration:
          harness/targets/web_app.py ``--burst N`` (aiohttp with its
          OpenTelemetry instrumentation; N = 2, 4, 8 concurrent requests
          released by one asyncio.Event, each blocking 1-2 times 20 ms in
          its own SERVER span, time.sleep and CPU alternately), per target
          interpreter and on uvloop, launched under our sidecar (as above)
          and under the peer, blocksnoop 0.11.1 (peer.py), which has no
          trace links: each request's block is right, wrong, unlinked or
          missed by the rule above; for the peer, a request is unlinked when
          a report of its iteration came (paired by report time, as
          peer_scoring.py does), missed otherwise.
read cost ``ContextReader(pid)`` in a process of the sidecar's interpreter
          (apps/read_cost.py) times N calls of its per-thread read against
          harness/targets/otel_target.py, per target interpreter: the loop
          thread (its context holds 41 variables) and the "worker" thread
          (1 variable), both blocked inside a span.
throughput
          req/s of apps/traced_http_app.py (a span per request; every 250 ms
          one request blocks 15 ms inside its span) under wrk, without a
          sidecar, with ``-t 10 --no-stacks --no-trace-link``, and with ``-t 10
          --no-stacks`` (links read), in rotating rounds, a fresh sidecar per
          round. Stacks are off on both sides: at ``-t 10`` Austin samples
          every millisecond, and in some rounds that alone slows this server
          by a third or more (BENCHMARKS.md, "Trace links"), far more noise
          than the 1% being looked for.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blocksnoop_bench.overhead import (
    Load,
    OverheadConfig,
    PythonLoad,
    Rounds,
    Wrk,
    _alternate,
    _clean_note,
    _loss,
    _paired_losses,
    _wait_ready,
    find_wrk,
)
from blocksnoop_bench.peer import PEER_VERSION, Peer, install_peer
from blocksnoop_bench.peer_scoring import MAX_LATENCY_S, ROUNDING_SLACK_NS, observed_monotonic_ns
from blocksnoop_bench.procs import (
    APPS,
    PYTHON,
    SID_PREFIX,
    BenchError,
    Sidecar,
    attached,
    cpu_times,
    json_records,
    python_argv,
    start_app,
)
from blocksnoop_bench.report import Section, median, num, pct, spread, table
from harness import TARGETS
from harness.interpreters import (
    MINORS,
    WEB_APP_MODULES,
    WEB_APP_PACKAGES,
    cached_venv,
    imports,
    pyenv_python,
)
from harness.otlp import OtlpReceiver, attributes

if TYPE_CHECKING:
    from collections.abc import Iterator

SPAN_NAME = "eventloop.block"
LINK_THRESHOLD_MS = 5.0
DURATIONS_MS = (10.0, 20.0, 50.0)
GOAL_RIGHT_PCT = 99.0
GOAL_MIN_MS = 10.0
"""The link goal holds for blocks this long or longer."""
OTEL_SDK = "opentelemetry.sdk.trace"
"""Target venvs with opentelemetry-sdk, shared with tests/integration/conftest.py."""
OTEL_TARGET = TARGETS / "otel_target.py"
READ_CALLS = 2000
READY_TIMEOUT_S = 30.0
DELIVERY_WAIT_S = 10.0
"""After the sidecar exits, how long its last spans may take to reach the receiver."""
THROUGHPUT_THRESHOLD_MS = 10.0
THROUGHPUT_BLOCK_MS = 15.0
THROUGHPUT_BLOCK_EVERY_MS = 250.0
SETTLE_S = 0.5
GOAL_LOSS_PCT = 1.0
QUIET_WAIT_S = 15.0
"""Longest wait before a run for other people's work on the machine to end."""
NS_PER_MS = 1_000_000
VERDICTS = ("right", "wrong", "wrong, same trace", "unlinked", "missed")
WEB_APP = TARGETS / "web_app.py"
BURST_SIZES = (2, 4, 8)
BURST_BLOCK_MS = 20.0
"""web_app.py ``--ms``: request i of a burst blocks 1, 1.5 or 2 times this (i mod 3)."""
BURST_ROUNDS = 20
"""Bursts of each size per target (quick: 1)."""
BURST_TOOLS = ("ours", "peer")


@dataclass(frozen=True, slots=True)
class Target:
    """One interpreter the app runs on, and on which loop."""

    label: str
    python: str
    uvloop: bool = False


def _otel_venv(minor: int) -> Path | None:
    """The tests' venv of pyenv's CPython 3.<minor> with opentelemetry-sdk (made if missing)."""
    base = pyenv_python(minor)
    if base is None:
        return None
    try:
        return cached_venv(f"py3.{minor}", base, ("opentelemetry-sdk",), (OTEL_SDK,))
    except (OSError, subprocess.CalledProcessError) as error:
        sys.stderr.write(f"bench: failed to make the 3.{minor} venv: {error}\n")
        return None


def find_targets(pythons: list[str] | None) -> tuple[list[Target], list[str]]:
    """Every pyenv CPython 3.9-3.13 (or the given ones), then uvloop on the sidecar's own.

    Returns the targets and a note per interpreter that could not be had.
    """
    targets: list[Target] = []
    missing: list[str] = []
    if pythons:
        targets = [Target(Path(p).parent.parent.name or p, p) for p in pythons]
        # uvloop on each of sid's too (its venvs have it), beside the sidecar's own below
        targets += [
            Target(f"{p} uvloop", p, uvloop=True) for p in pythons if p.startswith(SID_PREFIX)
        ]
    else:
        for minor in MINORS:
            python = _otel_venv(minor)
            if python is None:
                missing.append(f"3.{minor}: no pyenv interpreter or no opentelemetry-sdk")
            else:
                targets.append(Target(f"3.{minor}", str(python)))
    if imports(PYTHON, ("uvloop", OTEL_SDK)):
        version = ".".join(str(part) for part in sys.version_info[:2])
        targets.append(Target(f"{version} uvloop", PYTHON, uvloop=True))
    else:
        missing.append("uvloop: not installed in the sidecar's interpreter")
    return targets, missing


# Accuracy.


def _hex_id(raw: bytes) -> int | None:
    return int.from_bytes(raw, "big") if raw else None


def _received(receiver: OtlpReceiver) -> list[dict[str, Any]]:
    """Every block span received: thread, wall-clock interval, trace id and parent id."""
    spans = []
    for got in receiver.spans():
        if got.span.name != SPAN_NAME:
            continue
        attrs = attributes(got.span.attributes)
        spans.append(
            {
                "tid": attrs.get("thread.id"),
                "start": got.span.start_time_unix_nano,
                "end": got.span.end_time_unix_nano,
                "trace_id": _hex_id(got.span.trace_id),
                "parent": _hex_id(got.span.parent_span_id),
            }
        )
    return spans


def _from_json(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sidecar's JSON block records in the same shape, on CLOCK_MONOTONIC."""
    return [
        {
            "tid": r.get("tid"),
            "start": r["start_monotonic_ns"],
            "end": r["end_monotonic_ns"],
            "trace_id": int(r["trace_id"], 16) if r.get("trace_id") else None,
            "parent": int(r["parent_span_id"], 16) if r.get("parent_span_id") else None,
        }
        for r in records
        if r.get("type") == "block"
    ]


def _verdict(block: dict[str, Any], spans: list[dict[str, Any]], start: str, end: str) -> str:
    """Judge one block against the reported span sharing the most time with it."""
    best, shared = None, 0
    for span in spans:
        if span["tid"] != block["tid"]:
            continue
        overlap = min(block[end], span["end"]) - max(block[start], span["start"])
        if overlap > shared:
            best, shared = span, overlap
    if best is None:
        return "missed"
    if best["parent"] is None:
        return "unlinked"
    if block["span_id"] is not None and (best["trace_id"], best["parent"]) == (
        block["trace_id"],
        block["span_id"],
    ):
        return "right"
    return "wrong, same trace" if best["trace_id"] == block["trace_id"] else "wrong"


def _accuracy_run(target: Target, quick: bool, raw_dir: Path, seed: int) -> dict[str, Any]:
    count, outside = (8, 3) if quick else (100, 20)
    tag = f"linking-{target.label.replace(' ', '-')}"
    with (
        tempfile.TemporaryDirectory(prefix="blocksnoop-bench-") as tmp,
        OtlpReceiver() as receiver,
    ):
        app_out = Path(tmp) / "blocks.json"
        app = [
            *python_argv(target.python),
            str(APPS / "linked_app.py"),
            f"--out={app_out}",
            f"--count={count}",
            f"--outside={outside}",
            f"--seed={seed}",
            "--durations-ms",
            *(f"{ms:g}" for ms in DURATIONS_MS),
            *(["--uvloop"] if target.uvloop else []),
        ]
        sidecar = Sidecar(
            [
                "-t",
                f"{LINK_THRESHOLD_MS:g}",
                "--otlp-endpoint",
                f"http://{receiver.grpc_endpoint}",
                "--otlp-protocol",
                "grpc",
                "--",
                *app,
            ],
            raw_dir / f"{tag}.jsonl",
        )
        blocks_n = len(DURATIONS_MS) * (count + outside)
        expected_s = blocks_n * (sum(DURATIONS_MS) / len(DURATIONS_MS) + 30) / 1000
        try:
            code = sidecar.child.wait(timeout=60 + 3 * expected_s)
        finally:
            sidecar.child.stop()
        if code != 0 or not app_out.exists():
            msg = f"failed to run the trace-link target on {target.label} (exit {code}): "
            raise BenchError(msg + sidecar.stderr.text()[-800:])
        records = sidecar.records()
        reported = sum(1 for r in records if r.get("type") == "block")
        deadline = time.monotonic() + DELIVERY_WAIT_S
        while len(_received(receiver)) < reported and time.monotonic() < deadline:
            time.sleep(0.05)
        spans = _received(receiver)
        truth = json.loads(app_out.read_text())
    (raw_dir / f"{tag}-injected.json").write_text(json.dumps(truth))
    (raw_dir / f"{tag}-spans.json").write_text(json.dumps(spans))
    from_json = _from_json(records)
    verdicts = []
    for block in truth["blocks"]:
        otlp = _verdict(block, spans, "start_unix_ns", "end_unix_ns")
        local = _verdict(block, from_json, "start_ns", "end_ns")
        verdicts.append(
            {
                "where": block["where"],
                "duration_ms": block["duration_ms"],
                "kind": block["kind"],
                "measured_ms": (block["end_ns"] - block["start_ns"]) / NS_PER_MS,
                "otlp": otlp,
                "json": local,
            }
        )
    summary: dict[str, Any] = next((r for r in records if r.get("type") == "summary"), {})
    stderr = sidecar.stderr.text()
    return {
        "label": target.label,
        "python": truth["python"],
        "loop": truth["loop"],
        "reported": reported,
        "received": len(spans),
        "verdicts": verdicts,
        "lost_events": summary.get("lost_events"),
        "warnings": [line for line in stderr.splitlines() if "warn" in line.lower()][:10],
    }


def _counts(verdicts: list[dict[str, Any]], source: str) -> Counter[str]:
    return Counter(v[source] for v in verdicts)


def _accuracy_rows(run: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    rows, failed = [], []
    verdicts = run["verdicts"]
    for duration in DURATIONS_MS:
        inside = [v for v in verdicts if v["duration_ms"] == duration and v["where"] != "outside"]
        outside = [v for v in verdicts if v["duration_ms"] == duration and v["where"] == "outside"]
        got = _counts(inside, "otlp")
        right = 100 * got["right"] / len(inside) if inside else None
        wrong = got["wrong"] + got["wrong, same trace"]
        if duration >= GOAL_MIN_MS and (right is None or right < GOAL_RIGHT_PCT or wrong):
            failed.append(f"{run['label']} {duration:g} ms")
        out = _counts(outside, "otlp")
        rows.append(
            [
                f"{run['python']} {run['loop']}",
                num(duration, 0),
                str(len(inside)),
                pct(right),
                str(got["right"]),
                f"{got['wrong']} + {got['wrong, same trace']}",
                str(got["unlinked"]),
                str(got["missed"]),
                str(len(outside)),
                str(out["wrong"] + out["wrong, same trace"] + out["right"]),
                str(out["missed"]),
            ]
        )
    return rows, failed


def _render_accuracy(runs: list[dict[str, Any]], missing: list[str], elapsed_s: float) -> str:
    rows, failed = [], []
    for run in runs:
        run_rows, run_failed = _accuracy_rows(run)
        rows += run_rows
        failed += run_failed
    disagree = sum(1 for run in runs for v in run["verdicts"] if v["otlp"] != v["json"])
    total = sum(len(run["verdicts"]) for run in runs)
    per_run = [
        [
            f"{run['python']} {run['loop']}",
            str(len(run["verdicts"])),
            str(run["reported"]),
            str(run["received"]),
            str(run["lost_events"]),
            str(sum(1 for v in run["verdicts"] if v["otlp"] != v["json"])),
            num(run["others_cpu_pct"], 0) + ("+sidecar" if run["other_sidecar"] else ""),
        ]
        for run in runs
    ]
    verdict = "met on every target" if not failed else "not met: " + ", ".join(failed)
    skipped = f" Not run: {'; '.join(missing)}." if missing else ""
    return (
        f"Launch mode, `-t {LINK_THRESHOLD_MS:g}`, OTLP/gRPC to the receiver. Goal: the right "
        f"parent for >= {GOAL_RIGHT_PCT:g}% of blocks >= {GOAL_MIN_MS:g} ms inside a span, "
        f"never a wrong one, and no parent for blocks outside spans: {verdict} "
        f"(accuracy runs took {elapsed_s:.0f} s).{skipped}\n\n"
        "Right = the exported span's trace id and parent span id are those of the span the "
        "app had active during the block (the request's, or its child `query` span's); wrong "
        "= another parent (other trace + same trace, e.g. the enclosing request instead of "
        "its `query`); unlinked = no parent; missed = no span overlaps the block. Outside "
        "spans: blocks made where no span was active; linked = exported with any parent.\n\n"
        + table(
            [
                "target",
                "D (ms)",
                "in a span",
                "right",
                "right (n)",
                "wrong (other + same trace)",
                "unlinked",
                "missed",
                "outside spans",
                "linked",
                "missed",
            ],
            rows,
            [False, *[True] * 10],
        )
        + f"\nThe sidecar's JSON lines (paired on CLOCK_MONOTONIC) give a different verdict "
        f"than the exported spans for {disagree} of {total} blocks.\n\n"
        + table(
            [
                "target",
                "blocks",
                "reported (JSON)",
                "spans received",
                "lost events",
                "JSON != OTLP",
                "others' CPU (%)",
            ],
            per_run,
            [False, *[True] * 6],
        )
    )


# Bursts: requests blocking back to back in one iteration.


def find_burst_targets(pythons: list[str] | None) -> tuple[list[Target], list[str]]:
    """The tests' web-app venv of each pyenv CPython 3.9-3.13 (or the given ones), then uvloop.

    uvloop runs on the newest of them; each venv has aiohttp, its OpenTelemetry
    instrumentation and uvloop (tests/integration/conftest.py makes the same).
    """
    if pythons:
        targets = [Target(Path(p).parent.parent.name or p, p) for p in pythons]
        return [
            *targets,
            Target(f"{targets[-1].label} uvloop", targets[-1].python, uvloop=True),
        ], []
    targets, missing = [], []
    for minor in MINORS:
        base = pyenv_python(minor)
        try:
            python = (
                cached_venv(f"web-py3.{minor}", base, WEB_APP_PACKAGES, WEB_APP_MODULES)
                if base
                else None
            )
        except (OSError, subprocess.CalledProcessError) as error:
            sys.stderr.write(f"bench: failed to make the 3.{minor} web venv: {error}\n")
            python = None
        if python is None:
            missing.append(f"3.{minor}: no pyenv interpreter or no aiohttp + its instrumentation")
        else:
            targets.append(Target(f"3.{minor}", str(python)))
    if targets:
        targets.append(Target(f"{targets[-1].label} uvloop", targets[-1].python, uvloop=True))
    return targets, missing


def _burst_app(target: Target, rounds: int, out: Path) -> list[str]:
    bursts = [arg for _ in range(rounds) for size in BURST_SIZES for arg in ("--burst", str(size))]
    return [
        *python_argv(target.python),
        str(WEB_APP),
        "--out",
        str(out),
        "--ms",
        f"{BURST_BLOCK_MS:g}",
        *bursts,
        *(["--uvloop"] if target.uvloop else []),
    ]


def _burst_expected_s(rounds: int) -> float:
    """How long the app's bursts last: each request 1.5 times the length on average, 50 ms apart."""
    return rounds * sum(size * 1.5 * BURST_BLOCK_MS + 100 for size in BURST_SIZES) / 1000


def _burst_truth(path: Path, label: str, tool: str) -> list[dict[str, Any]]:
    if not path.exists():
        msg = f"failed to run the burst target on {label} under {tool}: it wrote no blocks"
        raise BenchError(msg)
    return json_records(path)


def _burst_ours(target: Target, rounds: int, raw_dir: Path) -> list[dict[str, Any]]:
    """Each request's block under our sidecar: its verdict on the spans and on the JSON lines."""
    tag = f"linking-burst-ours-{target.label.replace(' ', '-')}"
    with (
        tempfile.TemporaryDirectory(prefix="blocksnoop-bench-") as tmp,
        OtlpReceiver() as receiver,
    ):
        app_out = Path(tmp) / "blocks.jsonl"
        sidecar = Sidecar(
            [
                "-t",
                f"{LINK_THRESHOLD_MS:g}",
                "--otlp-endpoint",
                f"http://{receiver.grpc_endpoint}",
                "--otlp-protocol",
                "grpc",
                "--",
                *_burst_app(target, rounds, app_out),
            ],
            raw_dir / f"{tag}.jsonl",
        )
        try:
            code = sidecar.child.wait(timeout=60 + 3 * _burst_expected_s(rounds))
        finally:
            sidecar.child.stop()
        if code != 0:
            msg = f"failed to run the burst target on {target.label} (exit {code}): "
            raise BenchError(msg + sidecar.stderr.text()[-800:])
        truth = _burst_truth(app_out, target.label, "ours")
        records = sidecar.records()
        reported = sum(1 for r in records if r.get("type") == "block")
        deadline = time.monotonic() + DELIVERY_WAIT_S
        while len(_received(receiver)) < reported and time.monotonic() < deadline:
            time.sleep(0.05)
        spans = _received(receiver)
    (raw_dir / f"{tag}-injected.json").write_text(json.dumps(truth))
    (raw_dir / f"{tag}-spans.json").write_text(json.dumps(spans))
    from_json = _from_json(records)
    return [
        {
            "burst": block["burst"],
            "otlp": _verdict(block, spans, "start_unix_ns", "end_unix_ns"),
            "json": _verdict(block, from_json, "start_ns", "end_ns"),
        }
        for block in truth
    ]


def _burst_peer(venv: Path, target: Target, rounds: int, raw_dir: Path) -> list[dict[str, Any]]:
    """Each request's block under the peer: unlinked when its iteration was reported, else missed.

    A report is paired with the burst that ended last before it was printed
    (peer_scoring.py's rule, by iteration instead of by block).
    """
    tag = f"linking-burst-peer-{target.label.replace(' ', '-')}"
    with tempfile.TemporaryDirectory(prefix="blocksnoop-bench-") as tmp:
        app_out = Path(tmp) / "blocks.jsonl"
        offset_ns = time.time_ns() - time.monotonic_ns()
        peer = Peer(
            venv,
            ["-t", f"{LINK_THRESHOLD_MS:g}", "--", *_burst_app(target, rounds, app_out)],
            raw_dir / f"{tag}.jsonl",
        )
        try:
            code = peer.child.wait(timeout=60 + 3 * _burst_expected_s(rounds))
        finally:
            peer.child.stop()
        if code != 0:
            msg = f"failed to run the burst target on {target.label} under the peer (exit {code}): "
            raise BenchError(msg + peer.stderr.text()[-800:])
        truth = _burst_truth(app_out, target.label, "the peer")
    (raw_dir / f"{tag}-injected.json").write_text(json.dumps(truth))
    ends: dict[tuple[int, int], int] = {}  # (size, app's iteration) -> the burst's last end
    for block in truth:
        key = (block["burst"], block["iteration"])
        ends[key] = max(ends.get(key, 0), block["end_ns"])
    seen: set[tuple[int, int]] = set()
    for report in peer.records():
        if report.get("type") != "blocking_event":
            continue
        at_ns = observed_monotonic_ns(report, offset_ns)
        candidates = [
            key
            for key, end_ns in ends.items()
            if key not in seen
            and at_ns - MAX_LATENCY_S * 1e9 <= end_ns <= at_ns + ROUNDING_SLACK_NS
        ]
        if candidates:
            seen.add(max(candidates, key=ends.__getitem__))
    return [
        {
            "burst": block["burst"],
            "otlp": "unlinked" if (block["burst"], block["iteration"]) in seen else "missed",
        }
        for block in truth
    ]


def _burst_runs(targets: list[Target], quick: bool, config: OverheadConfig) -> list[dict[str, Any]]:
    """Per target and tool, every request's verdict."""
    rounds = 1 if quick else BURST_ROUNDS
    venv = install_peer()
    runs = []
    for target in targets:
        for tool in BURST_TOOLS:
            sys.stderr.write(f"bench: bursts in one iteration on {target.label}, {tool}...\n")
            config.neighbours.wait_quiet(QUIET_WAIT_S)
            if tool == "ours":
                verdicts = _burst_ours(target, rounds, config.raw_dir)
            else:
                verdicts = _burst_peer(venv, target, rounds, config.raw_dir)
            runs.append({"label": target.label, "tool": tool, "verdicts": verdicts})
    return runs


def _burst_rows(runs: list[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    """One row per target, size and tool: right / wrong / none / missed, and the link goal."""
    rows, failed = [], []
    for run in runs:
        for size in BURST_SIZES:
            mine = [v for v in run["verdicts"] if v["burst"] == size]
            got = _counts(mine, "otlp")
            wrong = got["wrong"] + got["wrong, same trace"]
            right = 100 * got["right"] / len(mine) if mine else None
            if run["tool"] == "ours" and (right is None or right < GOAL_RIGHT_PCT or wrong):
                failed.append(f"{run['label']} N={size}")
            disagree = sum(1 for v in mine if "json" in v and v["json"] != v["otlp"])
            rows.append(
                [
                    run["label"],
                    str(size),
                    "otel-blocksnoop" if run["tool"] == "ours" else f"blocksnoop {PEER_VERSION}",
                    str(len(mine)),
                    pct(right),
                    str(got["right"]),
                    f"{got['wrong']} + {got['wrong, same trace']}",
                    str(got["unlinked"]),
                    str(got["missed"]),
                    str(disagree) if run["tool"] == "ours" else "-",
                ]
            )
    return rows, failed


def _render_bursts(runs: list[dict[str, Any]], missing: list[str], quick: bool) -> str:
    rows, failed = _burst_rows(runs)
    verdict = "met on every target" if not failed else "not met: " + ", ".join(failed)
    skipped = f" Not run: {'; '.join(missing)}." if missing else ""
    rounds = 1 if quick else BURST_ROUNDS
    return (
        f"harness/targets/web_app.py `--burst N`, {rounds} burst(s) of each N per target: N "
        "concurrent aiohttp requests (OpenTelemetry instrumentation, one SERVER span each) "
        "released by one asyncio.Event block back to back in one loop iteration, request i "
        f"for {BURST_BLOCK_MS:g} ms times 1, 1.5 or 2 (i mod 3), `time.sleep` and CPU in turn. "
        f"Both tools launch the app, `-t {LINK_THRESHOLD_MS:g}`. Goal: each request's block "
        f"is a span of its own under its server span, >= {GOAL_RIGHT_PCT:g}% right and none "
        f"wrong: {verdict}.{skipped}\n\n"
        "Each request's block is judged by the exported span sharing the most time with it "
        "(same rule as above): right = parented on that request's server span; wrong = "
        "another parent; none = no parent; missed = no span overlaps it. The peer exports no "
        "spans and links nothing: a request whose iteration it reported counts as none. "
        "JSON != OTLP: requests whose verdict on our JSON lines differs.\n\n"
        + table(
            [
                "target",
                "N",
                "tool",
                "requests",
                "right",
                "right (n)",
                "wrong (other + same trace)",
                "none",
                "missed",
                "JSON != OTLP",
            ],
            rows,
            [False, True, False, *[True] * 7],
        )
    )


# Read cost.


@contextlib.contextmanager
def _otel_target(python: str) -> Iterator[dict[str, Any]]:
    """Run harness/targets/otel_target.py until its threads are blocked; yield its ready line."""
    with tempfile.TemporaryDirectory(prefix="blocksnoop-bench-") as tmp:
        fifo = Path(tmp) / "ready"
        os.mkfifo(fifo)
        process = subprocess.Popen(
            [*python_argv(python), str(OTEL_TARGET), "--ready", str(fifo)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        lines: list[str] = []

        def read_ready() -> None:
            with fifo.open() as ready:
                lines.append(ready.readline())

        reader = threading.Thread(target=read_ready, daemon=True)
        reader.start()
        try:
            reader.join(READY_TIMEOUT_S)
            if not lines:
                with contextlib.suppress(OSError):  # unblock the reader thread
                    fifo.open("w").close()
                msg = f"failed to see otel_target.py ready on {python}"
                raise BenchError(msg)
            yield json.loads(lines[0])
        finally:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.write("\n")
                    process.stdin.close()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()


def _percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _read_cost(target: Target, calls: int) -> dict[str, Any]:
    with _otel_target(target.python) as ready:
        threads = ready["threads"]
        tids = {"41 variables": threads["loop"], "1 variable": threads["worker"]}
        argv = [
            PYTHON,
            str(APPS / "read_cost.py"),
            str(ready["pid"]),
            *(str(t["tid"]) for t in tids.values()),
            f"--calls={calls}",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
        if done.returncode != 0:
            msg = f"failed to time reads on {target.label}: {done.stderr.strip()[-500:]}"
            raise BenchError(msg)
        timed = json.loads(done.stdout)
    result: dict[str, Any] = {
        "label": target.label,
        "python": ready["python"],
        "method": timed["method"],
        "unsupported": timed["unsupported"],
        "cells": {},
    }
    for what, thread in tids.items():
        got = timed["threads"][str(thread["tid"])]
        ns = got["ns"]
        result["cells"][what] = {
            "median_ms": statistics.median(ns) / NS_PER_MS,
            "p99_ms": _percentile(ns, 0.99) / NS_PER_MS,
            "max_ms": max(ns) / NS_PER_MS,
            "reads_per_call": got["reads_per_call"],
            "right": got["span"] == [thread["trace_id"], thread["span_id"]],
            "ns": ns,
        }
    return result


def _render_read_cost(results: list[dict[str, Any]], calls: int) -> str:
    rows = []
    for result in results:
        for what in ("1 variable", "41 variables"):
            cell = result["cells"][what]
            per_read = 1000 * cell["median_ms"] / cell["reads_per_call"]
            rows.append(
                [
                    result["python"],
                    what,
                    num(cell["median_ms"], 3),
                    num(cell["p99_ms"], 3),
                    num(cell["max_ms"], 2),
                    num(cell["reads_per_call"], 0),
                    num(per_read, 1),
                    "yes" if cell["right"] else "NO",
                ]
            )
    methods = sorted({f"`{r['method']}(tid)`" for r in results})
    return (
        f"{' and '.join(methods)} of one `ContextReader(pid)`, {calls:,} calls per row (the "
        "two threads in turn, after 50 warm-up calls each), in a process of the sidecar's "
        "interpreter (apps/read_cost.py) against harness/targets/otel_target.py, whose loop "
        'thread (40 extra context variables + OpenTelemetry\'s) and "worker" thread (only '
        "OpenTelemetry's) are blocked inside spans. Reads = `process_vm_readv` calls per "
        "call; right = the span read is the one the target says is active.\n\n"
        + table(
            [
                "target",
                "context holds",
                "median (ms)",
                "p99 (ms)",
                "max (ms)",
                "reads",
                "us per read",
                "right",
            ],
            rows,
            [False, False, True, True, True, True, True, False],
        )
    )


# Throughput.


MODES = ("without", "no-link", "link")
THROUGHPUT_SIDECAR_ARGS = ["--no-stacks"]
"""On both sides: stack sampling's own cost and noise are the overhead benchmark's business."""
MODE_ARGS = {
    "no-link": [*THROUGHPUT_SIDECAR_ARGS, "--no-trace-link"],
    "link": THROUGHPUT_SIDECAR_ARGS,
}
MODE_LABELS = {
    "without": "without sidecar",
    "no-link": "sidecar `--no-stacks --no-trace-link`",
    "link": "sidecar `--no-stacks`, links on",
}


def _injected_verdicts(injected: list[list[str]], records: list[dict[str, Any]]) -> dict[str, int]:
    """Judge the app's blocks that one sidecar round reported: linked to their span or not."""
    got: Counter[str] = Counter()
    for _, start, end, trace_id, span_id in injected:
        overlapping = [
            r
            for r in records
            if r["start_monotonic_ns"] < int(end) and int(start) < r["end_monotonic_ns"]
        ]
        if not overlapping:
            continue
        record = overlapping[0]
        if not record.get("parent_span_id"):
            got["unlinked"] += 1
        elif (record.get("trace_id"), record["parent_span_id"]) == (trace_id, span_id):
            got["right"] += 1
        else:
            got["wrong"] += 1
    return dict(got)


def _throughput(config: OverheadConfig) -> dict[str, Any]:
    injected: list[list[str]] = []

    def note(line: str) -> None:
        if line.startswith("block "):
            injected.append(line.split())

    server, server_out = start_app(
        "traced_http_app.py",
        f"--block-ms={THROUGHPUT_BLOCK_MS:g}",
        f"--block-every-ms={THROUGHPUT_BLOCK_EVERY_MS:g}",
        on_line=note,
    )
    rounds: dict[str, list[list[dict[str, Any]]]] = {"no-link": [], "link": []}
    cpu: dict[str, list[float]] = {"no-link": [], "link": []}
    with server:
        port = _wait_ready(server_out, "the traced HTTP server's ready line")
        wrk = find_wrk()
        load: Load = Wrk(wrk, port) if wrk else PythonLoad(port)
        sys.stderr.write(f"bench: traced HTTP load with {load.name}, warm-up...\n")
        load.run(config.warmup_s)

        def measure(mode: str, round_no: int) -> float:
            if mode == "without":
                return load.run(config.round_s).rps
            out = config.raw_dir / f"linking-http-{mode}-round{round_no}.jsonl"
            with attached(
                server.pid, THROUGHPUT_THRESHOLD_MS, out, SETTLE_S, MODE_ARGS[mode]
            ) as sidecar:
                before = cpu_times(sidecar.pid)
                rps = load.run(config.round_s).rps
                own, children = cpu_times(sidecar.pid).percent_since(before)
            rounds[mode].append([r for r in sidecar.records() if r.get("type") == "block"])
            cpu[mode].append(own + children)
            return rps

        rps = _alternate(config, MODES, measure)
    (config.raw_dir / "linking-http-injected.json").write_text(json.dumps(injected))
    return {
        "load": load.name,
        "rps": rps.as_json(),
        "blocks": {mode: [len(r) for r in rs] for mode, rs in rounds.items()},
        "linked": {
            mode: [sum(1 for b in r if b.get("parent_span_id")) for r in rs]
            for mode, rs in rounds.items()
        },
        "injected": {
            mode: [_injected_verdicts(injected, r) for r in rs] for mode, rs in rounds.items()
        },
        "sidecar_cpu_pct": cpu,
    }


def median_interval(values: list[float]) -> tuple[float | None, float | None]:
    """A distribution-free ~95% confidence interval of the median (order statistics)."""
    n = len(values)
    if n < 6:  # fewer rounds cannot bound a median at 95%
        return None, None
    ordered = sorted(values)
    spread_ranks = 1.96 * math.sqrt(n)
    lower = max(0, math.floor((n - spread_ranks) / 2) - 1)
    upper = min(n - 1, math.ceil(1 + (n + spread_ranks) / 2) - 1)
    return ordered[lower], ordered[upper]


def _injected_cell(verdicts: list[dict[str, int]]) -> str:
    total: Counter[str] = Counter()
    for one in verdicts:
        total.update(one)
    return f"{total['right']} / {total['unlinked']} / {total['wrong']}"


def _render_throughput(http: dict[str, Any], config: OverheadConfig) -> str:
    rps = Rounds(**http["rps"])
    values = rps.values
    rows = []
    for mode in MODES:
        blocks = http["blocks"].get(mode)
        rows.append(
            [
                MODE_LABELS[mode],
                num(median(values[mode]), 0),
                spread(values[mode]),
                "-"
                if mode == "without"
                else pct(_loss(values["without"], values[mode]), sign=True),
                "-" if not blocks else f"{sum(http['linked'][mode])}/{sum(blocks)}",
                "-" if mode == "without" else _injected_cell(http["injected"][mode]),
                "-"
                if mode == "without"
                else num(statistics.fmean(http["sidecar_cpu_pct"][mode]), 1),
            ]
        )
    paired = _paired_losses(values["no-link"], values["link"])
    loss = _loss(values["no-link"], values["link"])
    low, high = median_interval(paired)
    if high is not None and high <= GOAL_LOSS_PCT:
        verdict = "met"
    elif low is not None and low > GOAL_LOSS_PCT:
        verdict = "NOT met"
    else:
        verdict = "not resolved at this machine's noise"
    return (
        f"{config.rounds} rounds of {config.round_s} s per mode after {config.warmup_s} s "
        f"warm-up, the order rotating each round; a fresh sidecar (`-t "
        f"{THROUGHPUT_THRESHOLD_MS:g} {' '.join(THROUGHPUT_SIDECAR_ARGS)}`, attach mode, "
        "cause on) per round. "
        f"apps/traced_http_app.py answers each request inside a span; every "
        f"{THROUGHPUT_BLOCK_EVERY_MS:g} ms one request blocks {THROUGHPUT_BLOCK_MS:g} ms in "
        f"its span. Load: {http['load']}, 16 connections.\n\n"
        + table(
            [
                "mode",
                "median req/s",
                "range req/s",
                "loss vs without (medians)",
                "blocks linked",
                "app's blocks: right / unlinked / wrong",
                "sidecar CPU (% of a core)",
            ],
            rows,
            [False, True, True, True, True, True, True],
        )
        + f"\nCost of the links (links on vs `--no-trace-link`, medians): "
        f"**{pct(loss, sign=True)}**; per-round paired median {pct(median(paired), sign=True)}, "
        f"range {spread(paired, 1)} %, 95% interval of that median {num(low, 1)} to "
        f"{num(high, 1)} %. Goal <= {GOAL_LOSS_PCT:g}%: {verdict}. "
        + _clean_note(rps, MODES, config.neighbours.cpu_limit_pct)
    )


def run_linking(
    config: OverheadConfig, quick: bool, pythons: list[str] | None, *, saturated: bool = False
) -> Section:
    """Accuracy per target, then the read cost per target, then the throughput A/B/C.

    ``saturated``: only the link verdicts (accuracy and bursts); the cost of
    a read and the throughput are figures of a quiet machine.
    """
    started = time.monotonic()
    targets, missing = find_targets(pythons)
    runs = []
    for seed, target in enumerate(targets):
        sys.stderr.write(f"bench: trace links on {target.label}...\n")
        config.neighbours.wait_quiet(QUIET_WAIT_S)
        with config.neighbours.window() as window:
            run = _accuracy_run(target, quick, config.raw_dir, seed)
        run["others_cpu_pct"] = window[0].foreign_cpu_pct
        run["other_sidecar"] = window[0].foreign_sidecar
        runs.append(run)
    accuracy_s = time.monotonic() - started
    burst_targets, burst_missing = find_burst_targets(pythons)
    bursts = _burst_runs(burst_targets, quick, config)
    body = (
        "### Link accuracy\n\n"
        + _render_accuracy(runs, missing, accuracy_s)
        + "\n### Requests blocking back to back in one iteration\n\n"
        + _render_bursts(bursts, burst_missing, quick)
    )
    calls = 200 if quick else READ_CALLS
    costs: list[dict[str, Any]] = []
    http: dict[str, Any] | None = None
    if not saturated:
        for target in targets:
            if target.uvloop:
                continue  # the reader does not look at the loop; one run per interpreter
            sys.stderr.write(f"bench: read cost on {target.label}...\n")
            config.neighbours.wait_quiet(QUIET_WAIT_S)
            costs.append(_read_cost(target, calls))
        sys.stderr.write("bench: throughput with and without links...\n")
        http = _throughput(config)
        body += (
            "\n### Cost of one read\n\n"
            + _render_read_cost(costs, calls)
            + "\n### Throughput with links on\n\n"
            + _render_throughput(http, config)
        )
    else:
        body += (
            "\nThe cost of one read and the throughput with links on are measured on a "
            "quiet machine only (`run.py --only linking`).\n"
        )
    elapsed = time.monotonic() - started
    body += f"\n(Trace-link run took {elapsed:.0f} s.)\n"
    return Section(
        slug="linking",
        title="Trace links",
        body=body,
        data={
            "quick": quick,
            "elapsed_s": elapsed,
            "accuracy": runs,
            "bursts": bursts,
            "read_cost": costs,
            "throughput": http,
            "missing": missing,
        },
    )
