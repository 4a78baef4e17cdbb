"""Machine-readable output: one JSON object per line, each with a ``type``."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from otel_blocksnoop.events import (
    Block,
    CallSite,
    Frame,
    IterationStats,
    NodeCounts,
    Record,
    SessionSummary,
    Synced,
    TaskRef,
)
from otel_blocksnoop.export.formatting import iso_utc, losses_of, ms


def _frame(frame: Frame) -> dict[str, Any]:
    return {"function": frame.function, "file": frame.file, "line": frame.line}


def _call_site(block: Block, site: CallSite) -> dict[str, Any]:
    """A call site: where, from when (ms after the block's start), how long, why."""
    return {
        **_frame(site.frame),
        "offset_ms": ms(site.start_ns - block.start_ns),
        "share_ms": ms(site.share_ns),
        "samples": site.samples,
        "cause": str(site.cause),
        "syscall": site.syscall,
    }


def _activity(block: Block) -> dict[str, Any]:
    activity = block.activity
    if activity is None:
        return {
            "on_cpu_ms": None,
            "off_cpu_ms": None,
            "runq_ms": None,
            "sibling_cpu_ms": None,
            "sleeps": [],
        }
    return {
        "on_cpu_ms": ms(activity.on_cpu_ns),
        "off_cpu_ms": ms(activity.off_cpu_ns),
        "runq_ms": ms(activity.runq_ns),
        "sibling_cpu_ms": ms(activity.sibling_cpu_ns),
        "sleeps": [
            {"syscall": sleep.syscall, "ms": ms(sleep.ns), "count": sleep.count}
            for sleep in sorted(activity.sleeps, key=lambda sleep: -sleep.ns)
        ],
    }


def _block_record(kind: str, block: Block) -> dict[str, Any]:
    """A block, or a block still going on (``hang``: its duration is the time so far)."""
    return {
        "type": kind,
        "time": iso_utc(block.start_unix_ns),
        "pid": block.app_pid,
        "tid": block.app_tid,
        "host_pid": block.host_ids[0] if block.host_ids else None,
        "host_tid": block.host_ids[1] if block.host_ids else None,
        "thread_name": block.thread_name,
        "thread_kind": str(block.thread_kind),
        "duration_ms": ms(block.duration_ns),
        "threshold_ms": ms(block.threshold_ns),
        "start_unix_ns": block.start_unix_ns,
        "end_unix_ns": block.end_unix_ns,
        "start_monotonic_ns": block.start_ns,
        "end_monotonic_ns": block.end_ns,
        "end_reason": None if block.in_progress else str(block.end_reason),
        "started_before_watch": block.started_before_watch,
        "cause": str(block.cause),
        "syscall": block.syscall,
        **_activity(block),
        "throttled_ms": ms(block.throttling.throttled_ns) if block.throttling else None,
        "throttled_periods": block.throttling.periods if block.throttling else None,
        "call_site": _frame(block.call_site) if block.call_site else None,
        "stack": [
            {**_frame(frame), "source": source}
            for frame, source in zip(block.stack, block.source_lines, strict=False)
        ],
        "samples": block.samples,
        "samples_busy": block.samples_busy,
        "call_sites": [_call_site(block, site) for site in block.call_sites],
        "call_sites_left_out": block.call_sites_left_out,
        "unsampled_ms": ms(block.unsampled_ns),
        "trace_id": f"{block.parent.trace_id:032x}" if block.parent else None,
        "parent_span_id": f"{block.parent.span_id:016x}" if block.parent else None,
        "task": block.task.name if block.task else None,
        "coroutine": block.task.coroutine if block.task else None,
        "delayed_tasks": block.delayed_tasks,
        "delayed_unread": block.delayed_unread,
        "delayed": [
            {"trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}"}
            for span in block.delayed
        ],
        "awaited_by": _awaited_by(block.task),
        "awaited_by_more": block.task.awaited_by_more if block.task else 0,
        "iteration": {
            "id": block.iteration_id,
            "duration_ms": ms(block.iteration_ns),
            "segments": block.segments,
            "segment": block.segment,
        },
    }


def _awaited_by(task: TaskRef | None) -> list[str] | None:
    """The names of the tasks awaiting it; None where not read (before CPython 3.14)."""
    return None if task is None or task.awaited_by is None else list(task.awaited_by)


def _stats_record(stats: IterationStats) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "stats",
        "interval_s": round(stats.interval_s, 3),
        "iterations": stats.count,
        "rate_per_s": round(stats.rate_per_s, 1),
        "min_ms": ms(stats.min_ns),
        "avg_ms": ms(stats.avg_ns),
    }
    for fraction, value in sorted(stats.percentiles_ns.items()):
        record[f"p{fraction * 100:g}_ms"] = ms(value)
    record["max_ms"] = ms(stats.max_ns)
    return record


def _summary_record(summary: SessionSummary) -> dict[str, Any]:
    return {
        "type": "summary",
        "blocks": summary.blocks,
        "blocked_ms": ms(summary.blocked_ns),
        "max_block_ms": ms(summary.max_block_ns),
        "lost_events": summary.lost_events,
        "iterations": summary.iterations,
        "ignored_blocks": summary.ignored_blocks,
        "ignored_threads": [
            {"tid": tid, "thread_name": name, "thread_kind": str(kind)}
            for tid, name, kind in summary.ignored_threads
        ],
        "duration_s": round(summary.duration_s, 3),
        "lost": losses_of(summary),
        **({} if summary.processes is None else {"processes": _processes(summary.processes)}),
    }


def _processes(counts: NodeCounts) -> dict[str, Any]:
    return {
        "found": counts.found,
        "left": counts.left,
        "watched": counts.watched,
        "over_cap": counts.over_cap,
        "held": dict(counts.held),
    }


def json_record(record: Record) -> dict[str, Any] | None:
    """The JSON object a record is written as (``--json``, and what ``--report`` reads).

    None for records that have no line: loop times are for metrics; JSON lines carry blocks.
    """
    match record:
        case Block(in_progress=True):
            return _block_record("hang", record)
        case Block():
            return _block_record("block", record)
        case IterationStats():
            return _stats_record(record)
        case SessionSummary():
            return _summary_record(record)
        case _:
            return None


class JsonLinesSink:
    """``{"type": "block" | "hang" | "stats" | "summary" | "synced", ...}`` records on a stream."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout

    def _emit(self, record: dict[str, Any]) -> None:
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._stream.flush()

    def export(self, record: Record) -> None:
        if isinstance(record, Synced):  # an answer to --sync, not part of a recording
            self._emit({"type": "synced", "monotonic_ns": record.monotonic_ns})
            return
        line = json_record(record)
        if line is not None:
            self._emit(line)

    def pending(self) -> dict[str, int]:
        return {}

    def drain(self, deadline: float) -> None:
        _ = deadline  # written at once

    def shutdown(self, deadline: float | None = None) -> None:
        _ = deadline  # a flush of a local stream
        self._stream.flush()
