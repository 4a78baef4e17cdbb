"""When a block still going on is reported."""

from __future__ import annotations

import itertools

from otel_blocksnoop.analysis.hangs import GRACE_NS, MAX_REPEAT_NS, HangSchedule, Ongoing
from otel_blocksnoop.events import NS_PER_MS, NS_PER_S

THRESHOLD = 100 * NS_PER_MS
STUCK = Ongoing(pid=10, tid=11, start_ns=1_000 * NS_PER_S)


def ages_reported(schedule: HangSchedule, until_s: float, step_ms: int = 100) -> list[float]:
    """Walk time forward in steps, reporting whatever is due; the ages at each report."""
    ages = []
    for step in range(int(until_s * 1000 / step_ms) + 1):
        now = STUCK.start_ns + step * step_ms * NS_PER_MS
        for key in schedule.due([STUCK], now):
            schedule.reported(key, now)
            ages.append((now - key.start_ns) / NS_PER_S)
    return ages


def test_a_block_is_first_reported_once_it_has_lasted_the_threshold_plus_the_grace() -> None:
    schedule = HangSchedule(THRESHOLD)
    just_before = STUCK.start_ns + THRESHOLD + GRACE_NS - 1
    assert schedule.due([STUCK], just_before) == []
    assert schedule.due([STUCK], just_before + 1) == [STUCK]


def test_a_hang_is_reported_again_at_doubling_ages_up_to_a_maximum_gap() -> None:
    ages = ages_reported(HangSchedule(THRESHOLD), until_s=130)
    assert ages[:4] == [0.2, 1.2, 2.4, 4.8]
    gaps = [later - earlier for earlier, later in itertools.pairwise(ages)]
    assert max(gaps) <= MAX_REPEAT_NS / NS_PER_S + 0.1
    assert gaps[-1] >= MAX_REPEAT_NS / NS_PER_S - 0.1


def test_a_block_that_ended_is_forgotten_but_remembered_as_reported() -> None:
    # GIVEN a hang that was reported once
    schedule = HangSchedule(THRESHOLD)
    now = STUCK.start_ns + THRESHOLD + GRACE_NS
    schedule.reported(STUCK, now)
    # WHEN it is no longer in the thread table (it ended, or its thread exited)
    assert schedule.due([], now + NS_PER_S) == []
    # THEN its final event can still tell it was seen hanging
    assert schedule.was_reported(STUCK)
    assert not schedule.was_reported(Ongoing(10, 11, STUCK.start_ns + 1))
