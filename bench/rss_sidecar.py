#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""The whole sidecar with its program held through ``kernel.loader``: a measurement stand-in.

USAGE: rss_sidecar.py [the sidecar's arguments]

Runs ``otel_blocksnoop.cli.main`` unchanged except for two things, to measure
what the sidecar's memory would be once ``Detector`` loads through the loader
(not wired yet): ``session.Detector`` is ``LoaderDetector`` below (the same
methods, over the fds the compiler process hands over), and the preflight
check of bcc only finds the module instead of importing it (an import maps
LLVM, BENCHMARKS.md "Memory"). Stats mode (``--stats``) is not covered.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import sys
from dataclasses import replace

from otel_blocksnoop import cli, preflight, session
from otel_blocksnoop.errors import BccMissingError, BpfLoadError, NoPrivilegesError
from otel_blocksnoop.events import Counters, HistogramSnapshot, KernelEvent, Loss
from otel_blocksnoop.kernel import loader
from otel_blocksnoop.kernel.constants import (
    COUNTER_BUSY_NS,
    COUNTER_ITERATIONS,
    COUNTER_LOST_EVENTS,
    COUNTER_STATE_FULL,
    WATCH_ROOT,
)
from otel_blocksnoop.kernel.decode import block_event_from_c
from otel_blocksnoop.kernel.detector import EPOLL_SYSCALLS, Detector
from otel_blocksnoop.kernel.layout import BlockEventC, WatchStateC
from otel_blocksnoop.kernel.thread_table import ThreadTable
from otel_blocksnoop.kernel.tracepoints import tracepoint_exists

log = logging.getLogger("otel_blocksnoop.kernel.detector")


def u32(value: int) -> bytes:
    return bytes(ctypes.c_uint32(value))


class LoaderDetector(Detector):
    """``Detector`` over a ``LoadedProgram``: what the sidecar holds once wired to the loader."""

    program: loader.LoadedProgram

    def load(self) -> None:
        try:
            self.program = loader.load(self.config)
        except (BpfLoadError, NoPrivilegesError) as exc:
            if not self.tracks_activity:
                raise
            log.warning("%s; blocks are reported without their cause", exc)
            self.config = replace(self.config, activity=False)
            self.program = loader.load(self.config)
        names = [n for n in EPOLL_SYSCALLS if tracepoint_exists("syscalls", f"sys_enter_{n}")]
        self.program.attach(
            (function, f"syscalls:sys_{side}_{name}")
            for name in names
            for function, side in (("on_epoll_enter", "enter"), ("on_epoll_exit", "exit"))
        )
        self.attached = tuple(names)
        self._threads = ThreadTable.from_fd(self.program.map_fd("threads"), self.config.max_threads)
        if not self.config.stats:
            self.program.ring_buffer("events", self._on_record)

    def _on_record(self, raw: bytes) -> None:
        event = block_event_from_c(BlockEventC.from_buffer_copy(raw), self.tracks_activity)
        self._pending.append(event)

    def watch(self, pid: int) -> None:
        self.program.map("watched").update(u32(pid), bytes(WatchStateC(how=WATCH_ROOT)))

    def _process_cpu_ns(self, tgid: int) -> int:
        raw = self.program.map("watched").lookup(u32(tgid))
        return int(WatchStateC.from_buffer_copy(raw).cpu_ns) if raw is not None else 0

    def poll(self, timeout_ms: int | None) -> list[KernelEvent]:
        self.program.poll(-1 if timeout_ms is None else timeout_ms)
        events: list[KernelEvent] = list(self._pending)
        self._pending = []
        return events

    def counters(self) -> Counters:
        table = self.program.map("counters")
        counters = Counters(
            lost_events=table.sum_u64(u32(COUNTER_LOST_EVENTS)),
            iterations=table.sum_u64(u32(COUNTER_ITERATIONS)),
            busy_ns=table.sum_u64(u32(COUNTER_BUSY_NS)),
            untracked_threads=table.sum_u64(u32(COUNTER_STATE_FULL)),
        )
        self.losses.observe(Loss.KERNEL_EVENTS, counters.lost_events)
        self.losses.observe(Loss.KERNEL_THREADS, counters.untracked_threads)
        return counters

    def histogram(self) -> HistogramSnapshot:
        msg = "stats mode is not measured through the loader"
        raise NotImplementedError(msg)

    def close(self) -> None:
        if hasattr(self, "program"):
            self.program.close()


def check_bcc_without_importing() -> preflight.Check:
    """The compiler process imports bcc; here it is only found."""
    spec = importlib.util.find_spec("bcc")
    if spec is None:
        error = BccMissingError("failed to import bcc: not installed in this Python")
        return preflight.Check("bcc", ok=False, detail="not importable", error=error)
    return preflight.Check("bcc", ok=True, detail=str(spec.origin))


def main(argv: list[str]) -> int:
    setattr(session, "Detector", LoaderDetector)  # noqa: B010 - the one substitution measured
    preflight.check_bcc = check_bcc_without_importing
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
