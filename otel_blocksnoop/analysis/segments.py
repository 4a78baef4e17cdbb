"""One loop iteration, several requests: where each request's share begins and ends.

An iteration can run the callbacks of several requests one after another; if
more than one of them blocks, each request should see its own share in its
own trace. The reads of the thread's active span and task taken during the
block (``trace_link``), each with its time, show who ran when: consecutive
reads that found the same span are one request's stretch, and the boundary
between two stretches lies between the last read of one and the first read
of the next (placed halfway). Reads that found no span are stretches too,
whose segments get no parent: a segment is never given an owner no read saw.

The part of the block before its first read, and after its last, is given to
the nearest stretch: nothing was read there, so the one request seen is
assumed to have run on (the same assumption as a block read as a whole).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from otel_blocksnoop.events import SpanRef, TaskRef, ThreadContext


@dataclass(frozen=True, slots=True)
class TimedRead:
    """What one read during a block found, and when (CLOCK_MONOTONIC)."""

    time_ns: int
    found: ThreadContext


@dataclass(frozen=True, slots=True)
class Segment:
    """One request's share of a block: from, to, and who it ran for (if any read said)."""

    start_ns: int
    end_ns: int
    span: SpanRef | None
    task: TaskRef | None
    reads: int


def _task(reads: list[TimedRead]) -> TaskRef | None:
    """The task found most often in one stretch; a tie names none."""
    counts = Counter(read.found.task for read in reads if read.found.task is not None)
    ranked = counts.most_common(2)
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def split(start_ns: int, end_ns: int, reads: list[TimedRead]) -> list[Segment]:
    """The block ``start_ns``-``end_ns`` cut into stretches of one span each, in order."""
    inside = sorted(
        (read for read in reads if start_ns <= read.time_ns <= end_ns),
        key=lambda read: read.time_ns,
    )
    if not inside:
        return [Segment(start_ns, end_ns, span=None, task=None, reads=0)]
    runs: list[list[TimedRead]] = [[inside[0]]]
    for read in inside[1:]:
        if read.found.span == runs[-1][-1].found.span:
            runs[-1].append(read)
        else:
            runs.append([read])
    segments = []
    begin = start_ns
    for index, run in enumerate(runs):
        if index + 1 < len(runs):
            finish = (run[-1].time_ns + runs[index + 1][0].time_ns) // 2
        else:
            finish = end_ns
        segments.append(Segment(begin, finish, run[0].found.span, _task(run), len(run)))
        begin = finish
    return segments
