#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""What the kernel side costs: run count and run time of each BPF program.

Loads the detector in this process (with and without the sched_switch
program that books each block's cause, with and without the triggers that
tell user space when to look: the cpu-clock tick and sched_switch), watches
apps/http_app.py while wrk loads it, and reads each program's ``run_cnt`` and
``run_time_ns`` from ``/proc/self/fdinfo`` (the kernel's own accounting,
switched on for the run with ``kernel.bpf_stats_enabled``). Unlike
throughput, these counts do not depend on what else the machine is doing.
The triggers sent (each one wakes the sidecar) are counted by reason. Modes
alternate over the rounds.

``--unwatched`` watches a process that never calls epoll instead, so the app
under load is one the program must look up and let go on every epoll call:
the cost every other process on the machine pays. The ``pidns`` modes build
the program as for a sidecar outside the host's PID namespace, which looks
each unwatched process up a second time, by its id in the sidecar's
namespace, at each return from epoll: ``pidns`` names this process's own
namespace (the app runs in it: the helper finds its ids, and the map is
looked up), ``pidns elsewhere`` a namespace made for the run (the app is not
in it, as the host's processes are not in a pod's: the helper fails early).

USAGE: bpf_cost.py [--rounds N] [--seconds S] [--mode NAME ...] [--unwatched]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from blocksnoop_bench.overhead import PythonLoad, Wrk, find_wrk
from blocksnoop_bench.procs import start_app

from otel_blocksnoop.cli import positive_int
from otel_blocksnoop.events import Trigger
from otel_blocksnoop.kernel.detector import Detector
from otel_blocksnoop.kernel.program import DetectorConfig
from otel_blocksnoop.process.pidns import pid_namespace

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
THRESHOLD_NS = 100_000_000
TRIGGER_NS = THRESHOLD_NS // 2  # what the sidecar asks for with trace links on
MODES = {
    "detection": (False, 0, None),
    "detection + cause": (True, 0, None),
    "detection + triggers": (False, TRIGGER_NS, None),
    "detection + cause + triggers": (True, TRIGGER_NS, None),
    "detection (pidns)": (False, 0, "own"),
    "detection (pidns elsewhere)": (False, 0, "elsewhere"),
    "detection + cause + triggers (pidns)": (True, TRIGGER_NS, "own"),
    "detection + cause + triggers (pidns elsewhere)": (True, TRIGGER_NS, "elsewhere"),
}
"""By name: (cause, trigger age in ns; 0: no triggers, PID namespace the ids are of)."""
ELSEWHERE: list[tuple[int, int]] = []
"""The PID namespace made for the ``elsewhere`` modes (set by ``main``)."""


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_cnt, run_time_ns) of the BPF program behind ``fd``."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
    )
    return int(fields.get("run_cnt", "0")), int(fields.get("run_time_ns", "0"))


def _short(name: str) -> str:
    """``tracepoint__sched__sched_switch`` -> ``sched_switch``."""
    return name.rsplit("__", 1)[-1]


def context_switches() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    return 0


def measure(
    mode: tuple[bool, int, str | None], pid: int, load: Wrk | PythonLoad, seconds: int
) -> dict[str, float]:
    """Per-program calls/s and ns/call, the total % of a core, and req/s, for one round."""
    cause, trigger_ns, pidns = mode
    detector = Detector(
        DetectorConfig(
            threshold_ns=THRESHOLD_NS,
            activity=cause,
            trigger_ns=trigger_ns,
            pidns={None: None, "own": pid_namespace(), "elsewhere": ELSEWHERE[0]}[pidns],
        )
    )
    detector.load()
    reasons: Counter[str] = Counter()
    try:
        detector.watch(pid)
        program = detector.program
        before = {_short(name): prog_stats(program.program_fd(name)) for name in program.programs}
        switches = context_switches()
        started = time.monotonic()
        result = load.run(seconds)
        elapsed = time.monotonic() - started
        after = {_short(name): prog_stats(program.program_fd(name)) for name in program.programs}
        switches = context_switches() - switches
        for event in detector.poll(0):
            if isinstance(event, Trigger):
                reasons[event.reason] += 1
        reasons["lost"] = detector.counters().lost_triggers
    finally:
        detector.close()
    row: dict[str, float] = {"req/s": result.rps, "switches/s": switches / elapsed}
    if trigger_ns:
        for reason, count in reasons.items():
            row[f"triggers/s: {reason}"] = count / elapsed
    total_ns = 0
    for name, (count, run_ns) in after.items():
        calls, ns = count - before[name][0], run_ns - before[name][1]
        total_ns += ns
        row[f"{name} calls/s"] = calls / elapsed
        row[f"{name} ns/call"] = ns / calls if calls else 0.0
    row["core %"] = 100 * total_ns / 1e9 / elapsed
    return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/bpf_cost.py", description=__doc__)
    parser.add_argument("--rounds", type=positive_int, default=4)
    parser.add_argument("--seconds", type=positive_int, default=5)
    parser.add_argument("--mode", choices=MODES, action="append", help="default: all")
    parser.add_argument(
        "--unwatched", action="store_true", help="watch an idle process, not the app under load"
    )
    args = parser.parse_args(argv)
    modes = {name: MODES[name] for name in args.mode or MODES}

    previous = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    server, lines = start_app("http_app.py")
    idle = subprocess.Popen(["sleep", "infinity"])
    # A PID namespace of its own, for the "elsewhere" modes: unshare's child is PID 1 there.
    other = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "infinity"])
    while not (children := Path(f"/proc/{other.pid}/task/{other.pid}/children").read_text()):
        time.sleep(0.01)
    ELSEWHERE.append(pid_namespace(int(children.split()[0])))
    watched = idle.pid if args.unwatched else server.pid
    try:
        port = int(lines.wait_for(lambda t: t.startswith("ready "), 30, "server").split()[1])
        wrk = find_wrk()
        load = Wrk(wrk, port) if wrk else PythonLoad(port)
        rows: dict[str, list[dict[str, float]]] = defaultdict(list)
        for round_no in range(args.rounds):
            order = list(modes.items())
            for name, mode in order if round_no % 2 == 0 else reversed(order):
                rows[name].append(measure(mode, watched, load, args.seconds))
    finally:
        for helper in (idle, other):
            helper.kill()
            helper.wait()
        server.stop()
        STATS_SYSCTL.write_text(previous)

    what = "an idle process (the app unwatched)" if args.unwatched else "the app"
    print(f"load: {load.name}, watching {what}, {args.rounds} rounds of {args.seconds} s per mode;")
    print("medians\n")
    keys = sorted({key for mode_rows in rows.values() for row in mode_rows for key in row})
    print("| figure | " + " | ".join(modes) + " |")
    print("| --- |" + " --- |" * len(modes))
    for key in keys:
        cells = []
        for mode in modes:
            values = [row[key] for row in rows[mode] if key in row]
            cells.append(f"{statistics.median(values):,.1f}" if values else "-")
        print(f"| {key} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
