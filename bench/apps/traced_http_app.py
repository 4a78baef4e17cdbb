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
import json
import signal
import sys
import time

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

HEADER_END = b"\r\n\r\n"
MAX_HEAD = 64 * 1024


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


class TracedHttpProtocol(asyncio.Protocol):
    """Enough HTTP/1.1 for GET with keep-alive; each answer is made inside its own span."""

    def __init__(self, counter: list[int], pacer: Pacer) -> None:
        self._counter = counter
        self._pacer = pacer
        self._tracer = trace.get_tracer("traced_http_app")
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport typed as a stream one, which create_server always gives."""
        if isinstance(transport, asyncio.Transport):
            self._transport = transport

    def data_received(self, data: bytes) -> None:
        """Answer every complete request head; a request may arrive in pieces."""
        self._buffer += data
        while (end := self._buffer.find(HEADER_END)) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + len(HEADER_END) :]
            with self._tracer.start_as_current_span("GET /"):
                self._respond(head)
        if len(self._buffer) > MAX_HEAD and self._transport is not None:
            self._transport.close()

    def _respond(self, head: bytes) -> None:
        if self._transport is None:
            return
        request_line, _, headers = head.partition(b"\r\n")
        parts = request_line.split(b" ")
        self._counter[0] += 1
        self._pacer.maybe_block()
        body = json.dumps(
            {
                "path": parts[1].decode(errors="replace") if len(parts) > 1 else "/",
                "request": self._counter[0],
                "time": time.time(),
            }
        ).encode()
        close = b"connection: close" in headers.lower()
        self._transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: %s\r\n\r\n%s"
            % (len(body), b"close" if close else b"keep-alive", body)
        )
        if close:
            self._transport.close()


async def _serve(port: int, pacer: Pacer) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    counter = [0]
    server = await loop.create_server(lambda: TracedHttpProtocol(counter, pacer), "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"ready {bound}\n")
    sys.stdout.flush()
    async with server:
        await stop.wait()


def main() -> None:
    """Port 0 by default, so parallel runs never collide; the ready line says which."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--block-ms", type=float, default=15.0, help="0: never block")
    parser.add_argument("--block-every-ms", type=float, default=250.0)
    args = parser.parse_args()
    trace.set_tracer_provider(TracerProvider())
    pacer = Pacer(args.block_ms / 1000, args.block_every_ms / 1000)
    asyncio.run(_serve(args.port, pacer))
    sys.stdout.write(f"blocks {pacer.blocks}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
