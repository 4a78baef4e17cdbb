"""The kernel's raw structs (``layout``) turned into the records of ``events``."""

from __future__ import annotations

from otel_blocksnoop.events import Activity, BlockEvent, EndReason, Sleep, Trigger, TriggerReason
from otel_blocksnoop.kernel.constants import (
    BLOCK_THREAD_EXITED,
    OFF_ON_CPU,
    OFF_RUNQ,
    SLEEP_SLOTS,
    TRIGGER_DUE,
    TRIGGER_NEW_THREAD,
    TRIGGER_OFF_CPU,
)
from otel_blocksnoop.kernel.layout import ActivityC, BlockEventC, ThreadStateC, TriggerEventC
from otel_blocksnoop.kernel.syscalls import syscall_name

TRIGGER_REASONS = {
    TRIGGER_DUE: TriggerReason.DUE,
    TRIGGER_OFF_CPU: TriggerReason.OFF_CPU,
    TRIGGER_NEW_THREAD: TriggerReason.NEW_THREAD,
}


def block_event_from_c(raw: BlockEventC, with_activity: bool) -> BlockEvent:
    """One ring-buffer record; ``with_activity``: the program booked what the thread did."""
    return BlockEvent(
        pid=raw.tgid,
        tid=raw.tid,
        comm=raw.comm.decode(errors="replace"),
        start_ns=raw.start_ns,
        end_ns=raw.end_ns,
        activity=activity_from_c(raw.activity) if with_activity else None,
        end_reason=(
            EndReason.THREAD_EXITED if raw.flags & BLOCK_THREAD_EXITED else EndReason.RETURNED
        ),
    )


def trigger_from_c(raw: TriggerEventC) -> Trigger:
    """One record of the trigger ring buffer."""
    return Trigger(
        pid=raw.tgid,
        tid=raw.tid,
        start_ns=raw.start_ns,
        look_ns=raw.look_ns,
        reason=TRIGGER_REASONS[raw.reason],
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
