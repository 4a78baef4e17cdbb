"""``make demo``: the sidecar watches examples/demo_app.py and exports to a real collector.

The collector is rotel (a real OpenTelemetry collector from PyPI) listening on
127.0.0.1; it forwards everything to the same OTLP receiver the tests use,
which is how this script can show, at the end, exactly what the collector
received. The sidecar's own console output comes first, as it happens.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.otlp import OtlpReceiver, ReceivedSpan, attributes  # noqa: E402
from harness.rotel import Rotel  # noqa: E402

SIDECAR = Path(sys.executable).with_name("otel-blocksnoop")
SETTLE_S = 2.0
"""Longest wait for the collector to forward the last spans after the sidecar exits."""


def describe(received: ReceivedSpan) -> str:
    span, found = received.span, attributes(received.span.attributes)
    duration_ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    cause = found.get("blocksnoop.cause", "?")
    if "blocksnoop.syscall" in found:
        cause += f" ({found['blocksnoop.syscall']})"
    where = f"  task={found['blocksnoop.task.name']}" if "blocksnoop.task.name" in found else ""
    if "code.function.name" in found:
        where += f"  {found['code.function.name']} line {found['code.line.number']}"
    return (
        f"  {span.name}  {duration_ms:7.1f} ms  service.name={received.resource['service.name']}"
        f"  thread.id={found['thread.id']}  cause={cause}{where}  trace_id={span.trace_id.hex()}"
    )


def run_sidecar(env: dict[str, str]) -> tuple[int, int]:
    """Run the sidecar on the demo app, echoing its output; its exit code and block count."""
    app = ["env", "OTEL_SERVICE_NAME=demo-app", sys.executable, str(ROOT / "examples/demo_app.py")]
    blocks = 0
    with subprocess.Popen(
        [str(SIDECAR), "-t", "20", "--", *app], env=env, stdout=subprocess.PIPE, text=True
    ) as sidecar:
        assert sidecar.stdout is not None  # noqa: S101 - stdout=PIPE above
        for line in sidecar.stdout:
            print(line, end="", flush=True)
            if match := re.match(r"--- (\d+) blocks? in ", line):
                blocks = int(match.group(1))
    return sidecar.returncode, blocks


def main() -> int:
    # A short batch timeout, so rotel forwards what it gets at once.
    with (
        OtlpReceiver() as receiver,
        Rotel(receiver, args=("--batch-timeout", "10ms")) as collector,
    ):
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        }
        print(f"demo: rotel, a real OpenTelemetry collector, listens on {collector.http_endpoint}")
        code, blocks = run_sidecar(env)
        spans = receiver.wait_for_spans(blocks, timeout=SETTLE_S)
        logs = receiver.logs()
        metrics = receiver.metrics()
    print(
        f"\ndemo: the collector received {len(spans)} spans, {len(logs)} hang log records "
        f"and {len(metrics)} metric exports; the spans:"
    )
    for received in spans:
        print(describe(received))
    print(f"demo: metrics: {', '.join(sorted({m.metric.name for m in metrics}))}")
    return code


if __name__ == "__main__":
    sys.exit(main())
