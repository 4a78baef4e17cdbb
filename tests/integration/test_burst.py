"""Several requests blocking back to back in ONE loop iteration: one block span per request.

The aiohttp app (harness/targets/web_app.py ``--burst N``) releases N
concurrent requests with one asyncio.Event: their handlers all wake in the
same loop iteration and each blocks in turn (time.sleep or a CPU spin), so
the iteration is N blocks back to back, each in its own request's SERVER
span. The app counts its loop's iterations, which proves the N blocks ran in
one. The sidecar must cut that iteration into N segments, each its own span
under its own request's server span, with the request's own start and end,
all carrying the iteration's id and its number of segments; and a segment
it cannot place has no parent, never a wrong one.

Each interpreter runs its bursts once per loop; the tests look at one burst.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.otlp import OtlpReceiver, ReceivedSpan, attributes
from tests.helpers import SIDECAR, WAIT_S, parse_json_lines, truth
from tests.integration.conftest import TargetPython
from tests.integration.test_export import otlp_env
from tests.integration.test_trace_link import blocks_in, hex_ids
from tests.integration.test_web_app import WEB_APP, servers_in

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

BURSTS = {"asyncio": (2, 4, 8), "uvloop": (4,)}
"""The bursts (N requests each) one run of the app makes, per loop."""
CASES = [pytest.param((loop, n), id=f"{loop}-{n}") for loop, sizes in BURSTS.items() for n in sizes]
THRESHOLD_MS = 50
BLOCK_MS = 120
"""Request i blocks 1, 1.5 or 2 times this: each read several times, no two neighbours alike."""
MS = 1_000_000
BACK_TO_BACK_NS = 10 * MS
"""Between one request's block and the next: the handler's own bookkeeping and a task switch
(0.15-0.3 ms seen, 0.5 ms under load; a wait for a CPU in between adds to it, 1.3 ms seen
on a loaded machine, 5.4 ms beside two busy processes). The app's own iteration counter is
what shows they share one."""


def waited_ns(record: dict[str, Any]) -> int:
    """What a block may trail the app's own note by: run-queue wait and sibling threads' CPU."""
    waited_ms = float(record.get("runq_ms") or 0.0) + float(record.get("sibling_cpu_ms") or 0.0)
    return round(waited_ms * MS)


def span_waited_ns(span: ReceivedSpan) -> int:
    found = attributes(span.span.attributes)
    waited_s = float(found.get("blocksnoop.cpu.runq_time", 0.0)) + float(
        found.get("blocksnoop.cpu.sibling_time", 0.0)
    )
    return round(waited_s * 1e9)


def overlap_ns(start: int, end: int, true_start: int, true_end: int) -> int:
    return min(end, true_end) - max(start, true_start)


@dataclass(frozen=True)
class Burst:
    """One burst: the app's truth about its N blocks, and what the sidecar said about them."""

    size: int
    truth: list[dict[str, Any]]
    records: list[dict[str, Any]]  # the sidecar's block records overlapping the burst
    spans: list[ReceivedSpan]  # the block spans received overlapping the burst
    servers: dict[str, ReceivedSpan]  # the app's SERVER spans, by span id (hex)

    def record_for(self, true_block: dict[str, Any]) -> dict[str, Any]:
        """The block record sharing the most time with this request's block."""
        found = max(
            self.records,
            key=lambda r: overlap_ns(
                r["start_monotonic_ns"],
                r["end_monotonic_ns"],
                true_block["start_ns"],
                true_block["end_ns"],
            ),
        )
        assert (
            overlap_ns(
                found["start_monotonic_ns"],
                found["end_monotonic_ns"],
                true_block["start_ns"],
                true_block["end_ns"],
            )
            > 0
        ), f"no block record for {true_block}"
        return found

    def span_for(self, true_block: dict[str, Any]) -> ReceivedSpan:
        """The block span sharing the most time with this request's block."""
        found = max(
            self.spans,
            key=lambda s: overlap_ns(
                s.span.start_time_unix_nano,
                s.span.end_time_unix_nano,
                true_block["start_unix_ns"],
                true_block["end_unix_ns"],
            ),
        )
        assert (
            overlap_ns(
                found.span.start_time_unix_nano,
                found.span.end_time_unix_nano,
                true_block["start_unix_ns"],
                true_block["end_unix_ns"],
            )
            > 0
        ), f"no block span for {true_block}"
        return found

    def gaps(self, true_block: dict[str, Any]) -> tuple[int, int]:
        """The app's own time between this request's block and its neighbours' (before, after).

        The loop switches from one request's context to the next somewhere in
        that time (the handler's bookkeeping and response, then the task
        switch), so the boundary the sidecar reports may be anywhere in it.
        """
        index = self.truth.index(true_block)
        before = true_block["start_ns"] - self.truth[index - 1]["end_ns"] if index else 0
        after = (
            self.truth[index + 1]["start_ns"] - true_block["end_ns"]
            if index + 1 < len(self.truth)
            else 0
        )
        return max(0, before), max(0, after)

    def others(self, ids: tuple[str | None, str | None]) -> list[dict[str, Any]]:
        """The blocks of the requests other than the one whose server span has ``ids``."""
        return [b for b in self.truth if hex_ids(b) != ids]


@dataclass(frozen=True)
class BurstRun:
    """One run of the app's bursts under the sidecar, with export to the in-test receiver."""

    truth: list[dict[str, Any]]
    records: list[dict[str, Any]]
    spans: list[ReceivedSpan]

    def burst(self, size: int) -> Burst:
        true_blocks = sorted(
            (b for b in self.truth if b["scenario"] == f"burst-{size}"), key=lambda b: b["start_ns"]
        )
        assert true_blocks, f"the app made no burst of {size}"
        start, end = true_blocks[0]["start_ns"], true_blocks[-1]["end_ns"]
        start_unix, end_unix = true_blocks[0]["start_unix_ns"], true_blocks[-1]["end_unix_ns"]
        return Burst(
            size=size,
            truth=true_blocks,
            records=[
                r
                for r in self.records
                if r["start_monotonic_ns"] < end and r["end_monotonic_ns"] > start
            ],
            spans=[
                s
                for s in blocks_in(self.spans)
                if s.span.start_time_unix_nano < end_unix and s.span.end_time_unix_nano > start_unix
            ],
            servers={s.span.span_id.hex(): s for s in servers_in(self.spans)},
        )


def run_bursts(python: TargetPython, loop: str, out: Path) -> BurstRun:
    """The app's bursts for ``loop``, watched by the sidecar from the app's start."""
    sizes = BURSTS[loop]
    extra = ["--uvloop"] if loop == "uvloop" else []
    with OtlpReceiver() as receiver:
        env = otlp_env(receiver.http_endpoint, "http/protobuf")
        result = subprocess.run(
            [*SIDECAR, "--json", "-q", "-t", str(THRESHOLD_MS), "--",
             *python.run(WEB_APP, "--out", str(out), "--ms", str(BLOCK_MS), *extra,
                         *(arg for size in sizes for arg in ("--burst", str(size))))],
            capture_output=True, text=True, env=env, check=False, timeout=WAIT_S,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        records = [r for r in parse_json_lines(result.stdout) if r["type"] == "block"]
        # every request's server span (the app flushed them at exit), and a span
        # for each block record (all requests are sampled)
        spans = receiver.wait_for_spans(
            lambda got: len(servers_in(got)) >= sum(sizes) and len(blocks_in(got)) >= len(records)
        )
    return BurstRun(truth(out), records, spans)


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, str], BurstRun]:
    """One run per interpreter and loop, shared by the tests of its bursts."""
    return {}


@pytest.fixture(params=CASES)
def burst(
    request: pytest.FixtureRequest,
    web_python: TargetPython,
    runs: dict[tuple[str, str], BurstRun],
    tmp_path_factory: pytest.TempPathFactory,
) -> Burst:
    # GIVEN N concurrent requests on this interpreter and loop, whose handlers
    # block back to back in one iteration, watched by the sidecar from the app's start
    loop, size = request.param
    if (web_python.name, loop) not in runs:
        out = tmp_path_factory.mktemp(f"burst-{loop}") / "truth.jsonl"
        runs[web_python.name, loop] = run_bursts(web_python, loop, out)
    return runs[web_python.name, loop].burst(size)


def test_the_app_blocks_back_to_back_in_one_loop_iteration(burst: Burst) -> None:
    # THEN each of the N requests blocked once, on the loop's thread, in its own server span
    assert [b["request"] for b in sorted(burst.truth, key=lambda b: b["request"])] == list(
        range(burst.size)
    )
    assert len({b["tid"] for b in burst.truth}) == 1
    parents = {hex_ids(b) for b in burst.truth}
    assert len(parents) == burst.size
    for trace_id, span_id in parents:
        assert span_id in burst.servers, "the app exported no server span it blocked in"
        assert burst.servers[span_id].span.trace_id.hex() == trace_id
    assert {b["kind"] for b in burst.truth} == {"sleep", "cpu"}
    # AND all N in the same loop iteration, as the app counted them
    assert len({b["iteration"] for b in burst.truth}) == 1
    # AND one right after the other
    for before, after in zip(burst.truth, burst.truth[1:], strict=False):
        assert 0 < after["start_ns"] - before["end_ns"] < BACK_TO_BACK_NS, (before, after)


def test_each_request_in_the_iteration_gets_its_own_block_under_its_server_span(
    burst: Burst,
) -> None:
    for true_block in burst.truth:
        trace_id, span_id = hex_ids(true_block)
        assert span_id is not None
        # THEN the sidecar reports this request's block as its own, in its request
        record = burst.record_for(true_block)
        assert (record["trace_id"], record["parent_span_id"]) == (trace_id, span_id), true_block
        # AND with the request's own start and end: a CPU wait may delay either, and
        # the switch to a neighbour's context lies somewhere between the two blocks
        before, after = burst.gaps(true_block)
        slack = MS + waited_ns(record)
        assert abs(record["start_monotonic_ns"] - true_block["start_ns"]) < slack + before, (
            true_block,
            before,
        )
        assert abs(record["end_monotonic_ns"] - true_block["end_ns"]) < slack + after, (
            true_block,
            after,
        )
        # AND the exported span is a child of the request's server span, timed the same
        block = burst.span_for(true_block)
        server = burst.servers[span_id].span
        assert (block.span.trace_id, block.span.parent_span_id) == (
            server.trace_id,
            server.span_id,
        ), true_block
        slack = MS + span_waited_ns(block)
        assert abs(block.span.start_time_unix_nano - true_block["start_unix_ns"]) < slack + before
        assert abs(block.span.end_time_unix_nano - true_block["end_unix_ns"]) < slack + after


def test_the_segments_of_the_iteration_share_its_id_and_count(burst: Burst) -> None:
    # THEN one record and one span per request, all of the one iteration
    reported = [(r["duration_ms"], r["iteration"]) for r in burst.records]
    assert len(burst.records) == burst.size, f"{burst.size} requests, reported {reported}"
    assert len(burst.spans) == burst.size
    iterations = {r["iteration"]["id"] for r in burst.records}
    assert len(iterations) == 1, iterations
    assert {r["iteration"]["segments"] for r in burst.records} == {burst.size}
    assert sorted(r["iteration"]["segment"] for r in burst.records) == list(range(burst.size))
    found = [attributes(s.span.attributes) for s in burst.spans]
    assert {a["blocksnoop.iteration.id"] for a in found} == iterations
    assert {a["blocksnoop.iteration.segments"] for a in found} == {burst.size}
    assert sorted(a["blocksnoop.iteration.segment"] for a in found) == list(range(burst.size))
    # AND the iteration lasts from the first request's block to the last one's
    (iteration_ms,) = {r["iteration"]["duration_ms"] for r in burst.records}
    true_ms = (burst.truth[-1]["end_ns"] - burst.truth[0]["start_ns"]) / MS
    slack_ms = 1 + max(waited_ns(r) for r in burst.records) / MS
    assert abs(iteration_ms - true_ms) < slack_ms
    # AND the segments are in the requests' order
    by_start = sorted(burst.records, key=lambda r: r["start_monotonic_ns"])
    assert [r["iteration"]["segment"] for r in by_start] == list(range(burst.size))


def test_no_block_in_the_iteration_has_a_wrong_parent(burst: Burst) -> None:
    # THEN a block the sidecar gives a parent covers no other request's block (beyond
    # the timing slack): none is allowed, another request's trace never
    wrong = []
    for record in burst.records:
        if record["parent_span_id"] is None:
            continue
        ids = (record["trace_id"], record["parent_span_id"])
        slack = MS + waited_ns(record)
        wrong += [
            (f"{record['duration_ms']} ms record", ids[1], f"covers request {b['request']}")
            for b in burst.others(ids)
            if overlap_ns(record["start_monotonic_ns"], record["end_monotonic_ns"],
                          b["start_ns"], b["end_ns"]) > slack
        ]  # fmt: skip
    for span in burst.spans:
        if not span.span.parent_span_id:
            continue
        ids = (span.span.trace_id.hex(), span.span.parent_span_id.hex())
        slack = MS + span_waited_ns(span)
        start, end = span.span.start_time_unix_nano, span.span.end_time_unix_nano
        wrong += [
            (f"{(end - start) / MS:.1f} ms span", ids[1], f"covers request {b['request']}")
            for b in burst.others(ids)
            if overlap_ns(start, end, b["start_unix_ns"], b["end_unix_ns"]) > slack
        ]
    assert not wrong, f"parented on another request: {wrong}"


def test_no_block_in_the_iteration_names_a_request_that_did_not_wait_on_it(burst: Burst) -> None:
    # THEN the requests a share of the iteration says it delayed are other requests of
    # the burst (their steps were ready while it ran), never its own nor one not there
    requests = {hex_ids(b) for b in burst.truth}
    for record in burst.records:
        own = (record["trace_id"], record["parent_span_id"])
        named = {(d["trace_id"], d["span_id"]) for d in record["delayed"]}
        assert own not in named, record
        assert named <= requests, (named - requests, record)
