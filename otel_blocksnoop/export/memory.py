"""A sink that keeps everything in lists, for tests and embedding."""

from __future__ import annotations

from otel_blocksnoop.events import Block, IterationStats, LoopTimes, SessionSummary


class MemorySink:
    """Collects what it is given; ``shut_down`` tells whether shutdown ran."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.hangs: list[Block] = []
        self.loop_times: list[LoopTimes] = []
        self.stats: list[IterationStats] = []
        self.summaries: list[SessionSummary] = []
        self.shut_down = False

    def export(self, block: Block) -> None:
        self.blocks.append(block)

    def export_hang(self, block: Block) -> None:
        self.hangs.append(block)

    def export_stats(self, stats: IterationStats) -> None:
        self.stats.append(stats)

    def export_loop_times(self, times: LoopTimes) -> None:
        self.loop_times.append(times)

    def export_summary(self, summary: SessionSummary) -> None:
        self.summaries.append(summary)

    def force_flush(self) -> None:
        """Nothing is buffered."""

    def shutdown(self) -> None:
        self.shut_down = True
