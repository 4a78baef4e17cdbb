# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Side by side with the peer: otel-blocksnoop and blocksnoop 0.11.1 in the same run.

The peer is installed by the bench itself (peer.py). Both tools are measured
in alternating rounds (ours, peer; then peer, ours; ...) against the same
target process where the figure is about a running app, so drift on this
shared machine hits both alike; the report gives medians, the spread
(lowest and highest round) and the ratio ours/peer of the medians.

idle      apps/idle_app.py (one loop iteration every 0.5 s), one process for
          the whole section: each tool attached at -t 10 and at -t 100 for a
          window; CPU of the tool and of its children (Austin; the peer's BPF
          collector) in % of one core, RSS of the tool and of its children.
accuracy  apps/kinds_app.py launched under each tool (``-- CMD``, the same seed
          for both in a round) at -t 10: 25 ms blocks of seven kinds; recall,
          false positives, duration error against the app's own clock, and
          whether the reported stack names the blocking function
          (peer_scoring.py says how each tool's output is read).
storm     apps/kinds_app.py blocking 100 times a second (7 ms blocks of cpu,
          sleep and hashlib in turn), one process for the section; each tool
          attached at -t 5 for a window: its CPU (children included) per block
          it reported in that window.
busy      apps/work_app.py (20 tasks doing ~20 us of JSON work between
          ``await asyncio.sleep(0)``), one process: alone, watched by ours,
          watched by the peer, at -t 10, the order rotating every round; steps
          per wall second and per app CPU second (the app's own process time).

Ours runs with its defaults (stacks, cause, trace links on).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from blocksnoop_bench.attribution import KINDS
from blocksnoop_bench.peer import (
    PEER_VERSION,
    children_rss_mib,
    install_peer,
    peer_attached,
    run_peer_timed,
    wall_minus_mono_ns,
)
from blocksnoop_bench.peer_scoring import observed_monotonic_ns, score_ours, score_peer
from blocksnoop_bench.procs import (
    APPS,
    PYTHON,
    BenchError,
    Child,
    Neighbours,
    TimedApp,
    Window,
    attached,
    cpu_times,
    rss_mib,
    run_timed_app,
    start_app,
)
from blocksnoop_bench.report import Section, median, num, pct, spread, table

if TYPE_CHECKING:
    from collections.abc import Iterator

TOOLS = ("ours", "peer")
LABEL = {"ours": "otel-blocksnoop", "peer": f"blocksnoop {PEER_VERSION}", "alone": "not watched"}
SETTLE_S = 1.0
QUIET_WAIT_S = 15.0
IDLE_THRESHOLDS_MS = (10.0, 100.0)
ACCURACY_THRESHOLD_MS = 10.0
ACCURACY_BLOCK_MS = 25.0
ACCURACY_IDLE_MS = (20.0, 40.0)
STORM_THRESHOLD_MS = 5.0
STORM_BLOCK_MS = 7.0
STORM_RATE_PER_S = 100.0
STORM_KINDS = ("cpu", "sleep", "hashlib")
STORM_APP_SECONDS = 24 * 3600
"""The storm app runs until stopped; it is killed at the end of the section."""
BUSY_THRESHOLD_MS = 10.0
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """How much to measure: the runner's flags, with quick and full defaults."""

    quick: bool
    rounds: int
    accuracy_rounds: int
    per_kind: int
    idle_s: float
    storm_s: float
    busy_s: float
    warmup_s: float
    raw_dir: Path
    neighbours: Neighbours
    python: str = PYTHON


class Watcher(Protocol):
    """What both tools' runs offer: ours is procs.Sidecar, the peer peer.Peer."""

    @property
    def pid(self) -> int: ...

    attach_s: float | None

    def records(self) -> list[dict[str, Any]]: ...


@contextlib.contextmanager
def _watching(tool: str, venv: Path, pid: int, threshold_ms: float, out: Path) -> Iterator[Watcher]:
    """Either tool attached to ``pid``, settled; stopped on the way out."""
    if tool == "ours":
        with attached(pid, threshold_ms, out, SETTLE_S) as sidecar:
            yield sidecar
    else:
        with peer_attached(venv, pid, threshold_ms, out, SETTLE_S) as peer:
            yield peer


def _order(modes: tuple[str, ...], round_no: int) -> tuple[str, ...]:
    shift = round_no % len(modes)
    return modes[shift:] + modes[:shift]


@contextlib.contextmanager
def _window(config: PeerConfig) -> Iterator[list[Window]]:
    config.neighbours.wait_quiet(QUIET_WAIT_S)
    with config.neighbours.window() as window:
        yield window


def _others(window: list[Window], config: PeerConfig) -> dict[str, Any]:
    return {
        "others_cpu_pct": window[0].foreign_cpu_pct,
        "disturbed": window[0].disturbed(config.neighbours.cpu_limit_pct),
    }


def _cost(watcher: Watcher, seconds: float) -> dict[str, Any]:
    """CPU (% of one core, own and children) and RSS of a tool over ``seconds``."""
    before = cpu_times(watcher.pid)
    time.sleep(seconds)
    own, children = cpu_times(watcher.pid).percent_since(before)
    return {
        "own_pct": own,
        "children_pct": children,
        "cpu_pct": own + children,
        "rss_mib": rss_mib(watcher.pid),
        "children_rss_mib": children_rss_mib(watcher.pid),
        "attach_s": watcher.attach_s,
    }


# --- idle -------------------------------------------------------------------


def _idle(config: PeerConfig, venv: Path) -> dict[str, Any]:
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
        f"{t:g}": {tool: [] for tool in TOOLS} for t in IDLE_THRESHOLDS_MS
    }
    with Child([config.python, str(APPS / "idle_app.py")]) as app:
        time.sleep(0.5)
        for threshold in IDLE_THRESHOLDS_MS:
            for round_no in range(config.rounds):
                for tool in _order(TOOLS, round_no):
                    out = config.raw_dir / f"peer-idle-{tool}-t{threshold:g}-r{round_no}.jsonl"
                    with (
                        _watching(tool, venv, app.pid, threshold, out) as watcher,
                        _window(config) as window,
                    ):
                        cost = _cost(watcher, config.idle_s)
                    rounds[f"{threshold:g}"][tool].append({**cost, **_others(window, config)})
                sys.stderr.write(
                    f"bench:   idle -t {threshold:g} round {round_no + 1}/{config.rounds}: "
                    + ", ".join(
                        f"{tool} {rounds[f'{threshold:g}'][tool][-1]['cpu_pct']:.2f}%"
                        for tool in TOOLS
                    )
                    + "\n"
                )
    return {"seconds": config.idle_s, "rounds": rounds}


# --- accuracy ---------------------------------------------------------------


def _kinds_app(config: PeerConfig, seed: int) -> TimedApp:
    return TimedApp(
        "kinds_app.py",
        [
            f"--duration-ms={ACCURACY_BLOCK_MS:g}",
            f"--count={config.per_kind}",
            "--idle-ms",
            f"{ACCURACY_IDLE_MS[0]:g}",
            f"{ACCURACY_IDLE_MS[1]:g}",
            f"--seed={seed}",
        ],
        expected_s=len(KINDS)
        * config.per_kind
        * (2 * ACCURACY_BLOCK_MS + sum(ACCURACY_IDLE_MS) / 2 + 10)
        / 1000,
        what="kinds target",
        python=config.python,
    )


def _accuracy(config: PeerConfig, venv: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
    for round_no in range(config.accuracy_rounds):
        app = _kinds_app(config, seed=round_no)
        for tool in _order(TOOLS, round_no):
            raw = config.raw_dir / f"peer-accuracy-{tool}-r{round_no}"
            with _window(config) as window:
                if tool == "ours":
                    timings, records = run_timed_app(app, ACCURACY_THRESHOLD_MS, raw)
                    truth = json.loads(timings)
                    scored = score_ours(truth, records)
                else:
                    truth, records, offset = run_peer_timed(venv, app, ACCURACY_THRESHOLD_MS, raw)
                    scored = score_peer(truth, records, offset)
            runs[tool].append({"python": truth["python"], **scored, **_others(window, config)})
            found = sum(v["detected"] for v in scored["verdicts"])
            sys.stderr.write(
                f"bench:   accuracy round {round_no + 1}/{config.accuracy_rounds} {tool}: "
                f"{found}/{len(scored['verdicts'])} detected\n"
            )
    return {
        "threshold_ms": ACCURACY_THRESHOLD_MS,
        "block_ms": ACCURACY_BLOCK_MS,
        "per_kind": config.per_kind,
        "runs": runs,
    }


# --- storm ------------------------------------------------------------------


def _reported_between(tool: str, records: list[dict[str, Any]], start: int, end: int) -> int:
    """Reports of blocks that ended inside [start, end] (CLOCK_MONOTONIC ns)."""
    if tool == "ours":
        ends = [r["end_monotonic_ns"] for r in records if r.get("type") == "block"]
    else:
        offset = wall_minus_mono_ns()
        ends = [
            observed_monotonic_ns(r, offset) for r in records if r.get("type") == "blocking_event"
        ]
    return sum(1 for at in ends if start <= at <= end)


def _storm(config: PeerConfig, venv: Path) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
    with tempfile.TemporaryDirectory(prefix="blocksnoop-bench-") as tmp:
        argv = [
            config.python,
            str(APPS / "kinds_app.py"),
            f"--duration-ms={STORM_BLOCK_MS:g}",
            f"--rate={STORM_RATE_PER_S:g}",
            f"--seconds={STORM_APP_SECONDS}",
            f"--out={Path(tmp) / 'unused.json'}",
            "--kinds",
            *STORM_KINDS,
        ]
        with Child(argv) as app:
            time.sleep(1.0)
            for round_no in range(config.rounds):
                for tool in _order(TOOLS, round_no):
                    out = config.raw_dir / f"peer-storm-{tool}-r{round_no}.jsonl"
                    with (
                        _watching(tool, venv, app.pid, STORM_THRESHOLD_MS, out) as watcher,
                        _window(config) as window,
                    ):
                        start = time.monotonic_ns()
                        cost = _cost(watcher, config.storm_s)
                        end = time.monotonic_ns()
                    if app.process.poll() is not None:
                        msg = "failed to keep the storm target running: it exited"
                        raise BenchError(msg)
                    reported = _reported_between(tool, watcher.records(), start, end)
                    seconds = (end - start) / NS_PER_S
                    cpu_s = cost["cpu_pct"] / 100 * seconds
                    rounds[tool].append(
                        {
                            **cost,
                            "seconds": seconds,
                            "reported": reported,
                            "reported_per_s": reported / seconds,
                            "cpu_ms_per_block": 1000 * cpu_s / reported if reported else None,
                            **_others(window, config),
                        }
                    )
                sys.stderr.write(
                    f"bench:   storm round {round_no + 1}/{config.rounds}: "
                    + ", ".join(
                        f"{tool} {rounds[tool][-1]['reported_per_s']:.0f} blocks/s "
                        f"{rounds[tool][-1]['cpu_pct']:.1f}% CPU"
                        for tool in TOOLS
                    )
                    + "\n"
                )
    return {
        "threshold_ms": STORM_THRESHOLD_MS,
        "block_ms": STORM_BLOCK_MS,
        "rate_per_s": STORM_RATE_PER_S,
        "kinds": list(STORM_KINDS),
        "rounds": rounds,
    }


# --- busy -------------------------------------------------------------------


class _WorkSamples:
    """The work app's ``MONOTONIC_NS STEPS CPU_NS`` lines, turned into window rates."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, int, int]] = []

    def record(self, line: str) -> None:
        with contextlib.suppress(ValueError):
            now, steps, cpu = (int(part) for part in line.split())
            self.samples.append((now, steps, cpu))

    def window(self, seconds: float) -> dict[str, float]:
        start = time.monotonic_ns()
        time.sleep(seconds)
        end = time.monotonic_ns()
        inside = [s for s in list(self.samples) if start <= s[0] <= end]
        if len(inside) < 2:
            msg = f"failed to read the work app's counters: {len(inside)} samples in the window"
            raise BenchError(msg)
        (t0, n0, c0), (t1, n1, c1) = inside[0], inside[-1]
        return {
            "steps_per_s": (n1 - n0) * NS_PER_S / (t1 - t0),
            "steps_per_cpu_s": (n1 - n0) * NS_PER_S / (c1 - c0) if c1 > c0 else 0.0,
            "app_cpu_pct": 100 * (c1 - c0) / (t1 - t0),
        }


def _busy(config: PeerConfig, venv: Path) -> dict[str, Any]:
    modes = ("alone", *TOOLS)
    rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    samples = _WorkSamples()
    app, _ = start_app("work_app.py", on_line=samples.record)
    with app:
        samples.window(config.warmup_s)
        for round_no in range(config.rounds):
            for mode in _order(modes, round_no):
                if mode == "alone":
                    with _window(config) as window:
                        result: dict[str, Any] = samples.window(config.busy_s)
                else:
                    out = config.raw_dir / f"peer-busy-{mode}-r{round_no}.jsonl"
                    with (
                        _watching(mode, venv, app.pid, BUSY_THRESHOLD_MS, out) as watcher,
                        _window(config) as window,
                    ):
                        before = cpu_times(watcher.pid)
                        result = samples.window(config.busy_s)
                        own, children = cpu_times(watcher.pid).percent_since(before)
                        result["tool_cpu_pct"] = own + children
                rounds[mode].append({**result, **_others(window, config)})
            sys.stderr.write(
                f"bench:   busy round {round_no + 1}/{config.rounds}: "
                + ", ".join(f"{m} {rounds[m][-1]['steps_per_s']:,.0f} steps/s" for m in modes)
                + "\n"
            )
    return {"threshold_ms": BUSY_THRESHOLD_MS, "seconds": config.busy_s, "rounds": rounds}


# --- report -----------------------------------------------------------------


def _values(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None]


def _ratio(ours: float | None, peer: float | None) -> str:
    if ours is None or peer is None or peer == 0:
        return "n/a"
    return f"{ours / peer:.2f}"


def _med_spread(values: list[float], digits: int) -> str:
    if not values:
        return "n/a"
    return f"{num(median(values), digits)} ({spread(values, digits)})"


def _disturbed(rows: list[dict[str, Any]]) -> str:
    return f"{sum(1 for r in rows if r.get('disturbed'))}/{len(rows)}"


def _idle_table(idle: dict[str, Any]) -> str:
    rows = []
    for threshold, per_tool in idle["rounds"].items():
        for tool in TOOLS:
            r = per_tool[tool]
            rows.append(
                [
                    f"-t {threshold}",
                    LABEL[tool],
                    _med_spread(_values(r, "cpu_pct"), 2),
                    _med_spread(_values(r, "own_pct"), 2),
                    _med_spread(_values(r, "children_pct"), 2),
                    _med_spread(_values(r, "rss_mib"), 1),
                    _med_spread(_values(r, "children_rss_mib"), 1),
                    num(median(_values(r, "attach_s")), 1),
                    _disturbed(r),
                ]
            )
        ours, peer = per_tool["ours"], per_tool["peer"]
        rows.append(
            [
                f"-t {threshold}",
                "ours/peer",
                _ratio(median(_values(ours, "cpu_pct")), median(_values(peer, "cpu_pct"))),
                _ratio(median(_values(ours, "own_pct")), median(_values(peer, "own_pct"))),
                _ratio(
                    median(_values(ours, "children_pct")), median(_values(peer, "children_pct"))
                ),
                _ratio(median(_values(ours, "rss_mib")), median(_values(peer, "rss_mib"))),
                _ratio(
                    median(_values(ours, "children_rss_mib")),
                    median(_values(peer, "children_rss_mib")),
                ),
                "",
                "",
            ]
        )
    return table(
        [
            "threshold",
            "tool",
            "CPU total, % of a core",
            "own",
            "children",
            "RSS (MiB)",
            "children RSS",
            "attach (s)",
            "disturbed",
        ],
        rows,
        [False, False, True, True, True, True, True, True, True],
    )


def _accuracy_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    verdicts = [v for run in runs for v in run["verdicts"]]
    errors = [abs(v["error_ms"]) for v in verdicts if v["error_ms"] is not None]
    signed = [v["error_ms"] for v in verdicts if v["error_ms"] is not None]
    latency = [v["report_latency_ms"] for v in verdicts if "report_latency_ms" in v]
    by_kind = {
        kind: {
            "injected": sum(1 for v in verdicts if v["kind"] == kind),
            "detected": sum(1 for v in verdicts if v["kind"] == kind and v["detected"]),
            "function_ok": sum(1 for v in verdicts if v["kind"] == kind and v["function_ok"]),
        }
        for kind in KINDS
    }
    return {
        "injected": len(verdicts),
        "detected": sum(v["detected"] for v in verdicts),
        "false_positives": sum(run["false_positives"] for run in runs),
        "abs_error_median_ms": median(errors),
        "abs_error_max_ms": max(errors) if errors else None,
        "signed_error_median_ms": median(signed),
        "function_ok": sum(v["function_ok"] for v in verdicts),
        "function_in_stack": sum(v["function_in_stack"] for v in verdicts),
        "function_last_stack": sum(v.get("function_last_stack", False) for v in verdicts),
        "stacks_listed_median": median(
            [v["stacks_listed"] for v in verdicts if "stacks_listed" in v]
        ),
        "report_latency_median_ms": median(latency),
        "by_kind": by_kind,
        "disturbed": sum(1 for run in runs if run.get("disturbed")),
        "runs": len(runs),
    }


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({pct(100 * part / whole if whole else None)})"


def _accuracy_tables(summaries: dict[str, dict[str, Any]]) -> str:
    rows = []
    for tool in TOOLS:
        s = summaries[tool]
        rows.append(
            [
                LABEL[tool],
                _share(s["detected"], s["injected"]),
                str(s["false_positives"]),
                num(s["abs_error_median_ms"], 3),
                num(s["abs_error_max_ms"], 3),
                num(s["signed_error_median_ms"], 3),
                _share(s["function_ok"], s["injected"]),
                _share(s["function_last_stack"], s["injected"]) if tool == "peer" else "-",
                _share(s["function_in_stack"], s["injected"]),
                num(s["stacks_listed_median"], 0) if tool == "peer" else "1",
                num(s["report_latency_median_ms"], 1) if tool == "peer" else "-",
                f"{s['disturbed']}/{s['runs']}",
            ]
        )
    ours, peer = summaries["ours"], summaries["peer"]
    rows.append(
        [
            "ours/peer",
            "",
            "",
            _ratio(ours["abs_error_median_ms"], peer["abs_error_median_ms"]),
            _ratio(ours["abs_error_max_ms"], peer["abs_error_max_ms"]),
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ]
    )
    main = table(
        [
            "tool",
            "recall",
            "false pos.",
            "abs. error median (ms)",
            "abs. error max (ms)",
            "error median, signed",
            "right function",
            "peer: in last stack",
            "in any stack",
            "stacks listed",
            "report after end (ms)",
            "disturbed runs",
        ],
        rows,
        [False, True, True, True, True, True, True, True, True, True, True, True],
    )
    kind_rows = [
        [
            kind,
            *(
                f"{summaries[tool]['by_kind'][kind]['detected']}"
                f"/{summaries[tool]['by_kind'][kind]['injected']}, "
                f"{summaries[tool]['by_kind'][kind]['function_ok']} right"
                for tool in TOOLS
            ),
        ]
        for kind in KINDS
    ]
    per_kind = table(
        ["kind", *(f"{LABEL[tool]}: detected, right function" for tool in TOOLS)],
        kind_rows,
        [False, True, True],
    )
    return main + "\nPer kind:\n\n" + per_kind


def _storm_table(storm: dict[str, Any]) -> str:
    rows = []
    for tool in TOOLS:
        r = storm["rounds"][tool]
        rows.append(
            [
                LABEL[tool],
                _med_spread(_values(r, "reported_per_s"), 0),
                _med_spread(_values(r, "cpu_pct"), 1),
                _med_spread(_values(r, "cpu_ms_per_block"), 2),
                _med_spread(_values(r, "rss_mib"), 1),
                _disturbed(r),
            ]
        )
    ours, peer = storm["rounds"]["ours"], storm["rounds"]["peer"]
    rows.append(
        [
            "ours/peer",
            "",
            _ratio(median(_values(ours, "cpu_pct")), median(_values(peer, "cpu_pct"))),
            _ratio(
                median(_values(ours, "cpu_ms_per_block")),
                median(_values(peer, "cpu_ms_per_block")),
            ),
            _ratio(median(_values(ours, "rss_mib")), median(_values(peer, "rss_mib"))),
            "",
        ]
    )
    return table(
        [
            "tool",
            "blocks reported/s",
            "CPU, % of a core (children incl.)",
            "CPU ms per reported block",
            "RSS (MiB)",
            "disturbed",
        ],
        rows,
        [False, True, True, True, True, True],
    )


def _loss(base: list[float], other: list[float]) -> float | None:
    b, o = median(base), median(other)
    return None if not b or o is None else 100 * (1 - o / b)


def _paired(base: list[float], other: list[float]) -> list[float]:
    return [100 * (1 - o / b) for b, o in zip(base, other, strict=True) if b]


def _busy_summary(busy: dict[str, Any]) -> dict[str, Any]:
    alone = busy["rounds"]["alone"]
    out: dict[str, Any] = {}
    for tool in TOOLS:
        r = busy["rounds"][tool]
        out[tool] = {
            key: {
                "loss_pct": _loss(_values(alone, key), _values(r, key)),
                "paired_loss_pct": _paired(_values(alone, key), _values(r, key)),
            }
            for key in ("steps_per_s", "steps_per_cpu_s")
        }
    return out


def _busy_table(busy: dict[str, Any], summary: dict[str, Any]) -> str:
    rows = []
    for mode in ("alone", *TOOLS):
        r = busy["rounds"][mode]
        row = [
            LABEL[mode],
            _med_spread(_values(r, "steps_per_s"), 0),
            _med_spread(_values(r, "steps_per_cpu_s"), 0),
        ]
        if mode == "alone":
            row += ["-", "-", "-"]
        else:
            wall, cpu = summary[mode]["steps_per_s"], summary[mode]["steps_per_cpu_s"]
            row += [
                f"{pct(wall['loss_pct'], sign=True)} ({spread(wall['paired_loss_pct'], 1)})",
                f"{pct(cpu['loss_pct'], sign=True)} ({spread(cpu['paired_loss_pct'], 1)})",
                _med_spread(_values(r, "tool_cpu_pct"), 1),
            ]
        row.append(_disturbed(r))
        rows.append(row)
    return table(
        [
            "mode",
            "steps/s",
            "steps per app CPU s",
            "loss per wall s (paired rounds)",
            "loss per CPU s (paired rounds)",
            "tool CPU %",
            "disturbed",
        ],
        rows,
        [False, True, True, True, True, True, True],
    )


def _headline(data: dict[str, Any], acc: dict[str, dict[str, Any]]) -> str:
    rows = []
    for threshold in (f"{t:g}" for t in IDLE_THRESHOLDS_MS):
        per_tool = data["idle"]["rounds"][threshold]
        o, p = (median(_values(per_tool[t], "cpu_pct")) for t in TOOLS)
        rows.append(
            [f"idle app, CPU % of a core, -t {threshold}", num(o, 2), num(p, 2), _ratio(o, p)]
        )
    per_tool = data["idle"]["rounds"]["10"]
    o, p = (median(_values(per_tool[t], "rss_mib")) for t in TOOLS)
    rows.append(["RSS of the tool (MiB), idle, -t 10", num(o, 1), num(p, 1), _ratio(o, p)])
    rows.append(
        [
            "recall",
            _share(acc["ours"]["detected"], acc["ours"]["injected"]),
            _share(acc["peer"]["detected"], acc["peer"]["injected"]),
            "",
        ]
    )
    o, p = acc["ours"]["abs_error_median_ms"], acc["peer"]["abs_error_median_ms"]
    rows.append(["duration error, median of abs. (ms)", num(o, 3), num(p, 3), _ratio(o, p)])
    o, p = acc["ours"]["abs_error_max_ms"], acc["peer"]["abs_error_max_ms"]
    rows.append(["duration error, max of abs. (ms)", num(o, 3), num(p, 3), _ratio(o, p)])
    rows.append(
        [
            "right function named (peer: first stack listed)",
            _share(acc["ours"]["function_ok"], acc["ours"]["injected"]),
            _share(acc["peer"]["function_ok"], acc["peer"]["injected"]),
            "",
        ]
    )
    rows.append(
        [
            "peer: in its last stack listed / in any",
            "-",
            " / ".join(
                _share(acc["peer"][key], acc["peer"]["injected"])
                for key in ("function_last_stack", "function_in_stack")
            ),
            "",
        ]
    )
    storm = data["storm"]["rounds"]
    o, p = (median(_values(storm[t], "cpu_ms_per_block")) for t in TOOLS)
    rows.append(["storm, CPU ms per reported block", num(o, 2), num(p, 2), _ratio(o, p)])
    busy = data["busy_summary"]
    for key, what in (("steps_per_s", "per wall s"), ("steps_per_cpu_s", "per app CPU s")):
        o, p = (busy[t][key]["loss_pct"] for t in TOOLS)
        rows.append([f"busy loop, loss {what}", pct(o, sign=True), pct(p, sign=True), ""])
    return table(
        ["figure (medians)", LABEL["ours"], LABEL["peer"], "ours/peer"],
        rows,
        [False, True, True, True],
    )


def _render(data: dict[str, Any], acc: dict[str, dict[str, Any]], config: PeerConfig) -> str:
    idle, storm, busy = data["idle"], data["storm"], data["busy"]
    return (
        f"Both tools in one run, alternating rounds (rotating order), the peer installed by "
        f"the bench (`{data['peer_venv']}`). Target Python {data['python']}. Ours with its "
        "defaults (stacks, cause, trace links). Medians, with the lowest and highest round "
        "in brackets; ours/peer = ratio of the medians. Disturbed = windows in which other "
        "people's processes used more than "
        f"{config.neighbours.cpu_limit_pct:g}% of a core (or another otel-blocksnoop ran). "
        f"Section took {data['elapsed_s']:.0f} s.\n\n"
        + _headline(data, acc)
        + f"\n### Idle app ({config.rounds} rounds of {idle['seconds']:g} s per tool and "
        "threshold)\n\n"
        "CPU of the tool and its children (ours: Austin; the peer: Austin and its BPF "
        "collector `blocksnoop-ebpf`), from /proc over the window; RSS at its end.\n\n"
        + _idle_table(idle)
        + f"\n### Detection accuracy ({config.accuracy_rounds} launched runs per tool, "
        f"{len(KINDS)} kinds x {config.per_kind} blocks of {ACCURACY_BLOCK_MS:g} ms, "
        f"-t {ACCURACY_THRESHOLD_MS:g})\n\n"
        "Truth: the app's own CLOCK_MONOTONIC around each blocking call "
        "(apps/kinds_app.py). Ours: paired by overlap, right function = `call_site`. "
        "The peer prints no start or end: paired by the moment it printed the event "
        "(`observed_at`, on the wall clock, moved to CLOCK_MONOTONIC), right function = "
        "innermost app frame of the first stack it lists (it lists every distinct stack "
        "seen from 200 ms before the block to its report, oldest first); last stack and "
        "any stack score the others "
        "(bench/blocksnoop_bench/peer_scoring.py).\n\n"
        + _accuracy_tables(acc)
        + f"\n### Storm ({STORM_RATE_PER_S:g} blocks/s of {STORM_BLOCK_MS:g} ms, "
        f"{', '.join(STORM_KINDS)}, -t {STORM_THRESHOLD_MS:g}; {config.rounds} rounds of "
        f"{config.storm_s:g} s per tool)\n\n"
        "CPU of the tool and its children over the window, divided by the blocks it "
        "reported that ended in the window.\n\n"
        + _storm_table(storm)
        + f"\n### Busy work loop ({config.rounds} rounds of {config.busy_s:g} s per mode, "
        f"-t {BUSY_THRESHOLD_MS:g})\n\n"
        "apps/work_app.py: 20 tasks, small JSON encode+decode per step, "
        "`await asyncio.sleep(0)` between. Loss = 1 - median watched / median alone; "
        "in brackets the lowest and highest loss of one round against the alone "
        "window of the same round.\n\n" + _busy_table(busy, data["busy_summary"])
    )


def run_peer(config: PeerConfig) -> Section:
    """Install the peer, then measure both tools: idle, accuracy, storm, busy."""
    started = time.monotonic()
    venv = install_peer()
    sys.stderr.write(f"bench: side by side with blocksnoop {PEER_VERSION} ({venv})...\n")
    data: dict[str, Any] = {"peer_venv": str(venv), "python": config.python}
    sys.stderr.write("bench: idle app...\n")
    data["idle"] = _idle(config, venv)
    sys.stderr.write("bench: detection accuracy...\n")
    data["accuracy"] = _accuracy(config, venv)
    sys.stderr.write("bench: storm...\n")
    data["storm"] = _storm(config, venv)
    sys.stderr.write("bench: busy work loop...\n")
    data["busy"] = _busy(config, venv)
    data["busy_summary"] = _busy_summary(data["busy"])
    acc = {tool: _accuracy_summary(data["accuracy"]["runs"][tool]) for tool in TOOLS}
    data["accuracy_summary"] = acc
    pythons = {run["python"] for runs in data["accuracy"]["runs"].values() for run in runs}
    data["python"] = ", ".join(sorted(pythons)) or config.python
    data["elapsed_s"] = time.monotonic() - started
    data["config"] = {
        "rounds": config.rounds,
        "accuracy_rounds": config.accuracy_rounds,
        "per_kind": config.per_kind,
        "idle_s": config.idle_s,
        "storm_s": config.storm_s,
        "busy_s": config.busy_s,
    }
    return Section(
        slug="peer",
        title=f"Side by side with blocksnoop {PEER_VERSION}",
        body=_render(data, acc, config),
        data={"quick": config.quick, **data},
    )
