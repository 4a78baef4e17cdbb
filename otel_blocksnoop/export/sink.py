"""Where blocks go: one interface, several destinations, passed in by the CLI."""

from __future__ import annotations

from typing import Protocol

from otel_blocksnoop.events import Block, IterationStats, LoopTimes, SessionSummary


class Sink(Protocol):
    """A destination for blocks. Sinks format; they never read the kernel or the target."""

    def export(self, block: Block) -> None:
        """Hand over one block; must not block the pipeline for long."""

    def export_hang(self, block: Block) -> None:
        """Hand over a block still going on (``block.in_progress``): a hang, reported again."""

    def export_stats(self, stats: IterationStats) -> None:
        """Hand over one interval of loop-iteration statistics (stats mode)."""

    def export_loop_times(self, times: LoopTimes) -> None:
        """Hand over the loop threads' cumulative busy/idle time (about once a second)."""

    def export_summary(self, summary: SessionSummary) -> None:
        """Hand over the session totals, once, before shutdown."""

    def force_flush(self) -> None:
        """Push out anything buffered."""

    def shutdown(self) -> None:
        """Flush and release resources; no export after this."""
