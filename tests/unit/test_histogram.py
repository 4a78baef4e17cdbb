from __future__ import annotations

import pytest

from otel_blocksnoop.kernel import histogram


@pytest.mark.parametrize("value", [0, 1, 31, 32, 33, 63, 64, 1000, 999_999, 10**9, 2**42 - 1])
def test_every_value_falls_inside_its_buckets_bounds(value: int) -> None:
    low, high = histogram.bucket_bounds(histogram.bucket_index(value))
    assert low <= value < high


def test_buckets_are_contiguous_and_ordered() -> None:
    previous_high = 0
    for index in range(histogram.BUCKETS - 1):
        low, high = histogram.bucket_bounds(index)
        assert low == previous_high
        previous_high = high


def test_bucket_width_is_within_about_three_percent_above_the_exact_range() -> None:
    for value in (100, 10_000, 1_234_567, 987_654_321):
        low, high = histogram.bucket_bounds(histogram.bucket_index(value))
        assert (high - low) / low <= 1 / histogram.SUB_COUNT


def test_values_beyond_the_range_clamp_to_the_last_bucket() -> None:
    assert histogram.bucket_index(2**50) == histogram.BUCKETS - 1


def test_percentiles_of_a_known_distribution() -> None:
    counts = [0] * histogram.BUCKETS
    for value, n in ((1_000_000, 90), (50_000_000, 9), (500_000_000, 1)):
        counts[histogram.bucket_index(value)] += n
    assert histogram.percentile(counts, 0.5) == pytest.approx(1_000_000, rel=0.04)
    assert histogram.percentile(counts, 0.95) == pytest.approx(50_000_000, rel=0.04)
    assert histogram.percentile(counts, 1.0) == pytest.approx(500_000_000, rel=0.04)


def test_percentile_of_nothing_is_zero() -> None:
    assert histogram.percentile([0] * histogram.BUCKETS, 0.5) == 0
