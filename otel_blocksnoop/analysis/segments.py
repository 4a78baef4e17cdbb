"""One loop iteration, several requests: which shares of a blocked iteration get spans.

An iteration can run the callbacks of several requests one after another; if
more than one of them blocks, each request should see its own share in its
own trace. The kernel cuts the iteration where the loop thread's context
changed (``ContextSegment``: each asyncio callback runs in its task's
context), and the trace linker names each segment's owner from the reads
that landed in it (``TraceLinker.owners``). Here the shares worth a span of
their own are picked:

- neighbouring segments of one context with the same owner are one share (a
  short callback of another request between two steps of the same task);
- a share shorter than ``floor_ns`` (a tenth of the threshold, at least 1 ms:
  the kernel places a boundary within half a millisecond) is another
  request's quick callback, not a block of its own: it gets no span;
- a share shorter than the threshold whose reads found neither span nor
  task (the loop's own work between callbacks, e.g. its way back to epoll
  after a wait for a CPU; or a stretch no read landed in) is not a block of
  its own either: seen as a 9 ms "block" after a 539 ms one on a busy machine;
- with two or more shares left, each is a span; otherwise the iteration is
  kept whole, owned by the segment that held at least half of it, if any.

A share's owner is only ever what a read of its own context found; one no
read landed in has no parent, never its neighbour's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from otel_blocksnoop.events import NS_PER_MS, Activity, ContextSegment, Sleep, ThreadContext

SEGMENT_MIN_NS = NS_PER_MS
"""Shortest share of an iteration reported as a span of its own."""

NOBODY = ThreadContext(span=None, task=None)


@dataclass(frozen=True, slots=True)
class Share:
    """One request's share of an iteration: its stretch, and whose it was (if read)."""

    segment: ContextSegment
    owner: ThreadContext


def floor_ns(threshold_ns: int) -> int:
    """Shortest share that gets its own span at this threshold."""
    return max(SEGMENT_MIN_NS, threshold_ns // 10)


def shares(
    segments: Sequence[ContextSegment], owners: Sequence[ThreadContext], threshold_ns: int
) -> list[Share]:
    """The shares of one iteration that are spans of their own; empty: keep it whole."""
    merged: list[Share] = []
    for segment, owner in zip(segments, owners, strict=True):
        if merged:
            last = merged[-1]
            if (
                segment.context is not None
                and last.segment.context == segment.context
                and last.owner == owner
            ):
                merged[-1] = Share(joined(last.segment, segment), owner)
                continue
        merged.append(Share(segment, owner))
    floor = floor_ns(threshold_ns)
    kept = [
        share
        for share in merged
        if share.segment.duration_ns >= floor
        and (share.segment.duration_ns >= threshold_ns or not anonymous(share.owner))
    ]
    return kept if len(kept) > 1 else []


def anonymous(owner: ThreadContext) -> bool:
    """Whether nothing names whose a share was: no span, no task."""
    return owner.span is None and owner.task is None


def whole_owner(
    segments: Sequence[ContextSegment], owners: Sequence[ThreadContext], duration_ns: int
) -> ThreadContext:
    """Whose an iteration kept whole was: the owner of a segment that held half of it or more."""
    for segment, owner in zip(segments, owners, strict=True):
        if segment.duration_ns * 2 >= duration_ns:
            return owner
    return NOBODY


def joined(first: ContextSegment, second: ContextSegment) -> ContextSegment:
    """Two neighbouring segments of one context as one."""
    activity = (
        added(first.activity, second.activity)
        if first.activity is not None and second.activity is not None
        else None
    )
    return ContextSegment(
        context=first.context,
        start_ns=first.start_ns,
        end_ns=second.end_ns,
        after_ns=first.after_ns,
        before_ns=second.before_ns,
        activity=activity,
    )


def added(first: Activity, second: Activity) -> Activity:
    """The books of two stretches together."""
    sleeps = {sleep.syscall: sleep for sleep in first.sleeps}
    for sleep in second.sleeps:
        had = sleeps.get(sleep.syscall)
        sleeps[sleep.syscall] = (
            Sleep(sleep.syscall, had.ns + sleep.ns, had.count + sleep.count) if had else sleep
        )
    return Activity(
        on_cpu_ns=first.on_cpu_ns + second.on_cpu_ns,
        runq_ns=first.runq_ns + second.runq_ns,
        sleep_ns=first.sleep_ns + second.sleep_ns,
        sleeps=tuple(sleeps.values()),
        other_sleep_ns=first.other_sleep_ns + second.other_sleep_ns,
        sibling_cpu_ns=first.sibling_cpu_ns + second.sibling_cpu_ns,
    )
