"""Who waited: a block links to the requests whose callbacks were ready while it held the loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import TARGETS
from harness.otlp import OtlpReceiver, attributes
from tests.helpers import SIDECAR, WAIT_S, parse_json_lines, truth
from tests.integration.conftest import TargetPython
from tests.integration.test_export import otlp_env, span_for
from tests.integration.test_trace_link import blocks_in, hex_ids

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

WAITING_APP = TARGETS / "waiting_app.py"
WAITERS = 3


def run(command: list[str], out: Path, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The sidecar's block records for ``command``, launched with a 50 ms threshold."""
    result = subprocess.run(
        [*SIDECAR, "--json", "-q", "-t", "50", "--", *command, "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=WAIT_S, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [r for r in parse_json_lines(result.stdout) if r["type"] == "block"]


def record_of(records: list[dict[str, Any]], true_block: dict[str, Any]) -> dict[str, Any]:
    (record,) = [
        r
        for r in records
        if r["start_monotonic_ns"] < true_block["end_ns"]
        and r["end_monotonic_ns"] > true_block["start_ns"]
    ]
    return record


def delayed_ids(true_block: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"trace_id": f"{trace_id:032x}", "span_id": f"{span_id:016x}"}
        for trace_id, span_id in true_block["delayed"]
    ]


def test_a_block_names_every_request_waiting_ready_on_every_python(
    otel_python: TargetPython, tmp_path: Path
) -> None:
    # GIVEN three requests that always have their next step ready, and a fourth
    # that blocks the loop in its own span; then one that blocks with nothing ready
    out = tmp_path / "truth.jsonl"
    app = ["env", "-u", "OTEL_EXPORTER_OTLP_ENDPOINT", otel_python.python, str(WAITING_APP),
           "--waiters", str(WAITERS)]  # fmt: skip
    records = run(otel_python.command(app), out)
    blocker, alone = truth(out)
    assert len(blocker["delayed"]) == WAITERS
    # THEN the block names its own request as parent, and the three that waited, in queue order
    record = record_of(records, blocker)
    assert (record["trace_id"], record["parent_span_id"]) == hex_ids(blocker)
    assert record["delayed"] == delayed_ids(blocker)
    assert record["delayed_tasks"] == WAITERS
    # AND the block with nothing else ready says so: none waited
    record = record_of(records, alone)
    assert (record["delayed_tasks"], record["delayed"]) == (0, [])


def test_the_block_span_links_to_the_spans_of_the_requests_it_delayed(tmp_path: Path) -> None:
    out = tmp_path / "truth.jsonl"
    with OtlpReceiver() as receiver:
        env = otlp_env(receiver.http_endpoint, "http/protobuf")
        run(
            ["env", "-u", "OTEL_EXPORTER_OTLP_ENDPOINT", sys.executable, str(WAITING_APP)], out, env
        )
        blocker, alone = truth(out)
        spans = receiver.wait_for_spans(lambda got: len(blocks_in(got)) >= 2)
    span = span_for(spans, blocker).span
    assert [(link.trace_id.hex(), link.span_id.hex()) for link in span.links] == [
        (ids["trace_id"], ids["span_id"]) for ids in delayed_ids(blocker)
    ]
    found = attributes(span.attributes)
    assert (found["blocksnoop.delayed.tasks"], found["blocksnoop.delayed.requests"]) == (3, 3)
    assert not span_for(spans, alone).span.links


def test_uvloop_whose_queue_is_not_readable_says_nothing_of_who_waited(tmp_path: Path) -> None:
    # GIVEN the same app on uvloop, whose ready queue is C structures of its own
    out = tmp_path / "truth.jsonl"
    records = run(["env", "-u", "OTEL_EXPORTER_OTLP_ENDPOINT", sys.executable, str(WAITING_APP),
                   "--uvloop"], out)  # fmt: skip
    blocker, _ = truth(out)
    record = record_of(records, blocker)
    # THEN the block still names its request, and leaves who waited out rather than guess
    assert (record["trace_id"], record["parent_span_id"]) == hex_ids(blocker)
    assert (record["delayed_tasks"], record["delayed"]) == (None, [])
