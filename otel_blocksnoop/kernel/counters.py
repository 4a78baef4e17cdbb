"""Reads of the kernel's per-CPU counters and of the stats-mode histogram."""

from __future__ import annotations

import ctypes
from typing import Any

from otel_blocksnoop.events import Counters, HistogramSnapshot
from otel_blocksnoop.kernel import histogram
from otel_blocksnoop.kernel.constants import (
    COUNTER_BUSY_NS,
    COUNTER_ITERATIONS,
    COUNTER_LOST_EVENTS,
    COUNTER_LOST_TRIGGERS,
    COUNTER_STATE_FULL,
)


def read_counters(table: Any) -> Counters:  # noqa: ANN401 - bcc has no type hints
    """Totals of the ``counters`` per-CPU array, summed over CPUs."""

    def total(index: int) -> int:
        return int(table.sum(ctypes.c_int(index)).value)

    return Counters(
        lost_events=total(COUNTER_LOST_EVENTS),
        iterations=total(COUNTER_ITERATIONS),
        busy_ns=total(COUNTER_BUSY_NS),
        untracked_threads=total(COUNTER_STATE_FULL),
        lost_triggers=total(COUNTER_LOST_TRIGGERS),
    )


def read_histogram(buckets: Any, extremes: Any) -> HistogramSnapshot:  # noqa: ANN401 - bcc has no type hints
    """Read the ``iter_hist`` histogram and reset the ``iter_extremes`` since the last read."""
    counts = [0] * histogram.BUCKETS
    for key, value in buckets.items():
        counts[key.value] = value.value
    per_cpu = extremes[ctypes.c_int(0)]
    mins = [cpu.min_ns for cpu in per_cpu if cpu.min_ns]
    maxes = [cpu.max_ns for cpu in per_cpu]
    extremes.clear()
    return HistogramSnapshot(
        counts=tuple(counts),
        min_ns=min(mins) if mins else 0,
        max_ns=max(maxes) if maxes else 0,
    )
