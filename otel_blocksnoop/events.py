"""Records passed between pipeline stages: small, typed and frozen."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class BlockEvent:
    """One loop iteration that crossed the threshold, as the kernel saw it.

    Times are CLOCK_MONOTONIC nanoseconds (``bpf_ktime_get_ns``).
    """

    pid: int
    tid: int
    comm: str
    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class Frame:
    """One Python frame: function, source file and line."""

    function: str
    file: str
    line: int


class ThreadKind(StrEnum):
    """What a thread that calls epoll turned out to be."""

    LOOP = "loop"  # a Python thread running an event loop
    NATIVE = "native"  # no Python thread state: a native library's poller
    POLLER = "poller"  # a Python thread inside a known non-asyncio poller
    UNKNOWN = "unknown"  # not (yet) classified; reported


@dataclass(frozen=True, slots=True)
class Block:
    """A block ready for the sinks: kernel facts plus what the correlator added.

    ``start_unix_ns``/``end_unix_ns`` are wall-clock times converted from the
    monotonic ones, so sinks never need to know about clocks.
    """

    pid: int
    tid: int
    thread_name: str
    start_ns: int
    end_ns: int
    start_unix_ns: int
    end_unix_ns: int
    threshold_ns: int
    thread_kind: ThreadKind = ThreadKind.UNKNOWN
    stack: tuple[Frame, ...] = ()  # dominant stack during the block, outermost first
    source_lines: tuple[str | None, ...] = ()  # one per frame of ``stack``
    call_site: Frame | None = None  # innermost application frame of ``stack``
    samples: int = 0  # samples with exactly ``stack``
    samples_busy: int = 0  # samples in the block that were not the loop idling

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class IterationStats:
    """Loop-iteration durations over one refresh interval (stats mode)."""

    interval_s: float
    count: int
    sum_ns: int
    min_ns: int
    max_ns: int
    percentiles_ns: dict[float, int] = field(default_factory=dict)

    @property
    def rate_per_s(self) -> float:
        return self.count / self.interval_s if self.interval_s > 0 else 0.0

    @property
    def avg_ns(self) -> int:
        return self.sum_ns // self.count if self.count else 0


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """Totals printed when the sidecar stops."""

    blocks: int
    blocked_ns: int
    max_block_ns: int
    lost_events: int
    ignored_blocks: int
    iterations: int = 0
    ignored_threads: tuple[tuple[int, str, ThreadKind], ...] = ()
    duration_s: float = 0.0
