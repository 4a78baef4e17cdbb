"""Bucket maths of the kernel's log-linear histogram (``iter_hist`` in bpf/detector.bpf.c).

Values below ``2**SUB_BITS`` ns have a bucket each; above, every power of two
is split into ``2**SUB_BITS`` equal buckets, so a bucket is at most ~3% wide.
"""

from __future__ import annotations

from collections.abc import Sequence

from otel_blocksnoop.kernel.constants import HIST_MAX_LOG2, HIST_SUB_BITS

SUB_BITS = HIST_SUB_BITS
SUB_COUNT = 1 << SUB_BITS
MAX_LOG2 = HIST_MAX_LOG2
BUCKETS = (MAX_LOG2 - SUB_BITS + 2) * SUB_COUNT


def bucket_index(value_ns: int) -> int:
    """Index the kernel files ``value_ns`` under (the same arithmetic as the C)."""
    if value_ns < SUB_COUNT:
        return value_ns
    log2 = value_ns.bit_length() - 1
    if log2 > MAX_LOG2:
        return BUCKETS - 1
    sub = (value_ns >> (log2 - SUB_BITS)) & (SUB_COUNT - 1)
    return (log2 - SUB_BITS + 1) * SUB_COUNT + sub


def bucket_bounds(index: int) -> tuple[int, int]:
    """Return the [low, high) range of values in bucket ``index``."""
    if index < SUB_COUNT:
        return index, index + 1
    log2 = index // SUB_COUNT + SUB_BITS - 1
    sub = index % SUB_COUNT
    width = 1 << (log2 - SUB_BITS)
    low = (1 << log2) + sub * width
    return low, low + width


def percentile(counts: Sequence[int], fraction: float) -> int:
    """Value at ``fraction`` (0..1) of a bucket-count histogram, by bucket midpoint."""
    total = sum(counts)
    if total == 0:
        return 0
    rank = max(1, round(fraction * total))
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            low, high = bucket_bounds(index)
            return (low + high) // 2
    low, high = bucket_bounds(len(counts) - 1)
    return (low + high) // 2
