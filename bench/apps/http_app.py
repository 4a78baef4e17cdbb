# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Overhead target: a plain-asyncio HTTP/1.1 keep-alive server on 127.0.0.1.

Each request does a little real work (a JSON body built per request), so a
loop iteration costs what a small service's does, not the bare minimum.
Prints ``ready PORT`` on stdout once it listens; SIGTERM/SIGINT stop it.

USAGE: http_app.py [--port N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable

HEADER_END = b"\r\n\r\n"
MAX_HEAD = 64 * 1024


class HttpProtocol(asyncio.Protocol):
    """Enough HTTP/1.1 for GET with keep-alive, which is all wrk sends."""

    def __init__(self, counter: list[int]) -> None:
        self._counter = counter
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
            self._respond(head)
        if len(self._buffer) > MAX_HEAD and self._transport is not None:
            self._transport.close()

    def _respond(self, head: bytes) -> None:
        if self._transport is None:
            return
        request_line, _, headers = head.partition(b"\r\n")
        parts = request_line.split(b" ")
        self._counter[0] += 1
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


async def serve(port: int, protocol: Callable[[list[int]], asyncio.Protocol]) -> None:
    """Serve on 127.0.0.1 with ``protocol(counter)`` per connection until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    counter = [0]
    server = await loop.create_server(lambda: protocol(counter), "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"ready {bound}\n")
    sys.stdout.flush()
    async with server:
        await stop.wait()


def main() -> None:
    """Port 0 by default, so parallel runs never collide; the ready line says which."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    asyncio.run(serve(parser.parse_args().port, HttpProtocol))


if __name__ == "__main__":
    main()
