"""The whole configuration of one run, read once from the command line and environment.

``cli`` builds it (flag > environment > default) and ``session`` builds each
stage from it; no stage reads the command line or ``os.environ`` itself
(the OTLP exporters aside, which read their own ``OTEL_*`` settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from otel_blocksnoop.analysis import hangs, trace_link
from otel_blocksnoop.export.otlp import OtlpSettings
from otel_blocksnoop.kernel.program import DetectorConfig
from otel_blocksnoop.process.discovery import Selector


@dataclass(frozen=True, slots=True)
class Config:
    pids: tuple[int, ...]  # attach mode: the processes to watch
    command: list[str]  # launch mode: the command to run, watched from its start
    threshold_ns: int
    json: bool
    stats: bool
    tid: int  # 0: every thread
    all_threads: bool
    austin: str | None  # Austin binary given by flag
    otlp: OtlpSettings
    cause: bool
    trace_link: bool
    stacks: bool
    sample_interval_us: int | None  # None: chosen from the threshold
    verbose: bool
    quiet: bool
    ebpf: bool
    stacks_from: str = "auto"  # STACK_READERS: who reads the stacks (stacks.memory)
    select: Selector | None = None  # node mode: the processes to find and follow
    max_processes: int = 256  # node mode: watched at once, at most
    report: Path | None = None  # --report: the HTML page written when the run stops
    fail_on_ns: int | None = None  # --fail-on: exit LOOP_BLOCKED after a block this long
    fail_on_loss: bool = False  # --fail-on-loss: exit EVENTS_LOST after a loss that hides blocks
    sync: bool = False  # hidden --sync: answer "reported up to T?" asked on stdin

    @property
    def trigger_ns(self) -> int:
        """Age out of epoll at which the kernel says to look: the earliest any stage needs."""
        ages = [hangs.first_report_ns(self.threshold_ns)]
        if self.trace_link:
            ages.append(trace_link.trigger_ns_for(self.threshold_ns))
        return min(ages)

    @property
    def detector(self) -> DetectorConfig:
        return DetectorConfig(
            threshold_ns=self.threshold_ns,
            tid=self.tid,
            stats=self.stats,
            activity=self.cause,
            trigger_ns=self.trigger_ns,
            # Each request's share of an iteration is told by its context: only links need it.
            segments=self.trace_link,
        )
