"""The kernel's triggers as user space reads them."""

from __future__ import annotations

import pytest

from otel_blocksnoop.events import TriggerReason
from otel_blocksnoop.kernel import constants
from otel_blocksnoop.kernel.decode import trigger_from_c
from otel_blocksnoop.kernel.layout import TriggerEventC
from otel_blocksnoop.kernel.program import MIN_TICK_NS, DetectorConfig, program_cflags

MS = 1_000_000


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (constants.TRIGGER_DUE, TriggerReason.DUE),
        (constants.TRIGGER_OFF_CPU, TriggerReason.OFF_CPU),
        (constants.TRIGGER_NEW_THREAD, TriggerReason.NEW_THREAD),
    ],
)
def test_each_reason_of_the_c_is_named(reason: int, expected: TriggerReason) -> None:
    raw = TriggerEventC(start_ns=5, look_ns=9, tgid=7, tid=8, reason=reason)
    trigger = trigger_from_c(raw)
    assert (trigger.pid, trigger.tid, trigger.start_ns, trigger.look_ns) == (7, 8, 5, 9)
    assert trigger.reason == expected


def test_the_tick_comes_every_half_trigger_age_within_bounds() -> None:
    assert DetectorConfig(threshold_ns=100 * MS, trigger_ns=50 * MS).tick_ns == 25 * MS
    assert DetectorConfig(threshold_ns=MS, trigger_ns=MS // 2).tick_ns == MIN_TICK_NS


def test_stats_mode_and_no_trigger_age_compile_no_triggers() -> None:
    assert "-DTRIGGER_NS=0ULL" in program_cflags(DetectorConfig(threshold_ns=MS))
    stats = DetectorConfig(threshold_ns=MS, stats=True, trigger_ns=MS)
    assert not stats.triggers
    assert "-DTRIGGER_NS=0ULL" in program_cflags(stats)
    assert f"-DTRIGGER_NS={MS}ULL" in program_cflags(DetectorConfig(threshold_ns=MS, trigger_ns=MS))
