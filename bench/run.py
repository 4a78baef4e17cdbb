#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Benchmarks of otel-blocksnoop: detection accuracy and overhead.

accuracy  launch mode, one run per block length (1-500 ms), threshold 0.8 x
          length, CPU and sleep blocks with idle awaits between; recall,
          false positives and duration error against the app's own clock,
          for ours and blocksnoop 0.11.1 on the same app in the same run.
overhead  attach mode at -t 100: req/s of an asyncio HTTP server under wrk
          and iterations/s of a tight asyncio.sleep(0) loop, with and without
          the sidecar in alternating rounds; the sidecar's own CPU and RSS
          while the server idles and under load.
attribution
          launch mode, one run per block length (2-100 ms), threshold D/2,
          seven kinds of block (sleep, cpu, hashlib, read, subprocess, lock,
          gil); the reported call site and cause against the app's own truth,
          and the blocking function in blocksnoop 0.11.1's stacks beside it.
storm     launch mode at -t 10, 50 blocks/s for 10 minutes (quick: 1): the
          sidecar's RSS (and its Austin processes') over time, CPU, lost events.
export    OTLP export: block end to span at a receiver (gRPC, HTTP/protobuf,
          direct and through rotel), and a storm of 100 blocks/s for 5
          minutes: sidecar CPU, RSS, spans dropped.
linking   trace links: the parent of each exported block span against the
          span the app had active (every pyenv CPython 3.9-3.13, and uvloop),
          also for 2, 4 and 8 requests blocking back to back in one loop
          iteration (beside blocksnoop 0.11.1, which links nothing), the cost
          of one context read, and req/s of a traced HTTP server with links
          on vs --no-trace-link.
peer      side by side with blocksnoop 0.11.1 (installed by the bench under
          ~/.cache/otel-blocksnoop/peer-0.11.1), alternating rounds: idle CPU
          and RSS at -t 10 and -t 100, detection accuracy and stacks, CPU per
          block in a storm, and a busy work loop watched by each vs alone.

--saturate runs accuracy, attribution and linking (link accuracy and bursts)
on a saturated machine: one busy process per CPU, started and stopped by the
runner, for the whole pass; those sections are written as *-saturated.
--saturate both runs each of them quiet first, then saturated.

Each section is printed as markdown and written to bench/results/ with the
raw data (JSON) beside it. Needs root, like the sidecar. Only 127.0.0.1.

USAGE: run.py [--quick] [--only accuracy|overhead|attribution|storm|export|linking|peer]
              [--saturate [both]] [--rounds N]
              [--round-seconds S] [--python PATH ...]
              [--export-storm-seconds S]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

# The script's own directory is on sys.path, so the package beside it imports.
from blocksnoop_bench.accuracy import run_accuracy
from blocksnoop_bench.attribution import run_attribution
from blocksnoop_bench.export import ExportConfig, run_export
from blocksnoop_bench.linking import run_linking
from blocksnoop_bench.overhead import OverheadConfig, run_overhead
from blocksnoop_bench.procs import PYTHON, REPO, BenchError, Child, Neighbours, Saturation
from blocksnoop_bench.side_by_side import PeerConfig, run_peer
from blocksnoop_bench.storm import run_storm

from otel_blocksnoop.cli import positive_int

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from blocksnoop_bench.report import Section

RESULTS = REPO / "bench" / "results"
BENCHMARKS = ("accuracy", "overhead", "attribution", "storm", "export", "linking", "peer")
SATURABLE = ("accuracy", "attribution", "linking")
"""Sections whose figures are also wanted on a machine whose cores are all busy."""
QUIET_PATIENCE_S = 180.0
"""Total time the overhead run may wait for other people's work to end."""
FOREIGN_CPU_LIMIT_PCT = 10.0
"""Other processes' CPU (% of one core) above which a window counts as disturbed."""

EXAMPLES = """\
examples:
  run.py                       # everything, as in BENCHMARKS.md (~6 minutes)
  run.py --quick               # short smoke run of everything (~1 minute)
  run.py --only accuracy       # detection accuracy only
  run.py --only overhead --rounds 20  # more A/B rounds for a tighter median
  run.py --only attribution --python $(pyenv root)/versions/3.9.18/bin/python3
                               # call sites and causes in a Python 3.9 target
  run.py --only storm          # memory under 50 blocks/s for 10 minutes
  run.py --only export         # OTLP export latency and a 5-minute storm (~8 minutes)
  run.py --only linking        # trace links on every pyenv CPython 3.9-3.13 (~8 minutes)
  run.py --only linking --python sid:3.14 sid:3.15  # Debian sid's 3.14 and 3.15 (+ uvloop)
  run.py --only peer           # side by side with blocksnoop 0.11.1 (~10 minutes; quick ~3)
  run.py --saturate            # accuracy, attribution, links with every CPU kept busy
  run.py --only attribution --saturate --quick
                               # smoke run of one section on a saturated machine
  run.py --only accuracy --saturate both
                               # quiet pass, then saturated pass, in one run
"""


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Accuracy and overhead benchmarks of otel-blocksnoop.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="few blocks and short rounds")
    parser.add_argument("--only", choices=BENCHMARKS, help="run one benchmark")
    parser.add_argument(
        "--saturate",
        nargs="?",
        const="only",
        choices=("only", "both"),
        help="keep every CPU busy with one spinning process each while the sections run"
        f" (only {', '.join(SATURABLE)}; linking: link accuracy and bursts); 'both': a"
        " quiet pass first, then the saturated one",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        help="A/B rounds (default 10; linking 20; peer 5, its accuracy 3; quick 2)",
    )
    parser.add_argument(
        "--round-seconds", type=positive_int, help="seconds per mode per round (default 3, quick 1)"
    )
    parser.add_argument(
        "--idle-seconds", type=positive_int, help="idle sidecar measurement (default 30, quick 3)"
    )
    parser.add_argument(
        "--export-storm-seconds",
        type=positive_int,
        help="export storm length (default 300, quick 30)",
    )
    parser.add_argument(
        "--python",
        nargs="+",
        help="interpreter(s) for the attribution, storm and linking targets (default: this"
        " one; for linking, every pyenv CPython 3.9-3.13 with opentelemetry-sdk); sid:3.14,"
        " sid:3.15: Debian sid's (scripts/sid-pythons.sh), run in its root",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)
    if args.saturate and args.only and args.only not in SATURABLE:
        parser.error(f"--saturate: --only must be one of {', '.join(SATURABLE)}")
    return args


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "otel_blocksnoop", "bpf"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}{' + uncommitted changes to otel_blocksnoop/ or bpf/' if dirty else ''}"


def _machine() -> str:
    from otel_blocksnoop import __version__  # noqa: PLC0415 - only for the header

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"Machine: {os.cpu_count()} vCPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()} (sidecar and targets), "
        f"otel-blocksnoop {__version__} at {_git_revision()}, {now}, "
        f"load average at start {load}.\n"
    )


def _write(section: Section, header: str, results: Path) -> None:
    text = f"{header}\n{section.markdown()}"
    print(text, flush=True)
    (results / f"{section.slug}.md").write_text(text)
    (results / f"{section.slug}.json").write_text(json.dumps(section.data, indent=1) + "\n")


def _run_section(
    measure: Callable[[], Section], header: str, results: Path, saturate: bool
) -> None:
    """Run one section, with every CPU kept busy if ``saturate``, and write it."""
    if not saturate:
        _write(measure(), header, results)
        return
    with Saturation() as saturation:
        section = measure()
    _write(
        replace(
            section,
            slug=f"{section.slug}-saturated",
            title=f"{section.title}, saturated machine",
            body=saturation.describe() + "\n" + section.body,
            data={
                **section.data,
                "saturated": {"cpus": saturation.cpus, "busy_pct": saturation.busy_pct},
            },
        ),
        header,
        results,
    )


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops its children."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _passes(saturate: str | None) -> tuple[bool, ...]:
    """Whether each pass keeps the machine saturated: quiet, saturated, or both in turn."""
    return {None: (False,), "only": (True,), "both": (False, True)}[saturate]


def _run_selected(
    args: argparse.Namespace,
    selected: tuple[str, ...],
    header: str,
    neighbours: Neighbours,
    saturate: bool,
) -> None:
    """Run each selected benchmark in turn, writing its section as soon as it ends."""
    raw = args.results / "raw" / ("saturated" if saturate else "")
    raw.mkdir(parents=True, exist_ok=True)

    def section(measure: Callable[[], Section]) -> None:
        _run_section(measure, header, args.results, saturate)

    if "accuracy" in selected:
        section(partial(run_accuracy, args.quick, raw, neighbours))
    if "overhead" in selected:
        config = OverheadConfig(
            rounds=args.rounds or (2 if args.quick else 10),
            round_s=args.round_seconds or (1 if args.quick else 3),
            warmup_s=1 if args.quick else 3,
            idle_s=args.idle_seconds or (3 if args.quick else 30),
            raw_dir=raw,
            neighbours=neighbours,
        )
        _write(run_overhead(config), header, args.results)
    pythons = args.python or [PYTHON]
    if "attribution" in selected:
        for python in pythons:
            section(partial(run_attribution, args.quick, raw, neighbours, python))
    if "storm" in selected:
        _write(run_storm(args.quick, raw, pythons[0]), header, args.results)
    if "export" in selected:
        export = ExportConfig(
            latency_blocks=30 if args.quick else 200,
            storm_s=args.export_storm_seconds or (30 if args.quick else 300),
            raw_dir=raw,
            neighbours=neighbours,
        )
        _write(run_export(export), header, args.results)
    if "linking" in selected:
        config = OverheadConfig(
            rounds=args.rounds or (2 if args.quick else 20),
            round_s=args.round_seconds or (1 if args.quick else 3),
            warmup_s=1 if args.quick else 3,
            idle_s=0,
            raw_dir=raw,
            neighbours=neighbours,
        )
        section(partial(run_linking, config, args.quick, args.python, saturated=saturate))
    if "peer" in selected:
        peer = PeerConfig(
            quick=args.quick,
            rounds=args.rounds or (2 if args.quick else 5),
            accuracy_rounds=args.rounds or (1 if args.quick else 3),
            per_kind=1 if args.quick else 4,
            idle_s=args.idle_seconds or (3 if args.quick else 10),
            storm_s=args.round_seconds or (2 if args.quick else 5),
            busy_s=args.round_seconds or (2 if args.quick else 3),
            warmup_s=1 if args.quick else 3,
            raw_dir=raw,
            neighbours=neighbours,
            python=pythons[0],
        )
        _write(run_peer(peer), header, args.results)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; every child is stopped however this ends."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench: failed to start: the sidecar needs root (run as root)\n")
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    raw = args.results / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    header = _machine() + ("Quick smoke run: too few samples to quote.\n" if args.quick else "")
    selected = (args.only,) if args.only else (SATURABLE if args.saturate else BENCHMARKS)
    neighbours = Neighbours(
        patience_s=10 if args.quick else QUIET_PATIENCE_S, cpu_limit_pct=FOREIGN_CPU_LIMIT_PCT
    )
    try:
        for saturate in _passes(args.saturate):
            _run_selected(args, selected, header, neighbours, saturate)
    except BenchError as exc:
        sys.stderr.write(f"bench: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("bench: interrupted; stopping every process it started\n")
        return 130
    finally:
        neighbours.close()
        Child.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
