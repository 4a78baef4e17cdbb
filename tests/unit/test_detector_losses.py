"""The detector hands the kernel's totals of what it dropped to the family of losses."""

from __future__ import annotations

import ctypes

from otel_blocksnoop.events import Loss
from otel_blocksnoop.kernel.constants import (
    COUNTER_BUSY_NS,
    COUNTER_ITERATIONS,
    COUNTER_LOST_EVENTS,
    COUNTER_LOST_TRIGGERS,
    COUNTER_MAX,
    COUNTER_STATE_FULL,
    COUNTER_UNSEEN_SWITCHES,
)
from otel_blocksnoop.kernel.detector import Detector
from otel_blocksnoop.kernel.program import DetectorConfig
from otel_blocksnoop.losses import Losses


class PerCpuCounters:
    """The per-CPU ``counters`` array as ``read_counters`` uses it: totals over CPUs by key."""

    def __init__(self, totals: dict[int, int]) -> None:
        self.totals = totals

    def sum_u64(self, key: bytes) -> int:
        return self.totals.get(ctypes.c_uint32.from_buffer_copy(key).value, 0)


class LoadedProgram:
    """The loaded program, reduced to its counters."""

    def __init__(self, counters: PerCpuCounters) -> None:
        self.maps = {"counters": counters}

    def map(self, name: str) -> PerCpuCounters:
        return self.maps[name]


def loaded(detector: Detector, totals: dict[int, int]) -> PerCpuCounters:
    table = PerCpuCounters(totals)
    # Stands in for load(), which needs root.
    detector._program = LoadedProgram(table)  # type: ignore[assignment]  # noqa: SLF001
    return table


def test_a_detector_without_losses_makes_its_own() -> None:
    detector = Detector(DetectorConfig(threshold_ns=1))
    assert isinstance(detector.losses, Losses)
    assert all(total == 0 for _, total in detector.losses.snapshot())


def test_reading_the_counters_feeds_the_kernels_totals_to_the_losses() -> None:
    # GIVEN a detector sharing the sidecar's losses, whose kernel dropped events and threads
    losses = Losses()
    losses.add(Loss.EXPORT_QUEUE, 2)
    detector = Detector(DetectorConfig(threshold_ns=1), losses=losses)
    loaded(
        detector,
        {
            COUNTER_LOST_EVENTS: 5,
            COUNTER_ITERATIONS: 100,
            COUNTER_BUSY_NS: 7,
            COUNTER_STATE_FULL: 3,
        },
    )
    # WHEN the counters are read
    counters = detector.counters()
    # THEN they are returned as before, and the losses hold the kernel's totals
    assert (counters.lost_events, counters.iterations, counters.busy_ns) == (5, 100, 7)
    assert counters.untracked_threads == 3
    assert detector.losses is losses
    assert losses.total(Loss.KERNEL_EVENTS) == 5
    assert losses.total(Loss.KERNEL_THREADS) == 3
    assert losses.total(Loss.EXPORT_QUEUE) == 2


def test_totals_are_observed_not_added_on_each_read() -> None:
    detector = Detector(DetectorConfig(threshold_ns=1))
    table = loaded(detector, {COUNTER_LOST_EVENTS: 4, COUNTER_STATE_FULL: 1})
    detector.counters()
    detector.counters()
    assert detector.losses.total(Loss.KERNEL_EVENTS) == 4
    table.totals[COUNTER_LOST_EVENTS] = 6
    detector.counters()
    assert detector.losses.total(Loss.KERNEL_EVENTS) == 6
    assert detector.losses.total(Loss.KERNEL_THREADS) == 1


def test_every_counter_index_is_inside_the_array() -> None:
    indexes = (
        COUNTER_LOST_EVENTS,
        COUNTER_ITERATIONS,
        COUNTER_BUSY_NS,
        COUNTER_STATE_FULL,
        COUNTER_LOST_TRIGGERS,
        COUNTER_UNSEEN_SWITCHES,
    )
    assert sorted(indexes) == list(range(COUNTER_MAX))
