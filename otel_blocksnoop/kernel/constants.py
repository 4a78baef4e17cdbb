"""Constants the BPF C and the Python side share; this module is their one source.

Those in ``CFLAGS_CONSTANTS`` reach the C as ``-D`` cflags (``program_cflags``):
bpf/detector.h defines none of them and refuses to compile without them.
Array sizes of the structs ``layout`` mirrors stay in the header, where a
struct's size is read; tests/unit/test_kernel_constants.py fails when the
header's values differ from these.
"""

from __future__ import annotations

# Array sizes in bpf/detector.h (checked against it by a test, not passed in).
COMM_LEN = 16
"""Bytes of a thread's name (the kernel's TASK_COMM_LEN)."""
SLEEP_SLOTS = 4
"""Syscalls booked one by one per iteration; sleeps in others are summed."""
MAX_SEGMENTS = 16
"""Contexts (segments) recorded per iteration; a power of two (the C masks with it)."""

# Indexes of the per-CPU ``counters`` array.
COUNTER_LOST_EVENTS = 0
"""Ring buffer full: a block was dropped."""
COUNTER_ITERATIONS = 1
"""Loop iterations seen (all, not only blocks)."""
COUNTER_BUSY_NS = 2
"""Time spent outside epoll, summed."""
COUNTER_STATE_FULL = 3
"""Thread table full: a thread is not tracked."""
COUNTER_LOST_TRIGGERS = 4
"""Trigger ring buffer full: a trigger was dropped."""
COUNTER_UNSEEN_SWITCHES = 5
"""A thread seen running (a tick, its switch out) whose books said off CPU: its
switch back on was not reported. The kernel closes the stretch there."""
COUNTER_MAX = 6
"""Size of the counters array."""

BLOCK_THREAD_EXITED = 1
"""Flag of a block event: the thread exited while out of epoll."""

# Why a trigger event was sent (trigger_event.reason).
TRIGGER_DUE = 1
"""Out of epoll for the trigger age or more, seen by the kernel (a tick, or a switch)."""
TRIGGER_OFF_CPU = 2
"""Left the CPU out of epoll, younger than the trigger age: user space times it."""
TRIGGER_NEW_THREAD = 3
"""A thread's first return from epoll: a loop (or a native poller) starts."""
TRIGGER_SEGMENT = 4
"""A followed block's thread switched to another context: read the new one now."""

# Off-CPU reasons kept in thread_state.off_nr besides syscall numbers
# (-1, from pt_regs orig_ax, means asleep outside a syscall, e.g. a page fault).
OFF_ON_CPU = -2
"""Running: not off CPU."""
OFF_RUNQ = -3
"""Preempted: runnable, waiting for a CPU."""

# How a PID came to be watched (watch_state.how).
WATCH_ROOT = 1
"""A PID the user named or launched."""
WATCH_INHERITED = 2
"""Forked from a watched process."""

# Geometry of the stats-mode histogram (see ``histogram``).
HIST_SUB_BITS = 5
"""Below 2**HIST_SUB_BITS ns a bucket per value; above, 2**HIST_SUB_BITS per power of two."""
HIST_MAX_LOG2 = 42
"""About 73 minutes; longer iterations clamp to the last bucket."""

CFLAGS_CONSTANTS: dict[str, int] = {
    "COUNTER_LOST_EVENTS": COUNTER_LOST_EVENTS,
    "COUNTER_ITERATIONS": COUNTER_ITERATIONS,
    "COUNTER_BUSY_NS": COUNTER_BUSY_NS,
    "COUNTER_STATE_FULL": COUNTER_STATE_FULL,
    "COUNTER_LOST_TRIGGERS": COUNTER_LOST_TRIGGERS,
    "COUNTER_UNSEEN_SWITCHES": COUNTER_UNSEEN_SWITCHES,
    "COUNTER_MAX": COUNTER_MAX,
    "BLOCK_THREAD_EXITED": BLOCK_THREAD_EXITED,
    "TRIGGER_DUE": TRIGGER_DUE,
    "TRIGGER_OFF_CPU": TRIGGER_OFF_CPU,
    "TRIGGER_NEW_THREAD": TRIGGER_NEW_THREAD,
    "TRIGGER_SEGMENT": TRIGGER_SEGMENT,
    "OFF_ON_CPU": OFF_ON_CPU,
    "OFF_RUNQ": OFF_RUNQ,
    "WATCH_ROOT": WATCH_ROOT,
    "WATCH_INHERITED": WATCH_INHERITED,
    "HIST_SUB_BITS": HIST_SUB_BITS,
    "HIST_MAX_LOG2": HIST_MAX_LOG2,
}
"""Every constant the C gets as a ``-D`` cflag, by its C name."""

HEADER_CONSTANTS: dict[str, int] = {
    "COMM_LEN": COMM_LEN,
    "SLEEP_SLOTS": SLEEP_SLOTS,
    "MAX_SEGMENTS": MAX_SEGMENTS,
}
"""Constants bpf/detector.h defines itself, by their C name."""


def constant_cflags() -> list[str]:
    """``-DNAME=value`` for each of ``CFLAGS_CONSTANTS``; negative values in parentheses."""
    return [
        f"-D{name}={value}" if value >= 0 else f"-D{name}=({value})"
        for name, value in CFLAGS_CONSTANTS.items()
    ]
