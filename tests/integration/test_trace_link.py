"""Block spans inside the app's own traces: the active span read from outside, during the block."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import TARGETS
from harness.otlp import OtlpReceiver, ReceivedSpan, attributes
from tests.helpers import SIDECAR, WAIT_S, parse_json_lines, truth
from tests.integration.conftest import TargetPython
from tests.integration.test_export import otlp_env, span_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

TRACED_APP = TARGETS / "traced_app.py"


def blocks_in(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.span.name == "eventloop.block"]


def requests_in(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.span.name.startswith("request ")]


def task_of(block: dict[str, Any]) -> tuple[str | None, str | None]:
    return block["task"], block["coroutine"]


def hex_ids(true_block: dict[str, Any]) -> tuple[str | None, str | None]:
    if true_block["trace_id"] is None:
        return None, None
    return f"{true_block['trace_id']:032x}", f"{true_block['span_id']:016x}"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_each_block_span_is_a_child_of_the_request_span_active_during_it(
    tmp_path: Path, loop: str
) -> None:
    # GIVEN an app whose two concurrent requests block the loop in turn, in their
    # own spans, then one block outside any span and one in an unsampled request
    out = tmp_path / "truth.jsonl"
    extra = ["--uvloop"] if loop == "uvloop" else []
    with OtlpReceiver() as receiver:
        env = otlp_env(receiver.http_endpoint, "http/protobuf")
        result = subprocess.run(
            [*SIDECAR, "--json", "-q", "-t", "50", "--", sys.executable, str(TRACED_APP),
             "--out", str(out), *extra],
            capture_output=True, text=True, env=env, check=False, timeout=WAIT_S,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        expected = truth(out)
        sampled = [b for b in expected if b["sampled"] is not False]
        # the app exports its own request spans to the same receiver
        spans = receiver.wait_for_spans(
            lambda got: len(blocks_in(got)) >= len(sampled) and len(requests_in(got)) >= 2
        )
    assert [b["scenario"] for b in expected] == [
        "request-a", "request-b", "request-a", "request-b", "no-span", "unsampled",
    ]  # fmt: skip
    records = [r for r in parse_json_lines(result.stdout) if r["type"] == "block"]
    for true_block in expected:
        trace_id, span_id = hex_ids(true_block)
        # THEN the sidecar names the right request for each block
        (record,) = [
            r
            for r in records
            if r["start_monotonic_ns"] < true_block["end_ns"]
            and r["end_monotonic_ns"] > true_block["start_ns"]
        ]
        assert (record["trace_id"], record["parent_span_id"]) == (trace_id, span_id), true_block
        # AND the asyncio task that was running
        assert task_of(record) == task_of(true_block)
        if true_block["sampled"] is False:
            continue
        # AND its span sits in that request's trace, as a child of the request's span
        span = span_for(spans, true_block).span
        assert attributes(span.attributes)["blocksnoop.task.name"] == true_block["task"]
        assert attributes(span.attributes)["blocksnoop.task.coroutine"] == true_block["coroutine"]
        if trace_id is None:
            assert not span.parent_span_id
        else:
            assert (span.trace_id.hex(), span.parent_span_id.hex()) == (trace_id, span_id)
            # the parent is the app's own request span, as the app exported it
            assert span_id in {r.span.span_id.hex() for r in requests_in(spans)}
    # AND the block in the unsampled request follows the app's decision: no span
    (unsampled,) = [b for b in expected if b["sampled"] is False]
    assert not [
        s
        for s in blocks_in(spans)
        if s.span.start_time_unix_nano < unsampled["end_unix_ns"]
        and s.span.end_time_unix_nano > unsampled["start_unix_ns"]
    ]


def test_export_unsampled_overrides_the_apps_sampling_decision(tmp_path: Path) -> None:
    out = tmp_path / "truth.jsonl"
    with OtlpReceiver() as receiver:
        env = otlp_env(receiver.http_endpoint, "http/protobuf")
        result = subprocess.run(
            [*SIDECAR, "-q", "-t", "50", "--export-unsampled", "--", sys.executable,
             str(TRACED_APP), "--out", str(out)],
            capture_output=True, text=True, env=env, check=False, timeout=WAIT_S,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        (unsampled,) = [b for b in truth(out) if b["scenario"] == "unsampled"]
        spans = receiver.wait_for_spans(
            lambda got: any(
                s.span.start_time_unix_nano < unsampled["end_unix_ns"]
                and s.span.end_time_unix_nano > unsampled["start_unix_ns"]
                for s in got
            )
        )
    span = span_for(spans, unsampled).span
    assert span.trace_id.hex() == f"{unsampled['trace_id']:032x}"


def test_blocks_name_their_request_on_every_python(
    otel_python: TargetPython, tmp_path: Path
) -> None:
    # GIVEN the same app on this interpreter (3.9-3.13, Debian's own 3.11, and
    # Debian sid's 3.14 and 3.15 in their own root)
    out = tmp_path / "truth.jsonl"
    app = ["env", "-u", "OTEL_EXPORTER_OTLP_ENDPOINT", otel_python.python, str(TRACED_APP),
           "--out", str(out)]  # fmt: skip
    result = subprocess.run(
        [*SIDECAR, "--json", "-q", "-t", "50", "--",
         *otel_python.command(app)],
        capture_output=True, text=True, check=False, timeout=WAIT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [r for r in parse_json_lines(result.stdout) if r["type"] == "block"]
    expected = truth(out)
    assert len(expected) == 6
    # THEN every block names the request it happened in, or none
    for true_block in expected:
        (record,) = [
            r
            for r in records
            if r["start_monotonic_ns"] < true_block["end_ns"]
            and r["end_monotonic_ns"] > true_block["start_ns"]
        ]
        assert (record["trace_id"], record["parent_span_id"]) == hex_ids(true_block), true_block
        assert task_of(record) == task_of(true_block)


def test_blocks_name_their_request_on_a_python_whose_name_says_no_version(
    nameless_python: TargetPython, tmp_path: Path
) -> None:
    # GIVEN the same app on an interpreter copied to bin/python3 (no libpython mapped):
    # its version is only in the file (Py_Version on 3.11+, its cache tag on 3.9/3.10)
    python = nameless_python
    version = subprocess.run(
        python.command([python.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]),
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    out = tmp_path / "truth.jsonl"
    app = ["env", "-u", "OTEL_EXPORTER_OTLP_ENDPOINT", python.python, str(TRACED_APP),
           "--out", str(out)]  # fmt: skip
    with OtlpReceiver() as receiver:
        result = subprocess.run(
            [*SIDECAR, "--json", "-q", "-t", "50", "--", *python.command(app)],
            capture_output=True, text=True, check=False, timeout=WAIT_S,
            env=otlp_env(receiver.http_endpoint, "http/protobuf"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        expected = truth(out)
        sampled = [b for b in expected if b["sampled"] is not False]
        spans = receiver.wait_for_spans(lambda got: len(blocks_in(got)) >= len(sampled))
    assert "not a CPython interpreter" not in result.stderr
    records = [r for r in parse_json_lines(result.stdout) if r["type"] == "block"]
    assert len(expected) == 6
    for true_block in expected:
        (record,) = [
            r
            for r in records
            if r["start_monotonic_ns"] < true_block["end_ns"]
            and r["end_monotonic_ns"] > true_block["start_ns"]
        ]
        # THEN every block names the request it happened in, or none, and its task
        assert (record["trace_id"], record["parent_span_id"]) == hex_ids(true_block), true_block
        assert task_of(record) == task_of(true_block)
        # AND its stack is the app's: the blocking call
        assert record["call_site"]["function"].endswith("sleep_in_context"), record["call_site"]
    # AND its spans say which Python the app runs, as the file says it
    assert {s.resource.get("process.runtime.version") for s in blocks_in(spans)} == {version}
