"""Block spans inside the traces of a real instrumented web app: aiohttp + its OpenTelemetry.

The app (harness/targets/web_app.py) runs on each interpreter 3.9-3.15 (and
Debian's), on asyncio and on uvloop, and exports its own SERVER spans to the
same receiver as the sidecar, so each block span is checked against the span
the instrumentation really opened, as the backend would show it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from harness import TARGETS
from harness.otlp import OtlpReceiver, ReceivedSpan, attributes
from tests.helpers import SIDECAR, WAIT_S, matching_block, parse_json_lines, truth
from tests.integration.conftest import TargetPython
from tests.integration.test_export import otlp_env, span_for
from tests.integration.test_trace_link import blocks_in, hex_ids, task_of

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

WEB_APP = TARGETS / "web_app.py"
SCENARIOS = ["request-a", "request-b", "request-a", "request-b", "no-request", "unsampled"]
CALLER_SPAN_ID = "00000000000000b1"
"""The span id in the sampled ``traceparent`` request B comes with (web_app.SAMPLED_PARENT)."""


def servers_in(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.span.kind == Span.SpanKind.SPAN_KIND_SERVER]


@dataclass(frozen=True)
class WebRun:
    """One run of the web app under the sidecar: the app's truth and what both exported."""

    truth: list[dict[str, Any]]
    records: list[dict[str, Any]]
    spans: list[ReceivedSpan]

    def blocks_of(self, scenario: str) -> list[dict[str, Any]]:
        return [b for b in self.truth if b["scenario"] == scenario]

    def server_span(self, span_id: str) -> Span:
        """The SERVER span the app exported with this id."""
        found = [s.span for s in servers_in(self.spans) if s.span.span_id.hex() == span_id]
        assert len(found) == 1, f"the app exported no server span {span_id}"
        return found[0]


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def web_run(
    web_python: TargetPython,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> WebRun:
    # GIVEN the aiohttp app on this interpreter and loop, exporting its spans
    # to the receiver the sidecar exports to, watched by the sidecar from its start;
    # blocks of 2.4 times the threshold, read about four times each even when the
    # machine is busy (a block with no read has no parent, and fails these tests)
    out = tmp_path_factory.mktemp("web") / "truth.jsonl"
    loop = ["--uvloop"] if request.param == "uvloop" else []
    with OtlpReceiver() as receiver:
        env = otlp_env(receiver.http_endpoint, "http/protobuf")
        result = subprocess.run(
            [*SIDECAR, "--json", "-q", "-t", "50", "--",
             *web_python.run(WEB_APP, "--out", str(out), "--ms", "120", *loop)],
            capture_output=True, text=True, env=env, check=False, timeout=WAIT_S,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        expected = truth(out)
        assert [b["scenario"] for b in expected] == SCENARIOS
        sampled = [b for b in expected if b["sampled"] is not False]
        spans = receiver.wait_for_spans(
            lambda got: len(blocks_in(got)) >= len(sampled) and len(servers_in(got)) >= 2
        )
    records = [r for r in parse_json_lines(result.stdout) if r["type"] == "block"]
    return WebRun(expected, records, spans)


def test_each_block_in_a_request_is_a_child_of_the_server_span_the_instrumentation_opened(
    web_run: WebRun,
) -> None:
    for true_block in web_run.blocks_of("request-a") + web_run.blocks_of("request-b"):
        trace_id, span_id = hex_ids(true_block)
        assert span_id is not None
        # THEN the sidecar names the span the handler saw as current
        record = matching_block(web_run.records, true_block)
        assert (record["trace_id"], record["parent_span_id"]) == (trace_id, span_id), true_block
        # AND that span is the SERVER span the app exported, in the same trace
        server = web_run.server_span(span_id)
        assert server.trace_id.hex() == trace_id
        # AND the exported block span is its child
        block = span_for(web_run.spans, true_block).span
        assert (block.trace_id, block.parent_span_id) == (server.trace_id, server.span_id)


def test_a_block_is_parented_on_the_server_span_not_on_the_caller_it_continues(
    web_run: WebRun,
) -> None:
    # GIVEN request B came with a sampled traceparent, so its server span continues
    # the caller's trace, as a child of the caller's span
    (span_id,) = {hex_ids(b)[1] for b in web_run.blocks_of("request-b")}
    assert span_id is not None
    server = web_run.server_span(span_id)
    assert server.parent_span_id.hex() == CALLER_SPAN_ID
    # THEN B's blocks are children of the server span, in the caller's trace
    for true_block in web_run.blocks_of("request-b"):
        block = span_for(web_run.spans, true_block).span
        assert block.parent_span_id.hex() == span_id != CALLER_SPAN_ID
        assert block.trace_id == server.trace_id


def test_two_concurrent_requests_blocking_in_turn_each_get_their_own_blocks(
    web_run: WebRun,
) -> None:
    # GIVEN A and B were both in flight, blocking the loop alternately (A, B, A, B)
    turns = [b for b in web_run.truth if b["scenario"].startswith("request-")]
    parents_a = {hex_ids(b) for b in web_run.blocks_of("request-a")}
    parents_b = {hex_ids(b) for b in web_run.blocks_of("request-b")}
    assert len(parents_a) == len(parents_b) == 1
    assert parents_a != parents_b
    # THEN the exported block spans, in time order, switch parent at every turn
    exported = [span_for(web_run.spans, b).span for b in turns]
    assert [(s.trace_id.hex(), s.parent_span_id.hex()) for s in exported] == [
        hex_ids(b) for b in turns
    ]


def test_each_block_names_the_asyncio_task_it_ran_in(web_run: WebRun) -> None:
    for true_block in web_run.truth:
        # THEN the sidecar names the task asyncio.current_task() gave in the handler
        # (aiohttp's Task-N running RequestHandler._handle_request), outside it too
        assert task_of(matching_block(web_run.records, true_block)) == task_of(true_block)
        if true_block["sampled"] is False:
            continue
        # AND so does the exported span
        found = attributes(span_for(web_run.spans, true_block).span.attributes)
        assert (found["blocksnoop.task.name"], found["blocksnoop.task.coroutine"]) == task_of(
            true_block
        )


def test_a_block_outside_any_request_starts_its_own_trace(web_run: WebRun) -> None:
    (true_block,) = web_run.blocks_of("no-request")
    record = matching_block(web_run.records, true_block)
    assert (record["trace_id"], record["parent_span_id"]) == (None, None)
    block = span_for(web_run.spans, true_block).span
    assert not block.parent_span_id
    assert block.trace_id not in {s.span.trace_id for s in web_run.spans if s.span != block}


def test_a_block_in_a_request_the_app_did_not_sample_is_not_exported(web_run: WebRun) -> None:
    # GIVEN a request whose traceparent said "not sampled": the app's ParentBased
    # sampler did not sample its server span either
    (unsampled,) = web_run.blocks_of("unsampled")
    trace_id, span_id = hex_ids(unsampled)
    assert unsampled["sampled"] is False
    assert trace_id not in {s.span.trace_id.hex() for s in web_run.spans}
    # THEN the sidecar saw the block in that request...
    record = matching_block(web_run.records, unsampled)
    assert (record["trace_id"], record["parent_span_id"]) == (trace_id, span_id)
    # ...and followed the app's decision: no span for it
    assert not [
        s
        for s in blocks_in(web_run.spans)
        if s.span.start_time_unix_nano < unsampled["end_unix_ns"]
        and s.span.end_time_unix_nano > unsampled["start_unix_ns"]
    ]
