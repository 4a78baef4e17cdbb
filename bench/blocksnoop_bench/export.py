# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Export: how soon a block's span reaches the collector, and what a storm costs.

Latency: a launch-mode sidecar (``-t 10``, default export settings) watches
apps/export_app.py, which blocks its loop with idle awaits between blocks and
records each block's end on CLOCK_MONOTONIC and on the wall clock. The spans
go over OTLP (gRPC, then HTTP/protobuf) to an in-process OTLP receiver
(harness/otlp.py), directly or through rotel (harness/rotel.py, ``--batch-timeout
10ms``). The receiver stamps each export request with the wall clock when it
arrives; a span's latency is that stamp minus its block's real end.

Storm: the same app blocks its loop 100 times a second for minutes while an
attached sidecar exports every block to the receiver. Measured: the
sidecar's CPU (its own and its Austin children's), its RSS over time, spans
reported, received and dropped, and lost kernel events.

Spans are paired with the app's blocks by overlap on the wall clock.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blocksnoop_bench.procs import (
    APPS,
    PYTHON,
    BenchError,
    CpuTimes,
    Neighbours,
    Sidecar,
    cpu_times,
    rss_mib,
    start_app,
)
from blocksnoop_bench.report import Section, num, table
from harness.otlp import OtlpReceiver, Request, attributes
from harness.rotel import Rotel

if TYPE_CHECKING:
    from collections.abc import Iterator

SPAN_NAME = "eventloop.block"
PROTOCOLS = ("grpc", "http/protobuf")
LATENCY_THRESHOLD_MS = 10.0
LATENCY_BLOCK_MS = (20.0, 50.0)
LATENCY_IDLE_MS = (50.0, 150.0)
GOAL_LATENCY_S = 1.0
ROTEL_ARGS = ("--batch-timeout", "10ms")
STORM_RATE = 100.0
STORM_BLOCK_MS = (5.0, 5.0)
STORM_THRESHOLD_MS = 4.0
STORM_SAMPLE_S = 5.0
SETTLE_S = 2.0
"""After attach, so the BPF compile's CPU burst stays out of the storm's window."""
DELIVERY_WAIT_S = 10.0
"""After the sidecar exits, how long spans still in rotel may take to arrive."""
DROP_LINE = re.compile(r"failed to deliver (\d+) (\S+)")
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """What one export run does; quick mode shrinks every count."""

    latency_blocks: int
    storm_s: int
    raw_dir: Path
    neighbours: Neighbours


class StampedReceiver(OtlpReceiver):
    """An OtlpReceiver that also notes, per trace request, the wall clock at arrival."""

    def __init__(self) -> None:
        super().__init__()
        self._stamps_lock = threading.Lock()
        self.stamped: list[tuple[int, Any]] = []

    def store(self, request: Request) -> None:
        """Stamp first, so the time is the request's arrival and not the end of storing it."""
        arrived_ns = time.time_ns()
        if hasattr(request, "resource_spans"):
            with self._stamps_lock:
                self.stamped.append((arrived_ns, request))
        super().store(request)

    def arrivals(self) -> list[dict[str, Any]]:
        """Every block span received: its pid, wall-clock start/end and arrival time."""
        with self._stamps_lock:
            stamped = list(self.stamped)
        spans: list[dict[str, Any]] = []
        for arrived_ns, request in stamped:
            for resource_spans in request.resource_spans:
                pid = attributes(resource_spans.resource.attributes).get("process.pid")
                for scope_spans in resource_spans.scope_spans:
                    spans.extend(
                        {
                            "pid": pid,
                            "start_unix_ns": span.start_time_unix_nano,
                            "end_unix_ns": span.end_time_unix_nano,
                            "arrived_unix_ns": arrived_ns,
                        }
                        for span in scope_spans.spans
                        if span.name == SPAN_NAME
                    )
        return spans

    def span_count(self) -> int:
        with self._stamps_lock:
            return sum(
                len(scope_spans.spans)
                for _, request in self.stamped
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
            )


def pair_latencies(
    blocks: list[dict[str, Any]], spans: list[dict[str, Any]]
) -> tuple[list[tuple[int, float]], dict[str, int]]:
    """(block end ns, latency s) of every span that overlaps exactly one block; the counts.

    The app's blocks run on one thread and never overlap, so a bisect on their
    starts finds every candidate.
    """
    ordered = sorted(blocks, key=lambda b: b["start_unix_ns"])
    starts = [b["start_unix_ns"] for b in ordered]
    latencies = []
    hit: set[int] = set()
    unpaired = merged = duplicates = 0
    for span in spans:
        found = []
        i = bisect.bisect_left(starts, span["end_unix_ns"]) - 1
        while i >= 0 and ordered[i]["end_unix_ns"] > span["start_unix_ns"]:
            found.append(i)
            i -= 1
        if not found:
            unpaired += 1
            continue
        if len(found) > 1:
            merged += 1
            continue
        if found[0] in hit:
            duplicates += 1
        hit.add(found[0])
        block = ordered[found[0]]
        latency = (span["arrived_unix_ns"] - block["end_unix_ns"]) / NS_PER_S
        latencies.append((block["end_unix_ns"], latency))
    counts = {
        "blocks": len(blocks),
        "spans": len(spans),
        "blocks_with_span": len(hit),
        "spans_unpaired": unpaired,
        "spans_merged": merged,
        "spans_duplicate": duplicates,
    }
    return latencies, counts


def distribution(values: list[float]) -> dict[str, float | None]:
    """Median, p90, p99 and max; None for an empty series."""
    if not values:
        return {"median": None, "p90": None, "p99": None, "max": None}
    if len(values) == 1:
        return dict.fromkeys(("median", "p90", "p99", "max"), values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "median": statistics.median(values),
        "p90": cuts[89],
        "p99": cuts[98],
        "max": max(values),
    }


def _drops(stderr: str) -> dict[str, Any]:
    delivered = {m.group(2): int(m.group(1)) for m in DROP_LINE.finditer(stderr)}
    return {
        "failed_to_deliver": delivered,
        "queue_full_warned": "is full" in stderr,
        "warnings": [line for line in stderr.splitlines() if "WARN" in line.upper()][:20],
    }


@contextlib.contextmanager
def _collector(receiver: OtlpReceiver, protocol: str, via_rotel: bool) -> Iterator[str]:
    """Yield the endpoint the sidecar exports to: the receiver's, or a rotel in front of it."""
    if not via_rotel:
        yield (f"http://{receiver.grpc_endpoint}" if protocol == "grpc" else receiver.http_endpoint)
        return
    with Rotel(receiver, protocol="grpc", args=ROTEL_ARGS) as rotel:
        yield f"http://{rotel.grpc_endpoint}" if protocol == "grpc" else rotel.http_endpoint


def _latency_run(protocol: str, via_rotel: bool, config: ExportConfig) -> dict[str, Any]:
    name = f"export-latency-{protocol.replace('/', '-')}{'-rotel' if via_rotel else ''}"
    count = config.latency_blocks
    with (
        tempfile.TemporaryDirectory(prefix="blocksnoop-bench-") as tmp,
        StampedReceiver() as receiver,
        _collector(receiver, protocol, via_rotel) as endpoint,
    ):
        app_out = Path(tmp) / "blocks.json"
        app = [
            PYTHON,
            str(APPS / "export_app.py"),
            "latency",
            f"--count={count}",
            f"--out={app_out}",
            "--block-ms",
            *(f"{ms:g}" for ms in LATENCY_BLOCK_MS),
            "--idle-ms",
            *(f"{ms:g}" for ms in LATENCY_IDLE_MS),
        ]
        sidecar = Sidecar(
            [
                "-t",
                f"{LATENCY_THRESHOLD_MS:g}",
                "--otlp-endpoint",
                endpoint,
                "--otlp-protocol",
                protocol,
                "--",
                *app,
            ],
            config.raw_dir / f"{name}.jsonl",
        )
        expected_s = count * (sum(LATENCY_BLOCK_MS) + sum(LATENCY_IDLE_MS)) / 2 / 1000
        with config.neighbours.window() as window:
            try:
                code = sidecar.child.wait(timeout=60 + 3 * expected_s)
            finally:
                sidecar.child.stop()
        if code != 0 or not app_out.exists():
            msg = f"failed to run the export latency target (exit {code}): "
            raise BenchError(msg + sidecar.stderr.text()[-800:])
        reported = sum(1 for r in sidecar.records() if r.get("type") == "block")
        # Rotel may still hold the last batch for its batch timeout.
        deadline = time.monotonic() + DELIVERY_WAIT_S
        while receiver.span_count() < reported and time.monotonic() < deadline:
            time.sleep(0.05)
        timings = app_out.read_text()
        spans = receiver.arrivals()
    (config.raw_dir / f"{name}-blocks.json").write_text(timings)
    blocks = _json(timings)["blocks"]
    paired, counts = pair_latencies(blocks, spans)
    latencies = [latency for _, latency in paired]
    return {
        "protocol": protocol,
        "via_rotel": via_rotel,
        "reported": reported,
        **counts,
        "latency_s": distribution(latencies),
        "over_goal": sum(1 for latency in latencies if latency > GOAL_LATENCY_S),
        "latencies_s": latencies,
        "summary": sidecar.summary(),
        "drops": _drops(sidecar.stderr.text()),
        "foreign_cpu_pct": window[0].foreign_cpu_pct,
        "foreign_sidecar": window[0].foreign_sidecar,
    }


def _json(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        msg = "failed to read the app's timings: not a JSON object"
        raise BenchError(msg)
    return value


@dataclass(frozen=True, slots=True)
class Sample:
    """The sidecar seen from /proc at one instant of the storm."""

    cpu: CpuTimes
    rss_mib: float
    received: int

    def as_json(self, origin_s: float) -> dict[str, float]:
        return {
            "t_s": self.cpu.at_s - origin_s,
            "own_cpu_s": self.cpu.own_s,
            "children_cpu_s": self.cpu.children_s,
            "rss_mib": self.rss_mib,
            "received": self.received,
        }


def _slope_mib_per_min(samples: list[Sample], since_s: float) -> float | None:
    """Least-squares slope of RSS over the samples from ``since_s`` on."""
    points = [(s.cpu.at_s, s.rss_mib) for s in samples if s.cpu.at_s >= since_s]
    if len(points) < 3:
        return None
    slope = statistics.linear_regression([p[0] for p in points], [p[1] for p in points]).slope
    return 60 * slope


def _storm_run(config: ExportConfig) -> dict[str, Any]:  # noqa: PLR0915 - one timeline, read top down
    storm_started = threading.Event()
    storm_ended = threading.Event()

    def on_line(line: str) -> None:
        if line == "storm start":
            storm_started.set()
        elif line == "storm end":
            storm_ended.set()

    with (
        tempfile.TemporaryDirectory(prefix="blocksnoop-bench-") as tmp,
        StampedReceiver() as receiver,
    ):
        app_out = Path(tmp) / "blocks.json"
        app, lines = start_app(
            "export_app.py",
            "storm",
            f"--seconds={config.storm_s}",
            f"--rate={STORM_RATE:g}",
            f"--out={app_out}",
            "--block-ms",
            *(f"{ms:g}" for ms in STORM_BLOCK_MS),
            on_line=on_line,
        )
        with app:
            lines.wait_for(lambda line: line == "ready", 30, "the storm app ready")
            sidecar = Sidecar(
                [
                    "-t",
                    f"{STORM_THRESHOLD_MS:g}",
                    "--otlp-endpoint",
                    f"http://{receiver.grpc_endpoint}",
                    "--otlp-protocol",
                    "grpc",
                    str(app.pid),
                ],
                config.raw_dir / "export-storm.jsonl",
            )
            try:
                sidecar.wait_attached()
                time.sleep(SETTLE_S)
                samples: list[Sample] = []
                disturbed: list[bool] = []
                with config.neighbours.window() as window:
                    app.process.send_signal(signal.SIGUSR1)
                    if not storm_started.wait(10):
                        msg = "failed to start the storm: the app did not answer SIGUSR1"
                        raise BenchError(msg)
                    origin = time.monotonic()
                    origin_unix_ns = time.time_ns()
                    deadline = origin + config.storm_s + 60
                    while True:
                        samples.append(
                            Sample(
                                cpu_times(sidecar.pid), rss_mib(sidecar.pid), receiver.span_count()
                            )
                        )
                        if storm_ended.is_set() or time.monotonic() > deadline:
                            break
                        with config.neighbours.window() as interval:
                            storm_ended.wait(STORM_SAMPLE_S)
                        disturbed.append(interval[0].disturbed(config.neighbours.cpu_limit_pct))
                code = app.wait(timeout=60)
                sidecar_code = sidecar.child.wait(timeout=60)
            finally:
                sidecar.stop()
        if code != 0 or not app_out.exists():
            msg = f"failed to run the storm app (exit {code}): {app.argv}"
            raise BenchError(msg)
        timings = app_out.read_text()
        spans = receiver.arrivals()
        stderr = sidecar.stderr.text()
    (config.raw_dir / "export-storm-blocks.json").write_text(timings)
    (config.raw_dir / "export-storm-sidecar.log").write_text(stderr)
    blocks = _json(timings)["blocks"]
    paired, counts = pair_latencies(blocks, spans)
    latencies = [latency for _, latency in paired]
    (config.raw_dir / "export-storm-latencies.json").write_text(
        json.dumps([[(end - origin_unix_ns) / NS_PER_S, latency] for end, latency in paired])
    )
    intervals = _intervals(samples, disturbed, origin, origin_unix_ns, paired)
    clean = [i for i in intervals if not i["disturbed"]]
    first, last = samples[0], samples[-1]
    own, children = last.cpu.percent_since(first.cpu)
    window_s = last.cpu.at_s - first.cpu.at_s
    at_minute = min(samples, key=lambda s: abs(s.cpu.at_s - origin - 60))
    slope_since = origin + (min(120.0, window_s / 2))
    span_s = (blocks[-1]["end_ns"] - blocks[0]["start_ns"]) / NS_PER_S if blocks else 0.0
    return {
        "storm_s": config.storm_s,
        "rate_target": STORM_RATE,
        "block_ms": STORM_BLOCK_MS,
        "threshold_ms": STORM_THRESHOLD_MS,
        "blocks_per_s": len(blocks) / span_s if span_s else None,
        "reported": sum(1 for r in sidecar.records() if r.get("type") == "block"),
        **counts,
        "summary": sidecar.summary(),
        "sidecar_exit": sidecar_code,
        "drops": _drops(stderr),
        "cpu_window_s": window_s,
        "cpu_own_pct": own,
        "cpu_children_pct": children,
        "rss_start_mib": first.rss_mib,
        "rss_1min_mib": at_minute.rss_mib,
        "rss_1min_at_s": at_minute.cpu.at_s - origin,
        "rss_end_mib": last.rss_mib,
        "rss_max_mib": max(s.rss_mib for s in samples),
        "rss_slope_since_s": slope_since - origin,
        "rss_slope_mib_per_min": _slope_mib_per_min(samples, slope_since),
        "latency_s": distribution(latencies),
        "over_goal": sum(1 for latency in latencies if latency > GOAL_LATENCY_S),
        "samples": [s.as_json(origin) for s in samples],
        "intervals": intervals,
        "clean_intervals": len(clean),
        "latency_clean_s": distribution([v for i in clean for v in i["latencies_s"]]),
        "latency_disturbed_s": distribution(
            [v for i in intervals if i["disturbed"] for v in i["latencies_s"]]
        ),
        "foreign_cpu_pct": window[0].foreign_cpu_pct,
        "foreign_sidecar": window[0].foreign_sidecar,
    }


def _intervals(
    samples: list[Sample],
    disturbed: list[bool],
    origin: float,
    origin_unix_ns: int,
    paired: list[tuple[int, float]],
) -> list[dict[str, Any]]:
    """Latencies of the blocks that ended in each sampling interval.

    Also whether others used the machine meanwhile (another sidecar, or CPU over the limit).
    """
    intervals = []
    for before, after, busy in zip(samples, samples[1:], disturbed, strict=False):
        low = origin_unix_ns + round((before.cpu.at_s - origin) * NS_PER_S)
        high = origin_unix_ns + round((after.cpu.at_s - origin) * NS_PER_S)
        values = [latency for end, latency in paired if low <= end < high]
        intervals.append(
            {
                "from_s": before.cpu.at_s - origin,
                "to_s": after.cpu.at_s - origin,
                "disturbed": busy,
                "latencies_s": values,
                "max_s": max(values, default=None),
            }
        )
    return intervals


def _ms(seconds: float | None) -> str:
    return num(None if seconds is None else seconds * 1000, 0)


def _render(latency: list[dict[str, Any]], storm: dict[str, Any], config: ExportConfig) -> str:
    rows = []
    for run in latency:
        dist = run["latency_s"]
        rows.append(
            [
                "gRPC" if run["protocol"] == "grpc" else "HTTP/protobuf",
                "rotel (`--batch-timeout 10ms`)" if run["via_rotel"] else "receiver directly",
                f"{run['blocks_with_span']}/{run['blocks']}",
                _ms(dist["median"]),
                _ms(dist["p90"]),
                _ms(dist["p99"]),
                _ms(dist["max"]),
                str(run["over_goal"]),
                num(run["foreign_cpu_pct"], 0),
            ]
        )
    worst = max((run["latency_s"]["max"] or 0.0 for run in latency), default=0.0)
    met = all(run["over_goal"] == 0 and run["blocks_with_span"] == run["blocks"] for run in latency)
    parts = [
        "### Latency: block end to span at the collector\n",
        (
            f"Launch mode, `-t {LATENCY_THRESHOLD_MS:g}`, default export settings "
            f"(OTEL_BSP_SCHEDULE_DELAY 200 ms here). The app (apps/export_app.py) blocks its "
            f"loop {config.latency_blocks} times, {LATENCY_BLOCK_MS[0]:g}-{LATENCY_BLOCK_MS[1]:g} "
            f"ms of pure-Python CPU each, with {LATENCY_IDLE_MS[0]:g}-{LATENCY_IDLE_MS[1]:g} ms "
            "idle awaits between. Latency = wall clock when the export request reached the "
            "receiver (stamped in the receiver, before decoding) - the block's end on the app's "
            "wall clock. The receiver runs in the benchmark process; rotel forwards to it over "
            "gRPC.\n"
        ),
        table(
            [
                "sidecar protocol",
                "to",
                "blocks with a span",
                "median (ms)",
                "p90 (ms)",
                "p99 (ms)",
                "max (ms)",
                f"> {GOAL_LATENCY_S:g} s",
                "others' CPU (%)",
            ],
            rows,
            [False, False, True, True, True, True, True, True, True],
        ),
        (
            f"Goal (every span within {GOAL_LATENCY_S:g} s of its block's end): "
            f"{'met' if met else 'MISSED'}; worst {_ms(worst)} ms.\n"
        ),
        "### Storm: 100 blocks/s\n",
        _render_storm(storm),
    ]
    return "\n".join(parts)


def _render_storm(storm: dict[str, Any]) -> str:
    summary = storm["summary"] or {}
    dropped = storm["drops"]["failed_to_deliver"]
    dist = storm["latency_s"]
    clean = storm["latency_clean_s"]
    late = sum(1 for i in storm["intervals"] if (i["max_s"] or 0.0) > GOAL_LATENCY_S)
    minute = (
        f"{num(storm['rss_1min_mib'])} (at {num(storm['rss_1min_at_s'], 0)} s)"
        if storm["storm_s"] >= 60
        else "n/a (storm < 1 min)"
    )
    rows = [
        ["blocks made by the app", f"{storm['blocks']:,} ({num(storm['blocks_per_s'])}/s)"],
        ["blocks reported by the sidecar (JSON)", f"{storm['reported']:,}"],
        ["spans received", f"{storm['spans']:,}"],
        ["blocks with exactly one span", f"{storm['blocks_with_span']:,}"],
        [
            "spans dropped (sidecar's count)",
            ", ".join(f"{n:,} {what}" for what, n in dropped.items()) or "0",
        ],
        ["queue-full warning", "yes" if storm["drops"]["queue_full_warned"] else "no"],
        ["lost kernel events", str(summary.get("lost_events", "n/a"))],
        ["sidecar CPU own (% of a core)", num(storm["cpu_own_pct"], 2)],
        ["sidecar CPU Austin children (%)", num(storm["cpu_children_pct"], 2)],
        ["sidecar CPU total (%)", num(storm["cpu_own_pct"] + storm["cpu_children_pct"], 2)],
        [
            "RSS start / 1 min / end (MiB)",
            f"{num(storm['rss_start_mib'])} / {minute} / {num(storm['rss_end_mib'])}",
        ],
        [
            f"RSS slope from {num(storm['rss_slope_since_s'], 0)} s to end (MiB/min)",
            num(storm["rss_slope_mib_per_min"], 2),
        ],
        [
            "latency median / p99 / max (ms)",
            f"{_ms(dist['median'])} / {_ms(dist['p99'])} / {_ms(dist['max'])}",
        ],
        [
            f"latency median / p99 / max, undisturbed {STORM_SAMPLE_S:g} s intervals (ms)",
            (
                f"{_ms(clean['median'])} / {_ms(clean['p99'])} / {_ms(clean['max'])} "
                f"({storm['clean_intervals']} of {len(storm['intervals'])} intervals)"
            ),
        ],
        [
            f"{STORM_SAMPLE_S:g} s intervals with a span later than {GOAL_LATENCY_S:g} s",
            f"{late} of {len(storm['intervals'])}",
        ],
        ["others' CPU during the storm (%)", num(storm["foreign_cpu_pct"], 0)],
        ["another otel-blocksnoop ran meanwhile", "yes" if storm["foreign_sidecar"] else "no"],
    ]
    return (
        f"Attach mode, `-t {storm['threshold_ms']:g}`, OTLP/gRPC to the receiver in the "
        f"benchmark process, default export settings. One loop thread blocks "
        f"{storm['block_ms'][0]:g} ms (pure-Python CPU) at the start of every "
        f"{1000 / storm['rate_target']:g} ms slot for {storm['storm_s']} s and sleeps on "
        "the loop for the rest of the slot. CPU from /proc/PID/stat over the storm (own; "
        "children = the Austin samplers it runs), RSS from VmRSS every "
        f"{STORM_SAMPLE_S:g} s.\n\n" + table(["what", "value"], rows, [False, True])
    )


def run_export(config: ExportConfig) -> Section:
    """Latency over both protocols, direct and through rotel; then the storm."""
    started = time.monotonic()
    latency = [
        _latency_run(protocol, via_rotel, config)
        for via_rotel in (False, True)
        for protocol in PROTOCOLS
    ]
    storm = _storm_run(config)
    body = _render(latency, storm, config)
    body += f"\n(Export run took {time.monotonic() - started:.0f} s.)\n"
    return Section(
        slug="export",
        title="Export",
        body=body,
        data={"latency": latency, "storm": storm},
    )
