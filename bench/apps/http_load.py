# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Fallback HTTP load generator, used only when wrk cannot be installed.

Keep-alive GETs over N connections to 127.0.0.1 for a fixed time, in its own
process so it never shares the server's loop. Prints one JSON object:
``{"requests": N, "seconds": S, "p50_ms": ..., "p99_ms": ...}``.

USAGE: http_load.py --port P [--connections N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _connection(port: int, deadline: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < deadline:
            sent = time.monotonic()
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.monotonic() - sent)
    finally:
        writer.close()


async def _run(port: int, connections: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(_connection(port, deadline, latencies) for _ in range(connections)))
    elapsed = time.monotonic() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
    }


def main() -> None:
    """One JSON line on stdout, so the runner needs no parser for a text report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    result = asyncio.run(_run(args.port, args.connections, args.seconds))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
