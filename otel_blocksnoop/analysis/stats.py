"""Stats mode: the distribution of every loop iteration over each interval.

The kernel keeps a cumulative histogram and exact counters; an interval's
figures are the differences between two reads. Percentiles are bucket
midpoints, clamped to the exact extremes of the interval.
"""

from __future__ import annotations

from typing import Protocol

from otel_blocksnoop.events import Counters, HistogramSnapshot, IterationStats
from otel_blocksnoop.kernel import histogram

STATS_PERCENTILES = (0.5, 0.9, 0.99)


class Histograms(Protocol):
    """The detector in stats mode."""

    def histogram(self) -> HistogramSnapshot:
        """The cumulative histogram, and the extremes since the last read."""

    def counters(self) -> Counters:
        """The kernel's totals."""


class IntervalStats:
    """Turns cumulative kernel figures into one ``IterationStats`` per interval."""

    def __init__(self, source: Histograms) -> None:
        self._source = source
        self._previous_counts: tuple[int, ...] = (0,) * histogram.BUCKETS
        self._previous_counters = Counters(0, 0, 0, 0)

    def next(self, interval_s: float) -> IterationStats:
        snapshot = self._source.histogram()
        counters = self._source.counters()
        delta = [
            now - before for now, before in zip(snapshot.counts, self._previous_counts, strict=True)
        ]
        count = counters.iterations - self._previous_counters.iterations
        low, high = (snapshot.min_ns, snapshot.max_ns) if count else (0, 0)
        stats = IterationStats(
            interval_s=interval_s,
            count=count,
            sum_ns=counters.busy_ns - self._previous_counters.busy_ns,
            min_ns=low,
            max_ns=high,
            percentiles_ns={
                p: min(max(histogram.percentile(delta, p), low), high) for p in STATS_PERCENTILES
            },
        )
        self._previous_counts = snapshot.counts
        self._previous_counters = counters
        return stats
