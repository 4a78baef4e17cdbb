"""Bounded delivery queues in front of the SDK's OTLP exporters, and the one thread that exports.

Retrying is the exporter's job: it retries transient failures with its own back-off
within OTEL_EXPORTER_OTLP_TIMEOUT. A batch it gives up on stays at the head of its
queue and goes again in the next round, a schedule delay later. Only the worker
thread exports, so nothing else (a flush, shutdown) can race it for a batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from otel_blocksnoop.events import Loss
from otel_blocksnoop.losses import Losses

log = logging.getLogger(__name__)

T = TypeVar("T")


class DeliveryQueue(Generic[T]):
    """A bounded queue in front of one exporter: records leave it only once delivered.

    ``put`` never blocks: past ``max_items`` the oldest record is dropped, counted
    as ``Loss.EXPORT_QUEUE`` and warned about once per outage. ``close`` counts
    what is left as ``Loss.EXPORT_UNDELIVERED``.
    """

    def __init__(  # noqa: PLR0913 - the exporter, its limits and where drops are counted
        self,
        what: str,
        export: Callable[[list[T]], bool],
        max_items: int,
        batch_size: int,
        *,
        losses: Losses,
        pause_s: float,
    ) -> None:
        self.what = what
        self._export = export
        self._max = max_items
        self._batch = batch_size
        self._losses = losses
        self._pause_s = pause_s
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self.dropped = 0
        self.delivered = 0
        self._in_flight = 0  # records handed to the exporter, not yet known delivered
        self._next_round = 0.0
        self._failing = False
        self._warned_full = False
        self._closed = False

    def put(self, item: T) -> bool:
        """Queue ``item``; the oldest record is dropped when full. True when a batch is ready."""
        with self._lock:
            if self._closed:  # put after shutdown: never delivered
                self._losses.add(Loss.EXPORT_UNDELIVERED)
                return False
            if len(self._items) >= self._max:
                self._items.popleft()
                self._drop(1)
            self._items.append(item)
            return len(self._items) >= self._batch

    def __len__(self) -> int:
        return len(self._items)

    @property
    def pending(self) -> int:
        """Records not yet delivered, the batch being sent included.

        No lock: a signal handler reads it.
        """
        return len(self._items) + self._in_flight

    def deliver(self, now: float, final: bool = False) -> bool:
        """Export what is queued, batch by batch; False if the exporter gave up on one.

        After a failed round the next waits until ``pause_s`` after it, unless ``final``.
        """
        if not final and now < self._next_round:
            return False
        while True:
            with self._lock:
                if self._closed:
                    return False
                batch = [self._items.popleft() for _ in range(min(self._batch, len(self._items)))]
                if not batch:
                    return True
                self._in_flight = len(batch)
            try:
                ok = self._export(batch)
            except Exception:
                log.exception("failed to export %s", self.what)
                ok = False
            with self._lock:
                self._in_flight = 0
                if self._closed:  # counted as undelivered by close()
                    return False
                if not ok:
                    self._failed(batch, now)
                    return False
                self.delivered += len(batch)
                if self._failing:
                    log.info("OTLP export of %s works again", self.what)
                self._failing = False
                self._warned_full = False

    def close(self) -> int:
        """Stop delivering; count and return the records never delivered."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            undelivered = len(self._items) + self._in_flight
            self._items.clear()
        self._losses.add(Loss.EXPORT_UNDELIVERED, undelivered)
        return undelivered

    def _failed(self, batch: list[T], now: float) -> None:
        """Put a batch the exporter gave up on back in front; the oldest go if it does not fit."""
        room = self._max - len(self._items)
        keep = batch[-room:] if room > 0 else []
        self._drop(len(batch) - len(keep))
        self._items.extendleft(reversed(keep))
        self._next_round = now + self._pause_s
        if not self._failing:
            self._failing = True
            log.warning(
                "failed to export %s over OTLP; keeping them (up to %d) and sending them again",
                self.what,
                self._max,
            )

    def _drop(self, count: int) -> None:
        if count <= 0:
            return
        self.dropped += count
        self._losses.add(Loss.EXPORT_QUEUE, count)
        if not self._warned_full:
            self._warned_full = True
            log.warning(
                "OTLP export queue of %s is full (%d): dropping the oldest; "
                "the collector is away or too slow",
                self.what,
                self._max,
            )


class DeliveryWorker:
    """The one thread that exports: a round over every queue each schedule delay, or on wake."""

    def __init__(self, queues: Sequence[DeliveryQueue[Any]], schedule_delay_s: float) -> None:
        self._queues = queues
        self._delay_s = schedule_delay_s
        self._wake = threading.Event()
        self._stop_by: float | None = None
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Start a round now: a batch is ready, or a record is news."""
        self._wake.set()

    def stop(self, deadline: float) -> None:
        """Deliver what is queued until ``deadline`` (``time.monotonic()``), and stop.

        An export still under way then is left to its thread (a daemon), whose
        exporter the caller shuts down: its batch counts as undelivered.
        """
        self._stop_by = deadline
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while (stop_by := self._stop_by) is None:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            now = time.monotonic()
            for queue in self._queues:
                queue.deliver(now)
        for queue in self._queues:
            while len(queue) and time.monotonic() < stop_by:
                if not queue.deliver(time.monotonic(), final=True):
                    break
