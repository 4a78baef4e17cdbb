# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Overhead: what attaching the sidecar costs a real server, and what it costs itself.

Throughput is noisy here (10-20% between one-second windows), so every
figure comes from alternating with/without rounds in one run and comparing
medians; the order flips each round so drift hits both sides alike. The
sidecar is started fresh for each "with" round and stopped after it, so a
"without" round really has no tracepoint attached.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from blocksnoop_bench.procs import (
    APPS,
    PYTHON,
    BenchError,
    Child,
    CpuTimes,
    Lines,
    Neighbours,
    Sidecar,
    attached,
    cpu_times,
    rss_mib,
    start_app,
)
from blocksnoop_bench.report import Section, median, num, pct, spread, table

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

THRESHOLD_MS = 100.0
SETTLE_S = 0.5
CONNECTIONS = 16
APT_TIMEOUT_S = 300
QUIET_WAIT_S = 15.0
"""Longest wait before a window for someone else's sidecar to end."""


@dataclass(frozen=True, slots=True)
class OverheadConfig:
    """How long to measure: the runner's flags, with quick and full defaults."""

    rounds: int
    round_s: int
    warmup_s: int
    idle_s: float
    raw_dir: Path
    neighbours: Neighbours


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load window sustained; latencies only when the client reports them."""

    rps: float
    p50_ms: float | None
    p99_ms: float | None


class Load(Protocol):
    """A load generator in another process; wrk, or the Python fallback."""

    name: str

    def run(self, seconds: int) -> LoadResult:
        """Drive the server for ``seconds`` and report what it sustained."""


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_latency(text: str, percentile: str) -> float | None:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    return float(match.group(1)) * _UNITS_MS[match.group(2)] if match else None


class Wrk:
    """wrk, one thread: a C client, so the Python server is the bottleneck."""

    name = "wrk"

    def __init__(self, binary: str, port: int) -> None:
        self._binary = binary
        self._url = f"http://127.0.0.1:{port}/"

    def run(self, seconds: int) -> LoadResult:
        """Run one wrk window; its own summary gives req/s and the latency percentiles."""
        argv = [self._binary, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", self._url]
        with Child(argv) as child:
            out, err = child.process.communicate(timeout=seconds + 30)
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if child.process.returncode != 0 or match is None:
            msg = (
                f"failed to run wrk (exit {child.process.returncode}): {err.strip() or out[-300:]}"
            )
            raise BenchError(msg)
        return LoadResult(float(match.group(1)), _wrk_latency(out, "50"), _wrk_latency(out, "99"))


class PythonLoad:
    """apps/http_load.py in its own process, when wrk cannot be had."""

    name = "apps/http_load.py (wrk unavailable)"

    def __init__(self, port: int) -> None:
        self._port = port

    def run(self, seconds: int) -> LoadResult:
        """Run one window of apps/http_load.py, a separate process like wrk."""
        argv = [
            PYTHON,
            str(APPS / "http_load.py"),
            f"--port={self._port}",
            f"--connections={CONNECTIONS}",
            f"--seconds={seconds}",
        ]
        with Child(argv) as child:
            out, err = child.process.communicate(timeout=seconds + 30)
        if child.process.returncode != 0:
            msg = f"failed to run http_load.py: {err.strip()[-300:]}"
            raise BenchError(msg)
        result = json.loads(out)
        return LoadResult(
            result["requests"] / result["seconds"], result["p50_ms"], result["p99_ms"]
        )


def find_wrk() -> str | None:
    """Wrk from PATH, installed from Debian if missing (a fresh machine has none)."""
    found = shutil.which("wrk")
    if found or shutil.which("apt-get") is None:
        return found
    sys.stderr.write("bench: installing wrk with apt-get...\n")
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    # A failed first install is usually stale package lists: update, retry.
    for argv in (install, ["apt-get", "update", "-q"], install):
        try:
            subprocess.run(argv, check=False, capture_output=True, timeout=APT_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if found := shutil.which("wrk"):
            return found
    return None


def _wait_ready(lines: Lines, what: str) -> int:
    line = lines.wait_for(lambda text: text.startswith("ready "), 30, what)
    return int(line.split()[1])


@dataclass(slots=True)
class SidecarCost:
    """The sidecar's own CPU (% of one core) and RSS over a measured window."""

    own_pct: float
    children_pct: float
    rss_mib: float
    attach_s: float | None

    @classmethod
    def between(cls, before: CpuTimes, sidecar: Sidecar) -> SidecarCost:
        """Measure from ``before`` to now, while the sidecar is surely still alive."""
        own, children = cpu_times(sidecar.pid).percent_since(before)
        return cls(own, children, rss_mib(sidecar.pid), sidecar.attach_s)

    def as_json(self) -> dict[str, float | None]:
        """Raw values for the results file."""
        return {
            "own_pct": self.own_pct,
            "children_pct": self.children_pct,
            "rss_mib": self.rss_mib,
            "attach_s": self.attach_s,
        }


@dataclass(frozen=True, slots=True)
class Rounds:
    """Per-mode results in round order, and which windows others disturbed."""

    values: dict[str, list[float]]
    disturbed: dict[str, list[bool]]
    foreign_cpu_pct: dict[str, list[float]]

    def clean(self, mode: str) -> list[float]:
        """Values of the windows nobody else disturbed."""
        return [v for v, d in zip(self.values[mode], self.disturbed[mode], strict=True) if not d]

    def as_json(self) -> dict[str, Any]:
        """Raw values for the results file."""
        return {
            "values": self.values,
            "disturbed": self.disturbed,
            "foreign_cpu_pct": self.foreign_cpu_pct,
        }


def _alternate(
    config: OverheadConfig, modes: tuple[str, ...], measure: Callable[[str, int], float]
) -> Rounds:
    """Run every mode once per round, rotating the order so drift hits all modes alike."""
    values: dict[str, list[float]] = {mode: [] for mode in modes}
    disturbed: dict[str, list[bool]] = {mode: [] for mode in modes}
    foreign: dict[str, list[float]] = {mode: [] for mode in modes}
    neighbours = config.neighbours
    for round_no in range(config.rounds):
        shift = round_no % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            neighbours.wait_quiet(QUIET_WAIT_S)
            with neighbours.window() as window:
                values[mode].append(measure(mode, round_no))
            disturbed[mode].append(window[0].disturbed(neighbours.cpu_limit_pct))
            foreign[mode].append(window[0].foreign_cpu_pct)
        sys.stderr.write(
            f"bench:   round {round_no + 1}/{config.rounds}: "
            + ", ".join(
                f"{m} {values[m][-1]:,.0f}"
                + (f" (disturbed: others {foreign[m][-1]:.0f}% CPU)" if disturbed[m][-1] else "")
                for m in modes
            )
            + "\n"
        )
    return Rounds(values, disturbed, foreign)


def _idle_cost(server_pid: int, config: OverheadConfig) -> dict[str, Any]:
    """Measure over a long window: at -t 100 an idle sidecar only wakes to poll."""
    sys.stderr.write(f"bench: sidecar attached to the idle server for {config.idle_s:g} s...\n")
    with attached(server_pid, THRESHOLD_MS, config.raw_dir / "idle.jsonl", SETTLE_S) as sidecar:
        before = cpu_times(sidecar.pid)
        rss = [rss_mib(sidecar.pid)]
        deadline = time.monotonic() + config.idle_s
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            rss.append(rss_mib(sidecar.pid))
        own, children = cpu_times(sidecar.pid).percent_since(before)
    return {
        "seconds": config.idle_s,
        "own_pct": own,
        "children_pct": children,
        "rss_start_mib": rss[0],
        "rss_end_mib": rss[-1],
        "rss_max_mib": max(rss),
    }


def _http_throughput(config: OverheadConfig) -> dict[str, Any]:
    """Measure req/s with and without; the idle cost comes first, on the fresh server."""
    server, server_out = start_app("http_app.py")
    with server:
        port = _wait_ready(server_out, "the HTTP server's ready line")
        idle = _idle_cost(server.pid, config)
        wrk = find_wrk()
        load: Load = Wrk(wrk, port) if wrk else PythonLoad(port)
        sys.stderr.write(f"bench: HTTP load with {load.name}, warm-up {config.warmup_s} s...\n")
        load.run(config.warmup_s)
        latencies: dict[str, list[LoadResult]] = {"without": [], "with": []}
        costs: list[SidecarCost] = []
        blocks: list[int] = []
        iteration_rates: list[float] = []

        def measure(mode: str, round_no: int) -> float:
            if mode == "without":
                result = load.run(config.round_s)
            else:
                out = config.raw_dir / f"http-round{round_no}.jsonl"
                with attached(server.pid, THRESHOLD_MS, out, SETTLE_S) as sidecar:
                    before = cpu_times(sidecar.pid)
                    result = load.run(config.round_s)
                    costs.append(SidecarCost.between(before, sidecar))
                summary = sidecar.summary() or {}
                blocks.append(int(summary.get("blocks", 0)))
                if "iterations" in summary and summary.get("duration_s"):
                    iteration_rates.append(summary["iterations"] / summary["duration_s"])
            latencies[mode].append(result)
            return result.rps

        rps = _alternate(config, ("without", "with"), measure)
    return {
        "load": load.name,
        "connections": CONNECTIONS,
        "rps": rps.as_json(),
        "p50_ms": {
            m: [r.p50_ms for r in rs if r.p50_ms is not None] for m, rs in latencies.items()
        },
        "p99_ms": {
            m: [r.p99_ms for r in rs if r.p99_ms is not None] for m, rs in latencies.items()
        },
        "sidecar_under_load": [cost.as_json() for cost in costs],
        "blocks_reported": blocks,
        "loop_iterations_per_s": iteration_rates,
        "idle": idle,
    }


def _spin_throughput(config: OverheadConfig) -> dict[str, Any]:
    """Measure iterations/s: sidecar off, on this loop, and on another process.

    The last mode shows the cost every process pays while any syscall
    tracepoint is attached, watched or not.
    """
    samples: list[tuple[int, int]] = []

    def record(line: str) -> None:
        now, count = line.split()
        samples.append((int(now), int(count)))

    spin, _ = start_app("spin_app.py", on_line=record)
    other, other_out = start_app("http_app.py")
    with spin, other:
        _wait_ready(other_out, "the idle server's ready line")

        def window(seconds: float) -> float:
            start = time.monotonic_ns()
            time.sleep(seconds)
            end = time.monotonic_ns()
            inside = [s for s in list(samples) if start <= s[0] <= end]
            if len(inside) < 2:
                msg = f"failed to read the spin loop's counter: {len(inside)} samples in the window"
                raise BenchError(msg)
            (t0, c0), (t1, c1) = inside[0], inside[-1]
            return (c1 - c0) * 1e9 / (t1 - t0)

        window(config.warmup_s)
        costs: list[SidecarCost] = []

        def measure(mode: str, round_no: int) -> float:
            if mode == "without":
                return window(config.round_s)
            pid = spin.pid if mode == "watched" else other.pid
            out = config.raw_dir / f"spin-{mode}-round{round_no}.jsonl"
            with attached(pid, THRESHOLD_MS, out, SETTLE_S) as sidecar:
                before = cpu_times(sidecar.pid)
                rate = window(config.round_s)
                if mode == "watched":
                    costs.append(SidecarCost.between(before, sidecar))
            return rate

        sys.stderr.write("bench: tight asyncio.sleep(0) loop...\n")
        rates = _alternate(config, ("without", "watched", "unwatched"), measure)
    return {
        "rates": rates.as_json(),
        "sidecar_under_load": [cost.as_json() for cost in costs],
    }


def _loss(without: list[float], with_: list[float]) -> float | None:
    """Relative loss of the medians, in % (positive: slower with the sidecar)."""
    base, other = median(without), median(with_)
    return None if not base or other is None else 100 * (1 - other / base)


def _paired_losses(without: list[float], with_: list[float]) -> list[float]:
    """Per-round loss: each "with" round against the "without" round next to it."""
    return [100 * (1 - w / base) for base, w in zip(without, with_, strict=True) if base]


def _clean_note(rounds: Rounds, modes: tuple[str, ...], limit_pct: float) -> str:
    """Say how many windows others disturbed, and the medians without them."""
    touched = {mode: sum(rounds.disturbed[mode]) for mode in modes}
    if not any(touched.values()):
        return (
            "No window was disturbed (no other otel-blocksnoop, other processes "
            f"<= {limit_pct:g}% of a core).\n"
        )
    base = rounds.clean(modes[0])
    parts = [
        f"{mode} {num(median(rounds.clean(mode)), 0)} (n={len(rounds.clean(mode))}"
        + ("" if mode == modes[0] else f", {pct(_loss(base, rounds.clean(mode)), sign=True)}")
        + ")"
        for mode in modes
    ]
    return (
        "Windows disturbed by other people's work on this shared machine (another "
        f"otel-blocksnoop running, or other processes > {limit_pct:g}% of a core): "
        + ", ".join(f"{mode} {n}/{len(rounds.values[mode])}" for mode, n in touched.items())
        + ". Medians over undisturbed windows only: "
        + ", ".join(parts)
        + ".\n"
    )


def _iterations_note(rates: list[float], rps: float | None) -> str:
    """Relate req/s to loop iterations/s: the epoll probes cost per iteration, not per request."""
    if not rates or not rps:
        return ""
    per_s = median(rates) or 0.0
    return (
        f"The server's loop ran ~{num(per_s, 0)} iterations/s under load (sidecar summary), "
        f"~{num(rps / per_s if per_s else None, 1)} requests per epoll return. "
    )


def _cost_row(label: str, window: str, costs: list[dict[str, float]]) -> list[str]:
    """Average the rounds: one 3 s round is below the 10 ms clock-tick resolution."""
    return [
        label,
        window,
        num(statistics.fmean(c["own_pct"] for c in costs) if costs else None, 2),
        num(statistics.fmean(c["children_pct"] for c in costs) if costs else None, 2),
        num(max((c["rss_mib"] for c in costs), default=None), 1),
    ]


def _render(http: dict[str, Any], spin: dict[str, Any], config: OverheadConfig) -> str:
    rps = Rounds(**http["rps"])
    http_modes = ("without", "with")
    http_rows = [
        [
            label,
            num(median(rps.values[mode]), 0),
            spread(rps.values[mode]),
            num(median(http["p50_ms"][mode]), 3),
            num(median(http["p99_ms"][mode]), 3),
        ]
        for label, mode in zip(("without sidecar", "with sidecar"), http_modes, strict=True)
    ]
    paired = _paired_losses(rps.values["without"], rps.values["with"])
    rates = Rounds(**spin["rates"])
    spin_modes = ("without", "watched", "unwatched")
    labels = ("without sidecar", "sidecar watching this loop", "sidecar watching another process")
    spin_rows = [
        [
            label,
            num(median(rates.values[mode]), 0),
            spread(rates.values[mode]),
            "-"
            if mode == "without"
            else pct(_loss(rates.values["without"], rates.values[mode]), sign=True),
            "-"
            if mode == "without"
            else spread(_paired_losses(rates.values["without"], rates.values[mode]), 1) + " %",
        ]
        for label, mode in zip(labels, spin_modes, strict=True)
    ]
    idle = http["idle"]
    attach = [
        c["attach_s"]
        for c in [*http["sidecar_under_load"], *spin["sidecar_under_load"]]
        if c.get("attach_s") is not None
    ]
    each = f"{config.round_s} s each"
    cost_rows = [
        [
            "idle server",
            f"{idle['seconds']:g} s",
            num(idle["own_pct"], 2),
            num(idle["children_pct"], 2),
            (
                f"{num(idle['rss_max_mib'], 1)} (start {num(idle['rss_start_mib'], 1)}, "
                f"end {num(idle['rss_end_mib'], 1)})"
            ),
        ],
        _cost_row("HTTP load (mean of rounds)", each, http["sidecar_under_load"]),
        _cost_row("spin loop (mean of rounds)", each, spin["sidecar_under_load"]),
    ]
    http_loss = pct(_loss(rps.values["without"], rps.values["with"]), sign=True)
    return (
        f"{config.rounds} rounds of {config.round_s} s per mode after {config.warmup_s} s "
        f"warm-up; the order rotates each round. The sidecar (`-t {THRESHOLD_MS:g}`, attach "
        "mode) is started fresh for each round and measured only once attached.\n\n"
        f"### HTTP/1.1 keep-alive server (apps/http_app.py), load: {http['load']}, "
        f"{http['connections']} connections\n\n"
        + table(
            ["mode", "median req/s", "range req/s", "p50 latency (ms)", "p99 latency (ms)"],
            http_rows,
            [False, True, True, True, True],
        )
        + f"\nThroughput loss (medians): **{http_loss}**; per-round paired loss median "
        f"{pct(median(paired), sign=True)}, range {spread(paired, 1)} %. "
        f"Blocks >= {THRESHOLD_MS:g} ms reported under load: {sum(http['blocks_reported'])}. "
        + _iterations_note(http["loop_iterations_per_s"], median(rps.values["with"]))
        + _clean_note(rps, http_modes, config.neighbours.cpu_limit_pct)
        + "\n### Worst case: `while True: await asyncio.sleep(0)` (apps/spin_app.py)\n\n"
        + table(
            ["mode", "median iterations/s", "range", "loss (medians)", "per-round loss range"],
            spin_rows,
            [False, True, True, True, True],
        )
        + "\n"
        + _clean_note(rates, spin_modes, config.neighbours.cpu_limit_pct)
        + "\n### The sidecar's own cost\n\n"
        "CPU as % of one core from /proc/PID/stat (utime+stime; children: the Austin "
        "processes it runs, running or reaped), RSS from VmRSS. "
        "BPF program time is charged to the traced processes, "
        "so it shows in the throughput tables, not here. "
        f"Start to attached (BPF compile and load): median {num(median(attach), 2)} s, "
        f"range {spread(attach, 2)} s over {len(attach)} starts.\n\n"
        + table(
            ["while", "window", "CPU own (%)", "CPU children (%)", "RSS (MiB)"],
            cost_rows,
            [False, True, True, True, False],
        )
    )


def run_overhead(config: OverheadConfig) -> Section:
    """Run the server benchmark first: its idle phase needs a machine not yet warmed by load."""
    started = time.monotonic()
    http = _http_throughput(config)
    spin = _spin_throughput(config)
    elapsed = time.monotonic() - started
    return Section(
        slug="overhead",
        title="Overhead",
        body=_render(http, spin, config) + f"\n(Overhead run took {elapsed:.0f} s.)\n",
        data={
            "http": http,
            "spin": spin,
            "elapsed_s": elapsed,
            "config": {
                "rounds": config.rounds,
                "round_s": config.round_s,
                "warmup_s": config.warmup_s,
                "idle_s": config.idle_s,
                "threshold_ms": THRESHOLD_MS,
            },
        },
    )
