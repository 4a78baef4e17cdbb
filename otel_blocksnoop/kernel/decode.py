"""The kernel's raw structs (``layout``) turned into the records of ``events``."""

from __future__ import annotations

from otel_blocksnoop.events import (
    Activity,
    BlockEvent,
    ContextSegment,
    EndReason,
    Sleep,
    Trigger,
    TriggerReason,
)
from otel_blocksnoop.kernel.constants import (
    BLOCK_THREAD_EXITED,
    MAX_SEGMENTS,
    OFF_ON_CPU,
    OFF_RUNQ,
    SLEEP_SLOTS,
    TRIGGER_DUE,
    TRIGGER_NEW_THREAD,
    TRIGGER_OFF_CPU,
    TRIGGER_SEGMENT,
)
from otel_blocksnoop.kernel.layout import (
    ActivityC,
    BlockEventC,
    SegmentsC,
    ThreadStateC,
    TriggerEventC,
)
from otel_blocksnoop.kernel.syscalls import syscall_name

SIGHTING_GAP_NS = 1_000_000
"""How far a segment may reach past its sightings: the longest tick with segments."""

TRIGGER_REASONS = {
    TRIGGER_DUE: TriggerReason.DUE,
    TRIGGER_OFF_CPU: TriggerReason.OFF_CPU,
    TRIGGER_NEW_THREAD: TriggerReason.NEW_THREAD,
    TRIGGER_SEGMENT: TriggerReason.SEGMENT,
}


def block_event_from_c(raw: BlockEventC, with_activity: bool) -> BlockEvent:
    """One ring-buffer record; ``with_activity``: the program booked what the thread did.

    Only the first ``raw.segments.count`` segments were sent; nothing past them is read.
    """
    activity = activity_from_c(raw.activity) if with_activity else None
    return BlockEvent(
        pid=raw.tgid,
        tid=raw.tid,
        comm=raw.comm.decode(errors="replace"),
        start_ns=raw.start_ns,
        end_ns=raw.end_ns,
        activity=activity,
        end_reason=(
            EndReason.THREAD_EXITED if raw.flags & BLOCK_THREAD_EXITED else EndReason.RETURNED
        ),
        segments=segments_from_c(raw.segments, raw.start_ns, raw.end_ns, activity),
        segments_overflow=bool(raw.segments.overflow_ns),
        host_pid=raw.host_tgid,
        host_tid=raw.host_tid,
    )


def segments_from_c(
    raw: SegmentsC, start_ns: int, end_ns: int, total: Activity | None
) -> tuple[ContextSegment, ...]:
    """The contexts of one iteration, cut where they changed.

    A boundary is placed halfway between the last sighting of one context and
    the first of the next (the kernel sights on ticks and switches, so the
    error is at most half the gap). A thread on CPU is sighted at least every
    tick, and one that leaves the CPU as it leaves it, so sightings more than
    ``SIGHTING_GAP_NS`` apart mean one was missed: a segment then reaches no
    further than that past its own sightings, and the time between belongs to
    none. The first segment starts with the iteration, the last ends with it
    (within that bound too); if the kernel's record filled up, the rest after
    the last change seen is a segment of no known context. A
    segment's activity is what the thread did between the first sightings of
    it and of the next (the iteration's books for the last).
    """
    count = min(raw.count, MAX_SEGMENTS)
    items = [raw.items[index] for index in range(count)]
    overflow = raw.overflow_ns
    marks = [activity_from_c(item.at_first) for item in items]
    segments = []
    for index, item in enumerate(items):
        last = index + 1 == count
        after = item.prev_last_ns or start_ns
        before = item.next_first_ns or (overflow if last and overflow else end_ns)
        # Halfway to the neighbour's sighting, but never further than a tick from its own.
        earliest, latest = item.first_ns - SIGHTING_GAP_NS, item.last_ns + SIGHTING_GAP_NS
        if item.prev_last_ns:
            begin = max(_between(item.prev_last_ns, item.first_ns), earliest)
        else:
            begin = max(start_ns, earliest)
        if item.next_first_ns or (last and overflow):
            finish = min(_between(item.last_ns, before), latest)
        else:
            finish = min(end_ns, latest)
        if total is None or (last and overflow):
            activity = None
        else:
            since = marks[index] if index else None
            until = marks[index + 1] if not last else total
            activity = activity_between(until, since)
        segments.append(ContextSegment(item.context, begin, finish, after, before, activity))
    if overflow and segments:
        tail_start = segments[-1].end_ns
        segments.append(ContextSegment(None, tail_start, end_ns, tail_start, end_ns, None))
    return tuple(segments)


def _between(earlier_ns: int, later_ns: int) -> int:
    return (earlier_ns + later_ns) // 2


def activity_between(until: Activity, since: Activity | None) -> Activity:
    """What a thread did between two marks of its books (``since`` None: from the start)."""
    if since is None:
        return until
    before = {sleep.syscall: sleep for sleep in since.sleeps}
    sleeps = []
    for sleep in until.sleeps:
        earlier = before.get(sleep.syscall)
        ns = sleep.ns - (earlier.ns if earlier else 0)
        count = sleep.count - (earlier.count if earlier else 0)
        if count > 0 or ns > 0:
            sleeps.append(Sleep(sleep.syscall, max(0, ns), max(0, count)))
    return Activity(
        on_cpu_ns=max(0, until.on_cpu_ns - since.on_cpu_ns),
        runq_ns=max(0, until.runq_ns - since.runq_ns),
        sleep_ns=max(0, until.sleep_ns - since.sleep_ns),
        sleeps=tuple(sleeps),
        other_sleep_ns=max(0, until.other_sleep_ns - since.other_sleep_ns),
        sibling_cpu_ns=max(0, until.sibling_cpu_ns - since.sibling_cpu_ns),
    )


def trigger_from_c(raw: TriggerEventC) -> Trigger:
    """One record of the trigger ring buffer.

    A reason this side does not know (a program built from another header)
    still says to look at the thread: it is read as DUE, look now, instead of
    a KeyError that would end the ring buffer's reading.
    """
    return Trigger(
        pid=raw.tgid,
        tid=raw.tid,
        start_ns=raw.start_ns,
        look_ns=raw.look_ns,
        reason=TRIGGER_REASONS.get(raw.reason, TriggerReason.DUE),
        host_tid=raw.host_tid,
    )


def activity_from_c(raw: ActivityC) -> Activity:
    """The kernel's books of one iteration, with syscall numbers named."""
    return Activity(
        on_cpu_ns=raw.on_cpu_ns,
        runq_ns=raw.runq_ns,
        sleep_ns=raw.sleep_ns,
        sleeps=tuple(
            Sleep(syscall=syscall_name(slot.nr), ns=slot.ns, count=slot.count)
            for slot in raw.sleeps
            if slot.count
        ),
        other_sleep_ns=raw.other_sleep_ns,
        sibling_cpu_ns=raw.sibling_cpu_ns,
    )


def activity_so_far(state: ThreadStateC, process_cpu_ns: int, now_ns: int) -> Activity:
    """What a thread still out of epoll has done up to ``now_ns``.

    The kernel books a stretch on or off CPU when it ends; the current one is
    added here, as the epoll entry program does for a finished block.
    """
    current = max(0, now_ns - state.switched_at)
    done = activity_from_c(state.activity)
    on_cpu, runq, sleeps = done.on_cpu_ns, done.runq_ns, list(done.sleeps)
    sleep_ns, other = done.sleep_ns, done.other_sleep_ns
    if state.off_nr == OFF_ON_CPU:
        on_cpu += current
    elif state.off_nr == OFF_RUNQ:
        runq += current
    else:
        sleep_ns += current
        name = syscall_name(state.off_nr)
        for index, sleep in enumerate(sleeps):
            if sleep.syscall == name:
                sleeps[index] = Sleep(name, sleep.ns + current, sleep.count + 1)
                break
        else:
            if len(sleeps) < SLEEP_SLOTS:
                sleeps.append(Sleep(name, current, 1))
            else:
                other += current
    process = process_cpu_ns - state.proc_cpu_start
    return Activity(
        on_cpu_ns=on_cpu,
        runq_ns=runq,
        sleep_ns=sleep_ns,
        sleeps=tuple(sleeps),
        other_sleep_ns=other,
        sibling_cpu_ns=max(0, process - state.own_cpu_ns),
    )
