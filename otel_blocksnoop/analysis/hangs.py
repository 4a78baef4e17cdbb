"""When a block that is still going on is reported, and reported again.

A loop that never comes back (a deadlock, an endless computation, a call
with no timeout) produces no block event, so a block the kernel triggered
(``Trigger``) is looked at again while it lasts, at the ages this schedule
gives. A block is reported in progress once it has lasted the threshold plus
``GRACE_NS`` (so the many blocks that end just past the threshold are
reported once, when they end), then again at doubling ages (1 s, 2 s, 4 s,
...), at least every ``MAX_REPEAT_NS``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import NS_PER_MS, NS_PER_S

GRACE_NS = 100 * NS_PER_MS
"""Age past the threshold at which a block still going on is first reported."""
RETRY_NS = 50 * NS_PER_MS
"""A block in progress that could not be reported when due (its thread not known
as a loop yet) is looked at again this much later."""
FIRST_REPEAT_NS = NS_PER_S
MAX_REPEAT_NS = 30 * NS_PER_S
MAX_TRACKED = 4096
"""Blocks in progress whose schedule is kept; more are reported at every check."""


def first_report_ns(threshold_ns: int) -> int:
    """Age at which a block still going on is first reported."""
    return threshold_ns + GRACE_NS


@dataclass(frozen=True, slots=True)
class Ongoing:
    """A block in progress, as the scheduler knows it."""

    pid: int
    tid: int
    start_ns: int


class HangSchedule:
    """Remembers, per block in progress, the age at which it is due again."""

    def __init__(self, threshold_ns: int) -> None:
        self.first_ns = first_report_ns(threshold_ns)
        self._next_age: dict[Ongoing, int] = {}
        # Kept after the block leaves the thread table: its final event (for
        # a thread that exited) can arrive after that.
        self._reported: BoundedDict[Ongoing, None] = BoundedDict(MAX_TRACKED)

    def due(self, ongoing: Iterable[Ongoing], now_ns: int) -> list[Ongoing]:
        """Those of ``ongoing`` to report now; blocks no longer listed are forgotten."""
        current = set(ongoing)
        for gone in [key for key in self._next_age if key not in current]:
            del self._next_age[gone]
        return [
            key
            for key in sorted(current, key=lambda k: k.start_ns)
            if now_ns - key.start_ns >= self._next_age.get(key, self.first_ns)
        ]

    def due_ns(self, key: Ongoing) -> int:
        """When (CLOCK_MONOTONIC) ``key`` is next to be reported if it still goes on."""
        return key.start_ns + self._next_age.get(key, self.first_ns)

    def forget(self, key: Ongoing) -> None:
        """``key`` ended: no report is due any more (it stays known as reported)."""
        self._next_age.pop(key, None)

    def reported(self, key: Ongoing, now_ns: int) -> None:
        """``key`` was reported at ``now_ns``: schedule the next report."""
        age = now_ns - key.start_ns
        if key not in self._next_age and len(self._next_age) >= MAX_TRACKED:
            return
        self._next_age[key] = age + min(max(age, FIRST_REPEAT_NS), MAX_REPEAT_NS)
        self._reported[key] = None

    def was_reported(self, key: Ongoing) -> bool:
        return key in self._reported
