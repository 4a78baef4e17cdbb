"""Reads of the kernel's per-CPU counters and of the stats-mode histogram."""

from __future__ import annotations

import ctypes

from otel_blocksnoop.events import Counters, HistogramSnapshot
from otel_blocksnoop.kernel import histogram
from otel_blocksnoop.kernel.bpf_map import BpfMap, u32
from otel_blocksnoop.kernel.constants import (
    COUNTER_BUSY_NS,
    COUNTER_ITERATIONS,
    COUNTER_LOST_EVENTS,
    COUNTER_LOST_TRIGGERS,
    COUNTER_STATE_FULL,
    COUNTER_UNSEEN_SWITCHES,
)
from otel_blocksnoop.kernel.layout import IterExtremesC


def read_counters(table: BpfMap) -> Counters:
    """Totals of the ``counters`` per-CPU array, summed over CPUs."""

    def total(index: int) -> int:
        return table.sum_u64(u32(index))

    return Counters(
        lost_events=total(COUNTER_LOST_EVENTS),
        iterations=total(COUNTER_ITERATIONS),
        busy_ns=total(COUNTER_BUSY_NS),
        untracked_threads=total(COUNTER_STATE_FULL),
        lost_triggers=total(COUNTER_LOST_TRIGGERS),
        unseen_switches=total(COUNTER_UNSEEN_SWITCHES),
    )


def read_histogram(buckets: BpfMap, extremes: BpfMap) -> HistogramSnapshot:
    """Read the ``iter_hist`` histogram and reset the ``iter_extremes`` since the last read."""
    counts = [0] * histogram.BUCKETS
    # Batched: a walk of the whole array took 34 ms, a batched read 0.9 ms.
    for key, value in buckets.items(batched=True):
        counts[ctypes.c_uint32.from_buffer_copy(key).value] = int.from_bytes(value, "little")
    per_cpu = [IterExtremesC.from_buffer_copy(slot) for slot in extremes.lookup_per_cpu(u32(0))]
    mins = [cpu.min_ns for cpu in per_cpu if cpu.min_ns]
    maxes = [cpu.max_ns for cpu in per_cpu]
    extremes.zero(u32(0))
    return HistogramSnapshot(
        counts=tuple(counts),
        min_ns=min(mins) if mins else 0,
        max_ns=max(maxes) if maxes else 0,
    )
