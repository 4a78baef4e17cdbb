"""The HTML report's data: a recording read back, and what the page is made of.

The records come from the JSON lines sink itself, so the report is tested
against the contract ``--json`` writes. The page in a real browser is
tests/integration/test_report.py.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from otel_blocksnoop import cli
from otel_blocksnoop.errors import ExitCode, RecordingError
from otel_blocksnoop.events import (
    Block,
    CallSite,
    Cause,
    Frame,
    Iteration,
    Record,
    SessionSummary,
    SpanRef,
    ThreadKind,
)
from otel_blocksnoop.export.jsonlines import JsonLinesSink
from otel_blocksnoop.export.report import ReportSink, model, read_recording, render
from otel_blocksnoop.export.report.recording import Recording

MS = 1_000_000
MAIN = (Frame("<module>", "/app/app.py", 50), Frame("main", "/app/app.py", 40))
BUSY = (*MAIN, Frame("busy", "/app/app.py", 10))
HASH = (*MAIN, Frame("hash_password", "/app/auth.py", 7))


def block(
    start_ms: int,
    duration_ms: int,
    stack: tuple[Frame, ...] = BUSY,
    cause: Cause = Cause.CPU,
    tid: int = 11,
    **fields: Any,
) -> Block:
    start, end = 5_000 * MS + start_ms * MS, 5_000 * MS + (start_ms + duration_ms) * MS
    return Block(
        pid=10,
        tid=tid,
        thread_name="python",
        start_ns=start,
        end_ns=end,
        start_unix_ns=1_700_000_000_000 * MS + start,
        end_unix_ns=1_700_000_000_000 * MS + end,
        threshold_ns=20 * MS,
        thread_kind=ThreadKind.LOOP,
        stack=stack,
        source_lines=(None,) * len(stack),
        call_site=stack[-1] if stack else None,
        cause=cause,
        **fields,
    )


def recorded(*records: Record) -> list[str]:
    """The lines ``--json`` writes for ``records``."""
    stream = io.StringIO()
    sink = JsonLinesSink(stream)
    for record in records:
        sink.export(record)
    return stream.getvalue().splitlines()


SUMMARY = SessionSummary(
    blocks=4,
    blocked_ns=0,
    max_block_ns=0,
    lost_events=2,
    ignored_blocks=0,
    iterations=100,
    ignored_threads=(),
    duration_s=3.0,
)


def test_a_recording_gives_every_block_with_its_call_site_cause_and_summary() -> None:
    # GIVEN a recording of three blocks and a summary
    lines = recorded(
        block(0, 300),
        block(400, 50, HASH, Cause.SYSCALL, syscall="read"),
        block(600, 30, ()),
        SUMMARY,
    )
    # WHEN it is read back
    recording = read_recording(lines, "run.jsonl")
    # THEN each block keeps what the page shows of it
    assert [b.duration_ms for b in recording.blocks] == [300.0, 50.0, 30.0]
    assert recording.blocks[0].call_site is not None
    assert recording.blocks[0].call_site.function == "busy"
    assert [b.cause_text for b in recording.blocks] == ["cpu", "read()", "cpu"]
    assert recording.blocks[2].stack == ()
    assert recording.summary is not None
    assert recording.summary["lost_events"] == 2
    assert recording.threshold_ms == 20.0


def test_hang_reports_give_way_to_the_block_they_became() -> None:
    # GIVEN a block reported twice while it lasted, then when it ended,
    # and another still going on when the recording ended
    ended = block(0, 900)
    lines = recorded(
        replace(ended, end_ns=ended.start_ns + 200 * MS, in_progress=True),
        replace(ended, end_ns=ended.start_ns + 500 * MS, in_progress=True),
        ended,
        replace(block(1000, 300), in_progress=True),
        replace(block(1000, 700), in_progress=True),
    )
    # WHEN it is read back
    blocks = read_recording(lines, "run.jsonl").blocks
    # THEN there is one block for each, the unfinished one as long as last seen
    assert [(b.duration_ms, b.in_progress) for b in blocks] == [(900.0, False), (700.0, True)]


def test_a_block_weighs_its_whole_duration_on_its_stack() -> None:
    recording = read_recording(recorded(block(0, 120)), "r")
    (stack,) = model.weighted_stacks(recording.blocks[0])
    assert stack.ms == 120.0
    assert stack.frames == ("<module> (app.py)", "main (app.py)", "busy (app.py)")


def test_the_flame_graph_is_widest_where_the_loop_was_blocked_longest() -> None:
    # GIVEN busy blocking 2 x 100 ms, hash_password 150 ms and 30 ms with no stack
    lines = recorded(block(0, 100), block(200, 100), block(400, 150, HASH), block(600, 30, ()))
    # WHEN the tree is built
    tree = model.flame_tree(read_recording(lines, "r").blocks)
    # THEN the root holds all the time, and below main busy outweighs hash_password
    assert tree["value"] == 380.0
    by_name = {child["name"]: child for child in tree["children"]}
    assert by_name[model.NO_STACK]["value"] == 30.0
    (main,) = by_name["<module> (app.py)"]["children"]
    leaves = {child["name"]: child["value"] for child in main["children"]}
    assert leaves == {"busy (app.py)": 200.0, "hash_password (auth.py)": 150.0}


QUERY = Frame("remote_query", "/app/app.py", 21)
DERIVE = Frame("derive_key", "/app/app.py", 22)


def held_by_two(start_ms: int) -> Block:
    """A 200 ms block of a handler: 60 ms in remote_query, then 120 ms in derive_key."""
    start = 5_000 * MS + start_ms * MS
    query = CallSite(QUERY, start, 0, 60 * MS, 60, Cause.SYSCALL, "recvfrom")
    derive = CallSite(DERIVE, start + 60 * MS, 0, 120 * MS, 120, Cause.CPU)
    return block(start_ms, 200, (*MAIN, DERIVE), call_sites=(query, derive))


def test_a_block_of_several_calls_weighs_each_its_share_under_their_caller() -> None:
    (found,) = read_recording(recorded(held_by_two(0)), "r").blocks
    stacks = model.weighted_stacks(found)
    main = ("<module> (app.py)", "main (app.py)")
    assert [(s.frames, s.ms) for s in stacks] == [
        ((*main, "remote_query (app.py)"), 60.0),
        ((*main, "derive_key (app.py)"), 120.0),
        ((*main, model.NOT_SAMPLED), 20.0),
    ]


def test_the_call_site_table_counts_each_call_of_a_block_with_its_share_and_cause() -> None:
    rows = model.call_site_rows(
        read_recording(recorded(held_by_two(0), held_by_two(300)), "r").blocks
    )
    assert [(r.function, r.count, r.total_ms, r.causes) for r in rows] == [
        ("derive_key", 2, 240.0, (("cpu", 2),)),
        ("remote_query", 2, 120.0, (("recvfrom()", 2),)),
    ]


def test_call_sites_are_ranked_by_total_time_with_percentiles_and_causes() -> None:
    lines = recorded(
        *(block(i * 100, 20 + i, cause=Cause.CPU) for i in range(9)),
        block(1000, 50, cause=Cause.GIL),
        block(2000, 200, HASH),
    )
    rows = model.call_site_rows(read_recording(lines, "r").blocks)
    assert [(r.function, r.count) for r in rows] == [("busy", 10), ("hash_password", 1)]
    busy = rows[0]
    assert busy.total_ms == sum(range(20, 29)) + 50
    assert (busy.p50_ms, busy.p99_ms) == (24.0, 50.0)
    assert busy.causes == (("cpu", 9), ("gil", 1))
    assert busy.location == "/app/app.py:10"


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert model.percentile(values, 0.5) == 50.0
    assert model.percentile(values, 0.99) == 99.0
    assert model.percentile([7.0], 0.99) == 7.0
    assert model.percentile([], 0.5) == 0.0


def test_the_histogram_counts_an_iteration_once_however_many_segments() -> None:
    # GIVEN an iteration of 150 ms split into two requests' segments, and a 30 ms block
    first = block(0, 100)
    iteration = Iteration(
        start_ns=first.start_ns,
        end_ns=first.start_ns + 150 * MS,
        start_unix_ns=first.start_unix_ns,
        end_unix_ns=first.start_unix_ns + 150 * MS,
        segments=2,
    )
    lines = recorded(
        block(0, 100, iteration=iteration, segment=0),
        block(100, 50, iteration=iteration, segment=1),
        block(500, 30),
    )
    blocks = read_recording(lines, "r").blocks
    # THEN it is one blocked iteration, in the 100-200 ms bucket, as the metric counts it
    assert model.iterations(blocks) == 2
    assert [(b.label, b.count) for b in model.histogram(blocks)] == [
        ("20 ms-50 ms", 1),
        ("50 ms-100 ms", 0),
        ("100 ms-200 ms", 1),
    ]


def test_the_timeline_keeps_the_longest_blocks_in_time_order() -> None:
    blocks = read_recording(recorded(block(0, 30), block(100, 90), block(300, 60)), "r").blocks
    bars = model.timeline(blocks, limit=2)
    assert [bar["ms"] for bar in bars] == [90.0, 60.0]
    assert bars[0]["lane"] == "10/11 python"
    assert bars[0]["call_site"] == "busy (/app/app.py:10)"


def test_a_bar_says_who_waited_on_its_block_when_that_was_read() -> None:
    waiting = (SpanRef(1, 2, 1), SpanRef(3, 4, 1))
    lines = recorded(block(0, 90, delayed_tasks=3, delayed=waiting), block(100, 50))
    bars = model.timeline(read_recording(lines, "r").blocks)
    assert [(bar["delayed_tasks"], bar["delayed_requests"]) for bar in bars] == [(3, 2), (None, 0)]


def test_names_from_the_app_cannot_break_out_of_the_page() -> None:
    # GIVEN a function whose name closes the script element
    evil = (Frame("</script><script>alert(1)</script>", "/app/<b>.py", 1),)
    page = render(read_recording(recorded(block(0, 50, evil)), "r"), "<i>source</i>")
    # THEN it is only ever written escaped
    assert "<script>alert(1)" not in page
    assert "<i>source</i>" not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page  # the table's cell


def test_the_page_loads_nothing_from_elsewhere() -> None:
    page = render(read_recording(recorded(block(0, 50)), "r"), "r")
    assert re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", page) is None
    assert page.count("<script>") == 3  # d3, d3-flame-graph, the page's own, all inline


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("TIME  PID  TID  THREAD  BLOCKED  CAUSE", "run.jsonl, line 2: not JSON"),
        ("[1, 2]", "run.jsonl, line 2: not a JSON object"),
        ('{"type": "block", "pid": 1, "tid": 1}', "its 'start_unix_ns' is not a whole number"),
    ],
)
def test_a_line_that_is_no_record_is_an_error_naming_it(line: str, says: str) -> None:
    with pytest.raises(RecordingError, match=says):
        read_recording([*recorded(block(0, 50)), line], "run.jsonl")


def test_report_command_writes_the_page_next_to_the_recording(tmp_path: Path) -> None:
    recording = tmp_path / "run.jsonl"
    recording.write_text("\n".join(recorded(block(0, 50), block(100, 70, tid=12), SUMMARY)))
    assert cli.main(["report", str(recording)]) == ExitCode.OK
    page = (tmp_path / "run.html").read_text()
    data = page.split('<script id="report-data" type="application/json">')[1].split("</script>")[0]
    assert len(json.loads(data)["timeline"]) == 2
    assert len(json.loads(data)["lanes"]) == 2


def test_report_command_says_in_one_line_what_is_wrong_with_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    console = tmp_path / "console.txt"
    console.write_text("TIME  PID  TID\n")
    for argv in (["report", str(tmp_path / "missing.jsonl")], ["report", str(console)]):
        assert cli.main(argv) == ExitCode.BAD_RECORDING
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("otel-blocksnoop: failed to read ")
        assert "(hint: give the JSON lines a run wrote with --json" in line


def test_report_to_a_directory_that_does_not_exist_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = tmp_path / "run.jsonl"
    recording.write_text("\n".join(recorded(block(0, 50))))
    with pytest.raises(SystemExit) as stop:
        cli.main(["report", str(recording), "-o", str(tmp_path / "no" / "r.html")])
    assert stop.value.code == ExitCode.USAGE
    assert "no such directory" in capsys.readouterr().err


def test_report_flag_is_refused_with_stats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.parse_arguments(["--stats", "--report", "r.html", "1234"], environ={})
    assert stop.value.code == ExitCode.USAGE
    assert "--report draws blocks" in capsys.readouterr().err


def test_report_sink_writes_the_runs_page_when_it_stops(tmp_path: Path) -> None:
    # GIVEN a run's records handed to the sink, as the session does
    sink = ReportSink(tmp_path / "r.html", "python3 app.py")
    for record in (block(0, 50), replace(block(100, 300), in_progress=True), block(100, 400)):
        sink.export(record)
    # WHEN the run stops
    sink.shutdown()
    # THEN the page holds both blocks, and names the command
    page = (tmp_path / "r.html").read_text()
    assert '<b id="block-count">2</b>' in page
    assert "python3 app.py" in page


def test_report_sink_that_cannot_write_says_so_and_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ReportSink(tmp_path / "gone" / "r.html", "app")
    sink.export(block(0, 50))
    with caplog.at_level(logging.ERROR):
        sink.shutdown()
    assert "failed to write report" in caplog.text


def test_a_report_holds_a_bounded_number_of_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("otel_blocksnoop.export.report.recording.MAX_BLOCKS", 3)
    recording = Recording()
    for line in recorded(*(block(i * 100, 30) for i in range(5))):
        recording.add(json.loads(line))
    assert (len(recording.finish().blocks), recording.left_out) == (3, 2)


def test_report_command_reads_a_recording_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a recording piped in, as `otel-blocksnoop --json ... | otel-blocksnoop report -`
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(recorded(block(0, 50), SUMMARY))))
    # WHEN the report is made of stdin
    code = cli.main(["report", "-", "-o", str(tmp_path / "r.html")])
    # THEN the page holds its block, and one line says where it went
    assert code == ExitCode.OK
    assert '<b id="block-count">1</b>' in (tmp_path / "r.html").read_text()
    assert capsys.readouterr().out == f"wrote {tmp_path / 'r.html'}: 1 block on 1 loop thread\n"


def test_report_flag_goes_into_the_runs_configuration(tmp_path: Path) -> None:
    config = cli.parse_arguments(["--report", str(tmp_path / "r.html"), "--", "app"], environ={})
    assert config.report == tmp_path / "r.html"
    assert cli.parse_arguments(["--", "app"], environ={}).report is None
