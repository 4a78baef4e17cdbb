"""Show block spans inside the request traces of a real instrumented aiohttp app.

USAGE: python examples/request_trace.py [--python PYTHON] [--uvloop]

The app is harness/targets/web_app.py: an aiohttp server traced by
opentelemetry-instrumentation-aiohttp-server, whose handlers block the loop,
two requests in turn, then one block outside any request. It exports its own
SERVER spans and the sidecar its block spans to the same OTLP receiver; the
traces are then printed as trees, each span with its start (relative to the
first) and its length. PYTHON needs aiohttp, opentelemetry-sdk,
opentelemetry-exporter-otlp-proto-http and opentelemetry-instrumentation-aiohttp-server;
the default is the CPython 3.11 venv that ``make test`` builds for the tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import TARGETS  # noqa: E402
from harness.interpreters import CACHE  # noqa: E402
from harness.otlp import OtlpReceiver, ReceivedSpan, attributes  # noqa: E402

SIDECAR = Path(sys.executable).with_name("otel-blocksnoop")
WEB_APP = TARGETS / "web_app.py"
DEFAULT_PYTHON = CACHE / "targets" / "web-py3.11" / "bin" / "python"
SETTLE_S = 5.0


def describe(received: ReceivedSpan, depth: int, first_ns: int) -> str:
    span, found = received.span, attributes(received.span.attributes)
    name = ("  " * (depth - 1) + "└ " if depth else "") + span.name
    start_ms = (span.start_time_unix_nano - first_ns) / 1e6
    length_ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    line = (
        f"{name:<24} {received.resource['service.name']:<6} trace ..{span.trace_id.hex()[-8:]}"
        f"  +{start_ms:7.1f} ms  {length_ms:6.1f} ms"
    )
    if span.name == "eventloop.block":
        cause = found.get("blocksnoop.cause", "?")
        if "blocksnoop.syscall" in found:
            cause += f" ({found['blocksnoop.syscall']})"
        line += f"  cause={cause}"
        if "blocksnoop.task.name" in found:
            line += f"  task={found['blocksnoop.task.name']}"
        if "code.function.name" in found:
            line += f"  {found['code.function.name']} line {found['code.line.number']}"
    return line


def trees(spans: list[ReceivedSpan]) -> list[str]:
    """The spans as trees: each under its parent when the parent was received too."""
    ids = {s.span.span_id for s in spans}
    children: dict[bytes, list[ReceivedSpan]] = defaultdict(list)
    roots = []
    for received in spans:
        parent = received.span.parent_span_id
        if parent in ids:
            children[parent].append(received)
        else:
            roots.append(received)
    first_ns = min(s.span.start_time_unix_nano for s in spans)
    lines: list[str] = []

    def walk(received: ReceivedSpan, depth: int) -> None:
        lines.append(describe(received, depth, first_ns))
        for child in sorted(children[received.span.span_id], key=start_of):
            walk(child, depth + 1)

    for root in sorted(roots, key=start_of):
        walk(root, 0)
    return lines


def start_of(received: ReceivedSpan) -> int:
    return received.span.start_time_unix_nano


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path, default=DEFAULT_PYTHON)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if not args.python.exists():
        print(f"request_trace: no {args.python}: run `make test` or pass --python", file=sys.stderr)
        return 2
    with OtlpReceiver() as receiver, tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
            "OTEL_SERVICE_NAME": "shop",
        }
        app = [str(args.python), str(WEB_APP), "--out", f"{tmp}/truth.jsonl"]
        app += ["--uvloop"] if args.uvloop else []
        print("request_trace: the sidecar watches the app; its own report is left out here")
        result = subprocess.run(
            [str(SIDECAR), "-q", "-t", "50", "--", *app],
            env=env,
            stdout=subprocess.DEVNULL,
            check=False,
        )
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline and len(receiver.spans()) < 10:
            time.sleep(0.1)
        spans = receiver.spans()
    print("\n".join(trees(spans)))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
