"""Monotonic to wall-clock conversion follows the wall clock when it is stepped or slewed."""

from __future__ import annotations

import time

import pytest

from otel_blocksnoop.analysis.clock import WallClock

STEP_NS = 17_000_000
FOLLOWED_WITHIN_S = 0.11
"""A slew of 6 ms/s moves the wall clock 0.6 ms in that time."""


def test_a_wall_clock_step_is_followed_within_the_refresh_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a conversion measured against the wall clock as it is
    converter = WallClock()
    now = time.monotonic_ns()
    before = converter.to_unix_ns(now)
    # WHEN the wall clock moves 17 ms ahead of the monotonic clock, and 110 ms pass
    real_time_ns = time.time_ns
    real_monotonic = time.monotonic
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + STEP_NS)
    monkeypatch.setattr(time, "monotonic", lambda: real_monotonic() + FOLLOWED_WITHIN_S)
    # THEN the same monotonic instant converts 17 ms later (within the reads' jitter)
    assert abs(converter.to_unix_ns(now) - before - STEP_NS) < 1_000_000
