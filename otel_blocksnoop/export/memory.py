"""A sink that keeps everything in lists, for tests and embedding."""

from __future__ import annotations

from otel_blocksnoop.events import Block, IterationStats, LoopTimes, Record, SessionSummary


class MemorySink:
    """Collects what it is given, by kind; ``shut_down`` tells whether shutdown ran."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.hangs: list[Block] = []
        self.loop_times: list[LoopTimes] = []
        self.stats: list[IterationStats] = []
        self.summaries: list[SessionSummary] = []
        self.shut_down = False
        self.deadline: float | None = None  # given to shutdown

    def export(self, record: Record) -> None:
        match record:
            case Block(in_progress=True):
                self.hangs.append(record)
            case Block():
                self.blocks.append(record)
            case IterationStats():
                self.stats.append(record)
            case LoopTimes():
                self.loop_times.append(record)
            case SessionSummary():
                self.summaries.append(record)

    def pending(self) -> dict[str, int]:
        return {}

    def drain(self, deadline: float) -> None:
        self.deadline = deadline

    def shutdown(self, deadline: float | None = None) -> None:
        self.deadline = self.deadline if deadline is None else deadline
        self.shut_down = True
