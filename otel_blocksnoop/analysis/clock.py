"""Conversion from the kernel's CLOCK_MONOTONIC to wall-clock time.

The offset between the two clocks is measured by reading both back to back
and keeping the pair read closest together; it is measured again every
``REFRESH_S`` so NTP slewing and clock steps are followed. Measured at most
every 10 s, a slew of 6 ms/s (seen on this kind of machine) put a block's
span 17 ms off the request's own wall-clock times, over its neighbour's
block; a measure costs about a microsecond.
"""

from __future__ import annotations

import time

REFRESH_S = 0.1
_PAIRS = 7


def measure_offset_ns() -> int:
    """Return wall minus monotonic, in ns, from the tightest of a few reads."""
    best_gap = None
    best_offset = 0
    for _ in range(_PAIRS):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        gap = after - before
        if best_gap is None or gap < best_gap:
            best_gap = gap
            best_offset = wall - (before + gap // 2)
    return best_offset


class WallClock:
    """Maps monotonic nanoseconds to Unix-epoch nanoseconds."""

    def __init__(self) -> None:
        self._offset_ns = measure_offset_ns()
        self._measured_at = time.monotonic()

    def to_unix_ns(self, monotonic_ns: int) -> int:
        if time.monotonic() - self._measured_at > REFRESH_S:
            self._offset_ns = measure_offset_ns()
            self._measured_at = time.monotonic()
        return monotonic_ns + self._offset_ns
