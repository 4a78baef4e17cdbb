"""The whole configuration of one run, read once from the command line and environment.

``cli`` builds it (flag > environment > default) and ``session`` builds each
stage from it; no stage reads the command line or ``os.environ`` itself
(the OTLP exporters aside, which read their own ``OTEL_*`` settings).
"""

from __future__ import annotations

from dataclasses import dataclass

from otel_blocksnoop.export.otlp import OtlpSettings
from otel_blocksnoop.kernel.program import DetectorConfig


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

    @property
    def detector(self) -> DetectorConfig:
        return DetectorConfig(
            threshold_ns=self.threshold_ns, tid=self.tid, stats=self.stats, activity=self.cause
        )
