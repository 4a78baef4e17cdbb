"""OTLP export against real receivers: the in-test one, and rotel in front of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.otlp import OtlpReceiver, ReceivedSpan, attributes, free_port
from harness.rotel import Rotel
from otel_blocksnoop.export.otlp import HTTP, settings_from, wrong_protocol
from tests.helpers import (
    BLOCKER,
    SIDECAR,
    WAIT_S,
    PipeLines,
    Target,
    parse_json_lines,
    truth,
)
from tests.integration.test_stacks import CALL_SITES

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

APP_SERVICE = "blocker-app"
MS = 1_000_000


def otlp_env(endpoint: str, protocol: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        **extra,
    }


def endpoint_of(receiver: OtlpReceiver | Rotel, protocol: str) -> str:
    """A plaintext endpoint: for gRPC the ``http://`` scheme is what says "no TLS"."""
    return f"http://{receiver.grpc_endpoint}" if protocol == "grpc" else receiver.http_endpoint


def app(*args: str) -> list[str]:
    """The target app, named by its own OTEL_SERVICE_NAME (the sidecar's env has none)."""
    return ["env", f"OTEL_SERVICE_NAME={APP_SERVICE}", sys.executable, str(BLOCKER), *args]


class Running:
    """The sidecar in the background, its JSON lines read as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [*SIDECAR, "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.lines = PipeLines(self.process.stdout)
        self.status = PipeLines(self.process.stderr)

    def wait_attached(self) -> None:
        """Until an attach-mode sidecar says it is watching."""
        self.status.wait_for("Ctrl-C to stop")

    def wait_for(self, record_type: str) -> dict[str, Any]:
        line = self.lines.wait_for(f'"type":"{record_type}"')
        record: dict[str, Any] = json.loads(line)
        return record

    def finish(self) -> tuple[int, list[dict[str, Any]], str]:
        code = self.process.wait(timeout=WAIT_S)
        rest = self.lines.rest()
        assert self.process.stderr is not None
        return (
            code,
            parse_json_lines("\n".join([*self.lines.seen, rest])),
            self.process.stderr.read(),
        )


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def span_for(spans: list[ReceivedSpan], true_block: dict[str, Any]) -> ReceivedSpan:
    found = [
        s
        for s in spans
        if s.span.name == "eventloop.block"
        and attributes(s.span.attributes)["thread.id"] == true_block["tid"]
        and s.span.start_time_unix_nano < true_block["end_unix_ns"]
        and s.span.end_time_unix_nano > true_block["start_unix_ns"]
    ]
    assert len(found) == 1, f"expected one span for {true_block}, got {len(found)}"
    return found[0]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_each_block_is_a_span_with_the_apps_resource_true_times_and_its_code(
    tmp_path: Path, protocol: str
) -> None:
    # GIVEN a collector, and an app named by its own OTEL_SERVICE_NAME that blocks seven ways
    out = tmp_path / "truth.jsonl"
    with OtlpReceiver() as receiver:
        env = otlp_env(endpoint_of(receiver, protocol), protocol)
        # WHEN the sidecar watches it from its start
        result = subprocess.run(
            [*SIDECAR, "-q", "-t", "50", "--", *app("all", "--delay", "1", "--out", str(out))],
            capture_output=True, text=True, env=env, check=False, timeout=WAIT_S * 2,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        expected = truth(out)
        spans = receiver.wait_for_spans(len(expected))
        metrics = receiver.wait_for_metrics(
            lambda got: any(m.metric.name == "blocksnoop.eventloop.block.duration" for m in got)
        )
    # THEN the collector got one span per block, named and timed as the contract says
    assert len(spans) == len(expected) == len(CALL_SITES)
    for true_block in expected:
        received = span_for(spans, true_block)
        span, span_attributes = received.span, attributes(received.span.attributes)
        assert span.name == "eventloop.block"
        assert span.kind == span.SPAN_KIND_INTERNAL
        assert not span.parent_span_id
        # The app notes its end just before the loop goes back to epoll: in between
        # the thread may wait for a CPU, or for the GIL while another thread of the
        # app runs; the span reports both (run-queue time, the siblings' CPU time).
        waited = round(
            (
                span_attributes.get("blocksnoop.cpu.runq_time", 0.0)
                + span_attributes.get("blocksnoop.cpu.sibling_time", 0.0)
            )
            * 1e9
        )
        assert abs(span.start_time_unix_nano - true_block["start_unix_ns"]) < MS
        assert abs(span.end_time_unix_nano - true_block["end_unix_ns"]) < MS + waited
        function, snippet = CALL_SITES[true_block["scenario"]]
        assert span_attributes["code.function.name"].endswith(function)
        assert snippet in span_attributes["code.stacktrace"]
        assert span_attributes["code.file.path"] == str(BLOCKER)
        assert isinstance(span_attributes["code.line.number"], int)
        assert span_attributes["process.pid"] == received.resource["process.pid"]
        assert span_attributes["blocksnoop.cause"] in {"cpu", "syscall", "gil"}
        assert received.resource["service.name"] == APP_SERVICE
        assert received.scope == "otel-blocksnoop"
    # AND the durations went to the histogram, in seconds
    histograms = [m for m in metrics if m.metric.name == "blocksnoop.eventloop.block.duration"]
    assert all(m.metric.unit == "s" for m in histograms)
    assert all(m.resource["service.name"] == APP_SERVICE for m in histograms)
    last_points = histograms[-1].metric.histogram.data_points
    assert sum(point.count for point in last_points) == len(expected)
    assert 0.05 < sum(point.sum for point in last_points) / len(expected) < 1.0


def test_a_hang_reaches_the_collector_while_it_lasts_then_as_a_span_with_the_same_ids(
    tmp_path: Path, running: list[Running]
) -> None:
    # GIVEN an app that deadlocks for 3 s, watched with export on
    out = tmp_path / "truth.jsonl"
    with OtlpReceiver() as receiver:
        env = otlp_env(receiver.http_endpoint, "http/protobuf")
        run = Running(["-t", "100", "--", *app("deadlock", "--ms", "3000", "--out", str(out))], env)
        running.append(run)
        # WHEN it is still stuck
        (hang_log,) = receiver.wait_for_logs(1)
        still_stuck = not out.exists() or not truth(out)
        code, _, stderr = run.finish()
        assert code == 0, stderr
        (block_span,) = receiver.wait_for_spans(1)
    # THEN a log record about it arrived before it ended, tied to its span
    assert still_stuck
    record = hang_log.record
    assert record.event_name == "eventloop.block.in_progress"
    log_attributes = attributes(record.attributes)
    assert log_attributes["code.function.name"] == "deadlock"
    assert log_attributes["blocksnoop.syscall"] == "futex"
    assert 0.1 < log_attributes["blocksnoop.duration"] < 3.0
    assert (record.trace_id, record.span_id) == (
        block_span.span.trace_id,
        block_span.span.span_id,
    )
    assert hang_log.resource["service.name"] == APP_SERVICE


def test_spans_go_through_a_real_collector(tmp_path: Path) -> None:
    # GIVEN rotel, a real OpenTelemetry collector, forwarding to the receiver
    out = tmp_path / "truth.jsonl"
    with OtlpReceiver() as receiver, Rotel(receiver) as collector:
        env = otlp_env(collector.http_endpoint, "http/protobuf")
        result = subprocess.run(
            [*SIDECAR, "-q", "-t", "50", "--", *app("sleep", "--out", str(out))],
            capture_output=True, text=True, env=env, check=False, timeout=WAIT_S,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        (received,) = receiver.wait_for_spans(1)
    # THEN the span came through with its attributes and the app's resource
    (true_block,) = truth(out)
    assert received.span.name == "eventloop.block"
    assert received.resource["service.name"] == APP_SERVICE
    span_attributes = attributes(received.span.attributes)
    assert (span_attributes["blocksnoop.cause"], span_attributes["blocksnoop.syscall"]) == (
        "syscall",
        "clock_nanosleep",
    )
    assert abs(received.span.start_time_unix_nano - true_block["start_unix_ns"]) < MS


def test_sigterm_delivers_the_spans_still_queued(tmp_path: Path, running: list[Running]) -> None:
    # GIVEN a sidecar that would hold spans for a minute before sending them
    with OtlpReceiver() as receiver:
        env = otlp_env(receiver.http_endpoint, "http/protobuf", OTEL_BSP_SCHEDULE_DELAY="60000")
        target = Target(tmp_path, "all", "--linger", "30")
        try:
            run = Running(["-t", "50", str(target.pid)], env)
            running.append(run)
            run.wait_attached()
            target.go()
            for _ in range(3):
                run.wait_for("block")
            # WHEN it is told to stop with those blocks reported but not yet sent
            run.process.send_signal(signal.SIGTERM)
            code, records, stderr = run.finish()
        finally:
            target.stop()
        # THEN every block it reported reached the collector before it exited
        assert code == 0, stderr
        reported = [r for r in records if r["type"] == "block"]
        assert len(reported) >= 3
        assert len(receiver.spans()) == len(reported)


def test_a_collector_down_at_start_gets_every_span_once_it_comes_up(
    tmp_path: Path, running: list[Running]
) -> None:
    # GIVEN no collector listening where the sidecar sends
    out = tmp_path / "truth.jsonl"
    receiver = OtlpReceiver(grpc_port=free_port(), http_port=free_port())
    env = otlp_env(receiver.http_endpoint, "http/protobuf", OTEL_EXPORTER_OTLP_TIMEOUT="1")
    run = Running(["-t", "50", "--", *app("all", "--linger", "2", "--out", str(out))], env)
    running.append(run)
    run.wait_for("block")
    # WHEN it comes up after the first blocks
    with receiver.start():
        code, records, stderr = run.finish()
        assert code == 0, stderr
        blocks = [r for r in records if r["type"] == "block"]
        # THEN every block arrives, none lost
        spans = receiver.wait_for_spans(len(blocks))
    assert len(spans) == len(blocks) == len(truth(out))
    assert "collector not reachable yet" in stderr
    assert "failed to deliver" not in stderr


def test_a_collector_that_goes_away_mid_run_misses_nothing_once_back(
    tmp_path: Path, running: list[Running]
) -> None:
    # GIVEN a collector that takes the first blocks, then stops
    out = tmp_path / "truth.jsonl"
    receiver = OtlpReceiver(grpc_port=free_port(), http_port=free_port())
    env = otlp_env(endpoint_of(receiver, "grpc"), "grpc", OTEL_EXPORTER_OTLP_TIMEOUT="1")
    with receiver:
        run = Running(["-t", "50", "--", *app("all", "--linger", "2", "--out", str(out))], env)
        running.append(run)
        run.wait_for("block")
        receiver.wait_for_spans(1)
    # WHEN it is away for the next blocks and comes back before the end
    run.wait_for("block")
    run.wait_for("block")
    with receiver.start():
        code, records, stderr = run.finish()
        assert code == 0, stderr
        blocks = [r for r in records if r["type"] == "block"]
        spans = receiver.wait_for_spans(len(blocks))
    # THEN every block reached it
    assert len(spans) == len(blocks) == len(truth(out))


def test_a_collector_that_never_comes_back_costs_a_warning_not_a_hang(tmp_path: Path) -> None:
    # GIVEN nothing ever listens where the sidecar sends
    out = tmp_path / "truth.jsonl"
    env = otlp_env(
        f"http://127.0.0.1:{free_port()}",
        "http/protobuf",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_BSP_EXPORT_TIMEOUT="1000",
    )
    result = subprocess.run(
        [*SIDECAR, "--json", "-t", "50", "--", *app("sleep", "--out", str(out))],
        capture_output=True, text=True, env=env, check=False, timeout=WAIT_S,
    )  # fmt: skip
    # THEN the app's exit code, the block on stdout, and one line saying it was not delivered
    assert result.returncode == 0, result.stderr
    assert [r["type"] for r in parse_json_lines(result.stdout)] == ["block", "summary"]
    undelivered = [line for line in result.stderr.splitlines() if "failed to deliver" in line]
    assert len(undelivered) == 1
    assert "Traceback" not in result.stderr


def test_the_otlp_http_probe_tells_a_grpc_port_from_an_http_one() -> None:
    # GIVEN a real receiver listening for OTLP on a gRPC port and an HTTP port
    with OtlpReceiver() as receiver:
        # WHEN each is probed as an OTLP/HTTP endpoint
        grpc_port = settings_from({}, endpoint=endpoint_of(receiver, "grpc"), protocol=HTTP)
        http_port = settings_from({}, endpoint=receiver.http_endpoint, protocol=HTTP)
        # THEN only the gRPC port is said not to speak it
        said = wrong_protocol(grpc_port, {})
        assert said is not None
        assert said.startswith(
            f"{endpoint_of(receiver, 'grpc')} does not speak OTLP/HTTP: it answers in HTTP/2"
        )
        assert wrong_protocol(http_port, {}) is None


def test_an_http_exporter_pointed_at_a_grpc_port_says_so_in_plain_words(tmp_path: Path) -> None:
    # GIVEN a real gRPC receiver, and the sidecar told to send OTLP/HTTP to its port
    out = tmp_path / "truth.jsonl"
    with OtlpReceiver() as receiver:
        env = otlp_env(
            endpoint_of(receiver, "grpc"),
            "http/protobuf",
            OTEL_EXPORTER_OTLP_TIMEOUT="1",
            OTEL_BSP_EXPORT_TIMEOUT="1000",
        )
        result = subprocess.run(
            [*SIDECAR, "--json", "-t", "50", "--", *app("sleep", "--out", str(out))],
            capture_output=True, text=True, env=env, check=False, timeout=WAIT_S,
        )  # fmt: skip
    # THEN the block is still reported, and stderr says what is wrong, never BadStatusLine
    assert result.returncode == 0, result.stderr
    assert [r["type"] for r in parse_json_lines(result.stdout)] == ["block", "summary"]
    assert "does not speak OTLP/HTTP: it answers in HTTP/2, as a gRPC port does" in result.stderr
    assert "BadStatusLine" not in result.stderr
    assert "Traceback" not in result.stderr


def test_two_watched_apps_are_two_resources_each_named_by_itself(
    tmp_path: Path, running: list[Running]
) -> None:
    # GIVEN two apps, each with its own OTEL_SERVICE_NAME, watched by one sidecar
    first = Target(tmp_path / "a", "sleep", env={"OTEL_SERVICE_NAME": "orders"})
    second = Target(tmp_path / "b", "cpu", env={"OTEL_SERVICE_NAME": "payments"})
    try:
        with OtlpReceiver() as receiver:
            env = otlp_env(receiver.http_endpoint, "http/protobuf")
            run = Running(["-t", "50", str(first.pid), str(second.pid)], env)
            running.append(run)
            run.wait_attached()
            # WHEN each blocks once and exits
            first.go()
            second.go()
            code, _, stderr = run.finish()
            assert code == 0, stderr
            spans = receiver.wait_for_spans(2)
    finally:
        first.stop()
        second.stop()
    # THEN each span sits under its own app's resource
    by_pid = {s.resource["process.pid"]: s for s in spans}
    assert by_pid[first.pid].resource["service.name"] == "orders"
    assert by_pid[second.pid].resource["service.name"] == "payments"
    # (each span is its own app's loop thread: causes are checked elsewhere, and under
    # load a cpu block can wait for the GIL held by a preempted executor thread)
    assert attributes(by_pid[first.pid].span.attributes)["thread.id"] == first.main_tid
    assert attributes(by_pid[second.pid].span.attributes)["thread.id"] == second.main_tid
    assert (
        by_pid[first.pid].resource["service.instance.id"]
        != by_pid[second.pid].resource["service.instance.id"]
    )
