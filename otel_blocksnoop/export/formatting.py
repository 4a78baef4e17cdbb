"""Units, time formats and tracebacks shared by the sinks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from otel_blocksnoop.events import (
    NS_PER_MS,
    NS_PER_S,
    Block,
    CallSite,
    Cause,
    Frame,
    SessionSummary,
)


def ms(ns: int) -> float:
    """Nanoseconds as milliseconds, rounded to the microsecond."""
    return round(ns / NS_PER_MS, 3)


def human_duration(ns: int) -> str:
    if ns >= 10 * NS_PER_S:
        return f"{ns / NS_PER_S:.1f} s"
    if ns >= NS_PER_S:
        return f"{ns / NS_PER_S:.2f} s"
    if ns >= NS_PER_MS:
        return f"{ns / NS_PER_MS:.1f} ms"
    return f"{ns / NS_PER_MS:.3f} ms"


def iso_utc(unix_ns: int) -> str:
    """RFC 3339 UTC timestamp with microseconds."""
    stamp = datetime.fromtimestamp(unix_ns / NS_PER_S, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def local_clock(unix_ns: int) -> str:
    """Wall-clock time of day in the local zone, to the millisecond."""
    stamp = datetime.fromtimestamp(unix_ns / NS_PER_S).astimezone()
    return stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"


def cause_text(block: Block | CallSite) -> str:
    """``cpu``, ``gil``, ``sched``, ``unknown``, or the syscall it slept in, as ``wait4()``."""
    if block.cause == Cause.SYSCALL and block.syscall:
        return f"{block.syscall}()"
    return str(block.cause)


def call_sites_text(sites: Sequence[CallSite]) -> str:
    """Each call site in one line, in order: ``query 120.0 ms recvfrom(); derive 118.0 ms cpu``."""
    return "; ".join(
        f"{site.frame.function} {human_duration(site.share_ns)} {cause_text(site)}"
        for site in sites
    )


def format_traceback(stack: Sequence[Frame], source_lines: Sequence[str | None] = ()) -> str:
    """Python-style traceback text, most recent call last; ``source_lines`` align with ``stack``."""
    out = ["Traceback (most recent call last):"]
    for index, frame in enumerate(stack):
        out.append(f'  File "{frame.file}", line {frame.line}, in {frame.function}')
        source = source_lines[index] if index < len(source_lines) else None
        if source:
            out.append(f"    {source}")
    return "\n".join(out)


def seconds(ns: int) -> float:
    """Nanoseconds as seconds, the unit of OpenTelemetry durations."""
    return ns / NS_PER_S


def losses_of(summary: SessionSummary) -> dict[str, int]:
    """The kinds of loss that happened, with their totals, in the enum's order."""
    return {str(what): count for what, count in summary.losses if count}
