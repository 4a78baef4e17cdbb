"""The bounded delivery queue in front of one OTLP exporter."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


class DeliveryQueue(Generic[T]):
    """A bounded queue in front of one exporter: records leave it only once delivered."""

    def __init__(
        self, what: str, export: Callable[[list[T]], bool], max_items: int, batch_size: int
    ) -> None:
        self.what = what
        self._export = export
        self._max = max_items
        self._batch = batch_size
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self.dropped = 0
        self.delivered = 0
        self.in_flight = 0  # records handed to the exporter, not yet known delivered
        self._failures = 0
        self._retry_at = 0.0
        self._warned_full = False

    def put(self, item: T) -> bool:
        """Queue ``item``; the oldest record is dropped when full. True when a batch is ready."""
        with self._lock:
            if len(self._items) >= self._max:
                self._items.popleft()
                self.dropped += 1
                if not self._warned_full:
                    self._warned_full = True
                    log.warning(
                        "OTLP export queue of %s is full (%d): dropping the oldest; "
                        "the collector is away or too slow",
                        self.what,
                        self._max,
                    )
            self._items.append(item)
            return len(self._items) >= self._batch

    def __len__(self) -> int:
        return len(self._items)

    def deliver(self, now: float, final: bool = False) -> bool:
        """Export what is queued, batch by batch; False if the collector refused or is away."""
        if not final and now < self._retry_at:
            return False
        while True:
            with self._lock:
                batch = [self._items.popleft() for _ in range(min(self._batch, len(self._items)))]
            if not batch:
                return True
            self.in_flight = len(batch)
            try:
                ok = self._export(batch)
            except Exception:
                log.exception("failed to export %s", self.what)
                ok = False
            self.in_flight = 0
            if not ok:
                self._requeue(batch, now)
                return False
            self.delivered += len(batch)
            if self._failures:
                log.info("OTLP export of %s works again", self.what)
            self._failures = 0
            self._warned_full = False

    def _requeue(self, batch: list[T], now: float) -> None:
        with self._lock:
            room = self._max - len(self._items)
            keep = batch[-room:] if room > 0 else []
            self.dropped += len(batch) - len(keep)
            self._items.extendleft(reversed(keep))
        delay = RETRY_BACKOFF_S[min(self._failures, len(RETRY_BACKOFF_S) - 1)]
        if self._failures == 0:
            log.warning(
                "failed to export %s over OTLP; keeping them (up to %d) and retrying",
                self.what,
                self._max,
            )
        self._failures += 1
        self._retry_at = now + delay
