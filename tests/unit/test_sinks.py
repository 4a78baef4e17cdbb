from __future__ import annotations

import io
import json
from dataclasses import replace

from otel_blocksnoop.events import (
    Activity,
    Block,
    CallSite,
    Cause,
    EndReason,
    Frame,
    IterationStats,
    Loss,
    SessionSummary,
    Sleep,
    SpanRef,
    TaskRef,
    ThreadKind,
    Throttling,
)
from otel_blocksnoop.export import names
from otel_blocksnoop.export.console import ConsoleSink
from otel_blocksnoop.export.formatting import format_traceback
from otel_blocksnoop.export.jsonlines import JsonLinesSink
from otel_blocksnoop.export.otel.spans import block_attributes

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
    sink.export(
        IterationStats(
            interval_s=1.0,
            count=100,
            sum_ns=10**8,
            min_ns=10**5,
            max_ns=10**7,
            percentiles_ns={0.5: 5 * 10**5, 0.99: 9 * 10**6},
        )
    )
    sink.export(SUMMARY)
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
    sink.export(SUMMARY)
    header, row, _, summary, ignored = stream.getvalue().splitlines()
    assert header.split() == ["TIME", "PID", "TID", "THREAD", "BLOCKED", "CAUSE"]
    assert row.split()[1:] == ["10", "11", "loop-1", "123.5", "ms", "unknown"]
    assert row.index("unknown") == header.index("CAUSE")
    assert summary == (
        "--- 1 block in 3.5 s, 123.5 ms blocked in all, longest 123.5 ms, 0 lost, "
        "1,234 loop iterations"
    )
    assert "12 (grpc_poll, native)" in ignored


WAITED = replace(
    BLOCK,
    stack=(Frame("main", "/srv/app.py", 3), Frame("handler", "/srv/app.py", 12)),
    source_lines=("main()", "subprocess.run(cmd)"),
    call_site=Frame("handler", "/srv/app.py", 12),
    samples=20,
    samples_busy=24,
    cause=Cause.SYSCALL,
    syscall="wait4",
    activity=Activity(
        on_cpu_ns=1_200_000,
        runq_ns=300_000,
        sleep_ns=121_000_000,
        sleeps=(Sleep("read", 1_000_000, 1), Sleep("wait4", 120_000_000, 1)),
        other_sleep_ns=0,
        sibling_cpu_ns=50_000,
    ),
)


def test_json_block_carries_the_cause_and_the_time_on_and_off_cpu() -> None:
    stream = io.StringIO()
    JsonLinesSink(stream).export(WAITED)
    record = json.loads(stream.getvalue())
    assert (record["cause"], record["syscall"]) == ("syscall", "wait4")
    assert (record["on_cpu_ms"], record["off_cpu_ms"], record["runq_ms"]) == (1.2, 121.3, 0.3)
    assert record["sleeps"][0] == {"syscall": "wait4", "ms": 120.0, "count": 1}
    assert record["end_reason"] == "returned"
    assert record["call_site"] == {"function": "handler", "file": "/srv/app.py", "line": 12}
    assert record["stack"][-1]["source"] == "subprocess.run(cmd)"


SPLIT = replace(
    WAITED,
    call_sites=(
        CallSite(
            Frame("nap", "/srv/app.py", 5),
            BLOCK.start_ns + 5_000_000,
            0,
            40_000_000,
            40,
            Cause.SYSCALL,
            "clock_nanosleep",
        ),
        CallSite(
            Frame("handler", "/srv/app.py", 12),
            BLOCK.start_ns + 45_000_000,
            0,
            78_000_000,
            78,
            Cause.SYSCALL,
            "wait4",
        ),
    ),
    call_sites_left_out=2,
    unsampled_ns=5_000_000,
)


def test_json_and_console_list_every_call_site_in_order_with_share_and_cause() -> None:
    stream = io.StringIO()
    JsonLinesSink(stream).export(SPLIT)
    record = json.loads(stream.getvalue())
    assert record["call_sites"] == [
        {"function": "nap", "file": "/srv/app.py", "line": 5, "offset_ms": 5.0, "share_ms": 40.0,
         "samples": 40, "cause": "syscall", "syscall": "clock_nanosleep"},
        {"function": "handler", "file": "/srv/app.py", "line": 12, "offset_ms": 45.0,
         "share_ms": 78.0, "samples": 78, "cause": "syscall", "syscall": "wait4"},
    ]  # fmt: skip
    assert (record["call_sites_left_out"], record["unsampled_ms"]) == (2, 5.0)
    console = io.StringIO()
    ConsoleSink(console).export(SPLIT)
    text = console.getvalue()
    assert "held by, in order:" in text
    nap, handler = (line for line in text.splitlines() if line.startswith("      +"))
    assert nap.split()[1:] == [
        "5.0",
        "ms",
        "40.0",
        "ms",
        "clock_nanosleep()",
        "nap",
        "(/srv/app.py:5)",
    ]
    assert "handler (/srv/app.py:12)" in handler
    assert "2 call sites left out (too few samples)" in text


def test_json_hang_is_its_own_record_type_with_no_end_reason_yet() -> None:
    stream = io.StringIO()
    JsonLinesSink(stream).export(replace(WAITED, in_progress=True))
    record = json.loads(stream.getvalue())
    assert record["type"] == "hang"
    assert record["end_reason"] is None
    assert record["duration_ms"] == 123.457


def test_json_block_without_kernel_books_has_null_times_not_missing_keys() -> None:
    stream = io.StringIO()
    JsonLinesSink(stream).export(BLOCK)
    record = json.loads(stream.getvalue())
    assert record["cause"] == "unknown"
    assert record["on_cpu_ms"] is None
    assert record["sleeps"] == []


def test_console_shows_cause_stack_and_how_a_block_ended() -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream)
    sink.export(replace(WAITED, in_progress=True))
    sink.export(replace(WAITED, end_reason=EndReason.SIDECAR_STOPPED))
    lines = stream.getvalue().splitlines()
    assert lines[1].endswith("123.5 ms  wait4()  STILL BLOCKED")
    assert lines[2:7] == [
        "    Traceback (most recent call last):",
        '      File "/srv/app.py", line 3, in main',
        "        main()",
        '      File "/srv/app.py", line 12, in handler',
        "        subprocess.run(cmd)",
    ]
    assert lines[7] == (
        "    (20 of 24 busy samples had this stack; on CPU 1.2 ms, off CPU 121.3 ms; "
        "waited for a CPU 0.300 ms)"
    )
    assert lines[8].endswith("wait4()  (still blocked when stopped)")


def test_console_repeats_a_hang_on_one_line_while_its_stack_is_the_same() -> None:
    # GIVEN a hang reported at 0.2 s, again at 1.2 s with the same stack, then its end
    stream = io.StringIO()
    sink = ConsoleSink(stream)
    first = replace(WAITED, in_progress=True)
    sink.export(first)
    sink.export(replace(first, end_ns=first.start_ns + 1_200_000_000))
    sink.export(replace(WAITED, end_ns=first.start_ns + 1_500_000_000))
    lines = stream.getvalue().splitlines()
    # THEN the repeat is a single line, and the final block shows the stack again
    repeat = lines[8]
    assert repeat.endswith("1.20 s  wait4()  STILL BLOCKED, same stack")
    assert lines[9].endswith("1.50 s  wait4()")
    assert lines[10] == "    Traceback (most recent call last):"


LIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"
HANDLER = (
    Frame("Handle._run", f"{LIB}/asyncio/events.py", 80),
    Frame("handler", "/srv/app.py", 12),
)


def test_traceback_text_is_most_recent_call_last_with_source_lines() -> None:
    text = format_traceback(HANDLER[-2:], [None, "time.sleep(0.2)"])
    assert text.splitlines() == [
        "Traceback (most recent call last):",
        f'  File "{LIB}/asyncio/events.py", line 80, in Handle._run',
        '  File "/srv/app.py", line 12, in handler',
        "    time.sleep(0.2)",
    ]


LOSSY = replace(
    SUMMARY,
    losses=((Loss.KERNEL_EVENTS, 0), (Loss.CONTEXT_LATE, 3), (Loss.EXPORT_QUEUE, 2)),
)


def test_json_summary_lists_the_losses_that_happened() -> None:
    stream = io.StringIO()
    sink = JsonLinesSink(stream)
    sink.export(SUMMARY)
    sink.export(LOSSY)
    clean, lossy = (json.loads(line) for line in stream.getvalue().splitlines())
    assert clean["lost"] == {}
    assert lossy["lost"] == {"context.late": 3, "export.queue": 2}
    assert lossy["lost_events"] == 0


def test_console_summary_lists_the_losses_that_happened_on_a_line_of_their_own() -> None:
    stream = io.StringIO()
    ConsoleSink(stream).export(LOSSY)
    *_, lost = stream.getvalue().splitlines()
    assert lost == "    lost: context.late 3, export.queue 2"


def test_json_and_console_show_the_throttled_time_only_when_it_was_read() -> None:
    # GIVEN a block whose cgroup's stats were read, and one whose were not
    throttled = replace(WAITED, throttling=Throttling(throttled_ns=250_000, periods=2))
    stream = io.StringIO()
    JsonLinesSink(stream).export(throttled)
    JsonLinesSink(stream).export(WAITED)
    read, unread = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (read["runq_ms"], read["throttled_ms"], read["throttled_periods"]) == (0.3, 0.25, 2)
    assert (unread["throttled_ms"], unread["throttled_periods"]) == (None, None)
    console = io.StringIO()
    ConsoleSink(console).export(throttled)
    assert (
        console.getvalue()
        .splitlines()[7]
        .endswith("; waited for a CPU 0.300 ms, throttled 0.250 ms)")
    )


def test_json_and_console_say_who_waited_only_when_it_was_read() -> None:
    # GIVEN a block that 3 ready callbacks of 2 other requests waited on, and one unread
    delayed = (SpanRef(0xB, 0x2, 1), SpanRef(0xC, 0x4, 1))
    waited_on = replace(BLOCK, delayed_tasks=3, delayed=delayed)
    stream = io.StringIO()
    JsonLinesSink(stream).export(waited_on)
    JsonLinesSink(stream).export(BLOCK)
    read, unread = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (read["delayed_tasks"], read["delayed_unread"]) == (3, 0)
    assert read["delayed"] == [
        {"trace_id": f"{0xB:032x}", "span_id": f"{0x2:016x}"},
        {"trace_id": f"{0xC:032x}", "span_id": f"{0x4:016x}"},
    ]
    assert (unread["delayed_tasks"], unread["delayed"]) == (None, [])
    console = io.StringIO()
    ConsoleSink(console).export(waited_on)
    assert "delayed 3 ready callbacks of 2 other requests" in console.getvalue()


def test_the_tasks_awaiting_the_blocked_one_are_in_json_console_and_span() -> None:
    # GIVEN a block whose task three tasks await, one past the cap; and one read before 3.14
    task = TaskRef("blocked", "work", awaited_by=("request-1", "root"), awaited_by_more=1)
    held = replace(BLOCK, task=task)
    old = replace(BLOCK, task=TaskRef("blocked", "work"))
    stream = io.StringIO()
    JsonLinesSink(stream).export(held)
    JsonLinesSink(stream).export(old)
    console = io.StringIO()
    ConsoleSink(console).export(held)

    # THEN JSON lists them with the count, and null where they were not read
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["awaited_by"], r["awaited_by_more"]) for r in records] == [
        (["request-1", "root"], 1),
        (None, 0),
    ]
    # AND the console says so
    assert "awaited by request-1, root and 1 more" in console.getvalue()
    # AND the span carries them as a list and a count, or neither
    attributes = block_attributes(held)
    assert attributes[names.TASK_AWAITED_BY] == ["request-1", "root"]
    assert attributes[names.TASK_AWAITED_BY_MORE] == 1
    assert names.TASK_AWAITED_BY not in block_attributes(old)
    assert names.TASK_AWAITED_BY_MORE not in block_attributes(old)
