# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Trace-link cost target: an asyncio HTTP/1.1 keep-alive server, one OTel span per request.

Like http_app.py (a JSON body built per request), but every request is
answered inside a sampled span "GET /" of the app's own TracerProvider (which
exports nothing), and every ``--block-every-ms`` the next request blocks the
loop for ``--block-ms`` (``time.sleep``) inside its span, so a sidecar with a
lower threshold reads the app's context during each such block. The blocks
are paced by the clock, not by the request count, so the share of time the
loop is blocked is the same whatever the throughput. Prints ``ready PORT``
once it listens, ``block START_NS END_NS TRACE_ID SPAN_ID`` after each
block (CLOCK_MONOTONIC; the ids of the span it blocked in, in hex), and
``blocks N`` when SIGTERM/SIGINT has stopped it.

USAGE: traced_http_app.py [--port N] [--block-ms MS] [--block-every-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from http_app import HttpProtocol, serve
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider


class Pacer:
    """Says when the next request should block: once per period, by the clock."""

    def __init__(self, block_s: float, every_s: float) -> None:
        self.block_s = block_s
        self.every_s = every_s
        self.blocks = 0
        self._next = time.monotonic() + every_s

    def maybe_block(self) -> None:
        """Block the loop now if the period is over (inside whatever span is current)."""
        if self.block_s <= 0 or time.monotonic() < self._next:
            return
        span = trace.get_current_span().get_span_context()
        start_ns = time.monotonic_ns()
        time.sleep(self.block_s)
        end_ns = time.monotonic_ns()
        sys.stdout.write(f"block {start_ns} {end_ns} {span.trace_id:032x} {span.span_id:016x}\n")
        sys.stdout.flush()
        self.blocks += 1
        self._next = time.monotonic() + self.every_s


class TracedHttpProtocol(HttpProtocol):
    """http_app's server, each answer made inside its own span (where it may block)."""

    def __init__(self, counter: list[int], pacer: Pacer) -> None:
        super().__init__(counter)
        self._pacer = pacer
        self._tracer = trace.get_tracer("traced_http_app")

    def _respond(self, head: bytes) -> None:
        with self._tracer.start_as_current_span("GET /"):
            self._pacer.maybe_block()
            super()._respond(head)


def main() -> None:
    """Port 0 by default, so parallel runs never collide; the ready line says which."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--block-ms", type=float, default=15.0, help="0: never block")
    parser.add_argument("--block-every-ms", type=float, default=250.0)
    args = parser.parse_args()
    trace.set_tracer_provider(TracerProvider())
    pacer = Pacer(args.block_ms / 1000, args.block_every_ms / 1000)
    asyncio.run(serve(args.port, lambda counter: TracedHttpProtocol(counter, pacer)))
    sys.stdout.write(f"blocks {pacer.blocks}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
