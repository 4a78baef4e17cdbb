"""Human-readable output: one aligned line per block, a summary at the end."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from otel_blocksnoop.events import (
    Block,
    EndReason,
    Frame,
    IterationStats,
    Record,
    SessionSummary,
    Throttling,
)
from otel_blocksnoop.export.formatting import (
    cause_text,
    format_traceback,
    human_duration,
    local_clock,
    losses_of,
)

_HEADER = f"{'TIME':<12}  {'PID':>7}  {'TID':>7}  {'THREAD':<16}  {'BLOCKED':>9}  CAUSE"
_PERCENTILES = (0.5, 0.9, 0.99)
MAX_HANGS_REMEMBERED = 1024


def _status(block: Block, stack_shown: bool) -> str:
    """The cause, and how the block ended if not by the loop coming back."""
    text = cause_text(block)
    if block.in_progress:
        return text + "  STILL BLOCKED" + ("" if stack_shown else ", same stack")
    if block.end_reason == EndReason.THREAD_EXITED:
        return text + "  (thread exited)"
    if block.end_reason == EndReason.SIDECAR_STOPPED:
        return text + "  (still blocked when stopped)"
    return text


def _cpu_wait(runq_ns: int, throttling: Throttling | None) -> str:
    """How long the thread waited for a CPU, and how much of it was its cgroup's quota."""
    text = f"waited for a CPU {human_duration(runq_ns)}"
    if throttling is not None:
        text += f", throttled {human_duration(throttling.throttled_ns)}"
    return text


def _notes(block: Block) -> list[str]:
    """What else is known of a block, for the line under its stack."""
    notes: list[str] = []
    if block.started_before_watch:
        notes.append("already blocked when watching began: it started earlier")
    if block.segments > 1:
        notes.append(
            f"segment {block.segment + 1} of {block.segments} of a "
            f"{human_duration(block.iteration_ns)} iteration"
        )
    if block.stack:
        notes.append(f"{block.samples} of {block.samples_busy} busy samples had this stack")
    if block.call_sites_left_out:
        notes.append(f"{block.call_sites_left_out} call sites left out (too few samples)")
    if block.call_sites and block.unsampled_ns:
        notes.append(f"{human_duration(block.unsampled_ns)} not sampled")
    if block.activity is not None:
        notes.append(
            f"on CPU {human_duration(block.activity.on_cpu_ns)}, "
            f"off CPU {human_duration(block.activity.off_cpu_ns)}"
        )
        if block.activity.runq_ns or block.throttling is not None:
            notes.append(_cpu_wait(block.activity.runq_ns, block.throttling))
    notes.extend(_request_notes(block))
    return notes


def _request_notes(block: Block) -> list[str]:
    """The task that ran, who awaited it, its trace, and what waited on the block."""
    notes: list[str] = []
    if block.task is not None:
        coroutine = f" ({block.task.coroutine})" if block.task.coroutine else ""
        notes.append(f"task {block.task.name}{coroutine}")
        if block.task.awaited_by:
            more = f" and {block.task.awaited_by_more} more" if block.task.awaited_by_more else ""
            notes.append(f"awaited by {', '.join(block.task.awaited_by)}{more}")
    if block.parent is not None:
        notes.append(f"in trace {block.parent.trace_id:032x}")
    if block.delayed_tasks:
        requests = len(block.delayed)
        notes.append(
            f"delayed {block.delayed_tasks} ready callback{'s' if block.delayed_tasks > 1 else ''}"
            + (f" of {requests} other request{'s' if requests > 1 else ''}" if requests else "")
        )
    return notes


class ConsoleSink:
    """Writes to a terminal or a log; the stats line redraws in place on a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._header_done = False
        self._tty = self._stream.isatty()
        self._stats_line_open = False
        # Stack last printed for each block in progress: a repeat with the same
        # stack is one line. Bounded: entries go when their block is exported.
        self._hang_stacks: dict[tuple[int, int, int], tuple[Frame, ...]] = {}

    def _write(self, line: str) -> None:
        if self._stats_line_open:
            self._stream.write("\n")
            self._stats_line_open = False
        self._stream.write(line + "\n")
        self._stream.flush()

    def export(self, record: Record) -> None:
        match record:
            case Block(in_progress=True):
                self._hang(record)
            case Block():
                self._hang_stacks.pop((record.pid, record.tid, record.start_ns), None)
                self._block(record)
            case IterationStats():
                self._stats(record)
            case SessionSummary():
                self._summary(record)
            case _:
                pass  # loop times are for metrics; the console shows blocks

    def _hang(self, block: Block) -> None:
        key = (block.pid, block.tid, block.start_ns)
        repeat = self._hang_stacks.get(key) == block.stack
        if key in self._hang_stacks or len(self._hang_stacks) < MAX_HANGS_REMEMBERED:
            self._hang_stacks[key] = block.stack
        self._block(block, show_stack=not repeat)

    def _block(self, block: Block, show_stack: bool = True) -> None:
        if not self._header_done:
            self._write(_HEADER)
            self._header_done = True
        self._write(
            f"{local_clock(block.start_unix_ns):<12}  {block.app_pid:>7}  {block.app_tid:>7}  "
            f"{block.thread_name[:16]:<16}  {human_duration(block.duration_ns):>9}  "
            f"{_status(block, show_stack)}"
        )
        if not show_stack:
            return
        if block.stack:
            for line in format_traceback(block.stack, block.source_lines).splitlines():
                self._write(f"    {line}")
        if len(block.call_sites) > 1:
            self._write("    held by, in order:")
            for site in block.call_sites:
                self._write(
                    f"      +{human_duration(site.start_ns - block.start_ns):>9}  "
                    f"{human_duration(site.share_ns):>9}  {cause_text(site):<18}  "
                    f"{site.frame.function} ({site.frame.file}:{site.frame.line})"
                )
        notes = _notes(block)
        if notes:
            self._write(f"    ({'; '.join(notes)})")

    def _stats(self, stats: IterationStats) -> None:
        parts = [
            time.strftime("%H:%M:%S"),
            f"{stats.rate_per_s:,.0f} iterations/s",
            f"min {human_duration(stats.min_ns)}",
            f"avg {human_duration(stats.avg_ns)}",
            *(
                f"p{fraction * 100:g} {human_duration(stats.percentiles_ns.get(fraction, 0))}"
                for fraction in _PERCENTILES
            ),
            f"max {human_duration(stats.max_ns)}",
        ]
        line = "  ".join(parts)
        if self._tty:
            self._stream.write("\r\x1b[K" + line)
            self._stream.flush()
            self._stats_line_open = True
        else:
            self._write(line)

    def _summary(self, summary: SessionSummary) -> None:
        text = (
            f"{summary.blocks} block{'s' if summary.blocks != 1 else ''} in "
            f"{summary.duration_s:.1f} s"
        )
        if summary.blocks:
            text += (
                f", {human_duration(summary.blocked_ns)} blocked in all, "
                f"longest {human_duration(summary.max_block_ns)}"
            )
        text += f", {summary.lost_events} lost, {summary.iterations:,} loop iterations"
        self._write(f"--- {text}")
        if summary.ignored_threads:
            threads = ", ".join(
                f"{tid} ({name}, {kind})" for tid, name, kind in summary.ignored_threads
            )
            self._write(
                f"    not event loops, not reported: {summary.ignored_blocks} blocks on {threads}"
            )
        if lost := losses_of(summary):
            self._write(f"    lost: {', '.join(f'{what} {count}' for what, count in lost.items())}")
        if (node := summary.processes) is not None:
            text = f"    processes: {node.found} found, {node.left} let go, {node.watched} watched"
            if node.over_cap:
                text += f", {node.over_cap} not watched (over --max-processes)"
            self._write(text)

    def pending(self) -> dict[str, int]:
        return {}

    def drain(self, deadline: float) -> None:
        _ = deadline  # written at once

    def shutdown(self, deadline: float | None = None) -> None:
        _ = deadline  # a flush of a local stream
        if self._stats_line_open:
            self._stream.write("\n")
            self._stats_line_open = False
        self._stream.flush()
