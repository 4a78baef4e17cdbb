"""One family of counters for everything dropped or lost, whatever the stage.

Each stage that drops something (an event the kernel could not queue, a
thread it could not track, a context read that came too late, a sample, an
export) counts it here under a ``Loss``; ``export/`` reports the totals as
metrics and in the end-of-run summary. Totals the kernel keeps itself are
copied in with ``observe``.
"""

from __future__ import annotations

import threading

from otel_blocksnoop.events import Loss


class Losses:
    """Thread-safe running totals per ``Loss``; never decrease."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[Loss, int] = dict.fromkeys(Loss, 0)

    def add(self, what: Loss, count: int = 1) -> None:
        """Count ``count`` more of ``what``."""
        if count <= 0:
            return
        with self._lock:
            self._totals[what] += count

    def observe(self, what: Loss, total: int) -> None:
        """Take a total kept elsewhere (a kernel counter); a smaller one is ignored."""
        with self._lock:
            self._totals[what] = max(self._totals[what], total)

    def total(self, what: Loss) -> int:
        with self._lock:
            return self._totals[what]

    def snapshot(self) -> tuple[tuple[Loss, int], ...]:
        """Every kind with its total, zeros included, in the enum's order."""
        with self._lock:
            return tuple(self._totals.items())
