from __future__ import annotations

import io
import json

from otel_blocksnoop.events import Block, IterationStats, SessionSummary, ThreadKind
from otel_blocksnoop.sinks.console import ConsoleSink
from otel_blocksnoop.sinks.jsonlines import JsonLinesSink

BLOCK = Block(
    pid=10,
    tid=11,
    thread_name="loop-1",
    start_ns=5_000_000_000,
    end_ns=5_123_456_789,
    start_unix_ns=1_700_000_000_000_000_000,
    end_unix_ns=1_700_000_000_123_456_789,
    threshold_ns=100_000_000,
    thread_kind=ThreadKind.LOOP,
)
SUMMARY = SessionSummary(
    blocks=1,
    blocked_ns=123_456_789,
    max_block_ns=123_456_789,
    lost_events=0,
    ignored_blocks=4,
    iterations=1234,
    ignored_threads=((12, "grpc_poll", ThreadKind.NATIVE),),
    duration_s=3.5,
)


def test_json_block_record_has_times_durations_and_thread() -> None:
    stream = io.StringIO()
    JsonLinesSink(stream).export(BLOCK)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["type"] == "block"
    assert record["time"] == "2023-11-14T22:13:20.000000Z"
    assert record["duration_ms"] == 123.457
    assert record["threshold_ms"] == 100.0
    assert (record["pid"], record["tid"], record["thread_name"]) == (10, 11, "loop-1")
    assert record["end_unix_ns"] - record["start_unix_ns"] == 123_456_789
    assert record["thread_kind"] == "loop"


def test_json_summary_and_stats_are_one_line_each() -> None:
    stream = io.StringIO()
    sink = JsonLinesSink(stream)
    sink.export_stats(
        IterationStats(
            interval_s=1.0,
            count=100,
            sum_ns=10**8,
            min_ns=10**5,
            max_ns=10**7,
            percentiles_ns={0.5: 5 * 10**5, 0.99: 9 * 10**6},
        )
    )
    sink.export_summary(SUMMARY)
    stats, summary = (json.loads(line) for line in stream.getvalue().splitlines())
    assert stats["rate_per_s"] == 100.0
    assert stats["avg_ms"] == 1.0
    assert stats["p50_ms"] == 0.5
    assert stats["p99_ms"] == 9.0
    assert summary["ignored_threads"] == [
        {"tid": 12, "thread_name": "grpc_poll", "thread_kind": "native"}
    ]


def test_console_prints_a_header_once_then_aligned_rows_and_a_summary() -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream)
    sink.export(BLOCK)
    sink.export(BLOCK)
    sink.export_summary(SUMMARY)
    header, row, _, summary, ignored = stream.getvalue().splitlines()
    assert header.split() == ["TIME", "PID", "TID", "THREAD", "BLOCKED"]
    assert row.split()[1:] == ["10", "11", "loop-1", "123.5", "ms"]
    assert len(row) == len(header)
    assert summary == (
        "--- 1 block in 3.5 s, 123.5 ms blocked in all, longest 123.5 ms, 0 lost, "
        "1,234 loop iterations"
    )
    assert "12 (grpc_poll, native)" in ignored
