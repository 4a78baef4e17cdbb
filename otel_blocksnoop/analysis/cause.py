"""Why a loop was stuck: running, asleep in a syscall, or waiting for the GIL.

The kernel books what the loop thread did while out of epoll (``Activity``);
this turns it into one cause. A thread that slept longer than it ran and
longer than it waited for a CPU was stuck in a sleep, named by the syscall
with the most sleeping time; otherwise it is ``cpu``. Time waiting for a CPU
does not count as running: on a busy machine a thread handed the GIL still
queues for a CPU, and that wait belongs to the GIL.

An iteration that crossed the threshold only because the thread waited for
a CPU (its own running and sleeping time stayed under the threshold; the rest
was the run queue: a saturated machine, or a container's CPU quota) is
``sched``: no blocking call to look for. With the threshold unknown (0), such
waits are left to the rules above. A cgroup over its CPU quota is throttled:
its threads stay runnable with no CPU, which the kernel books as run-queue
time, so the same rule covers it; how much of the wait was throttling is on
the block beside the cause (``Block.throttling``). A handler whose own work
crossed the threshold keeps its cause however long a quota also held it:
the fix is in the app's code, not in its limits.

A futex sleep is the GIL when it came as several short waits while other
threads of the process ran: CPython's ``take_gil`` waits on a condition
variable in steps of the switch interval (5 ms by default) for a thread that
is running Python. A lock held by a sleeping thread, or a wait for a worker
thread's result, is one long futex wait instead: a plain ``syscall`` (futex).

A thread that gives its CPU up in sched_yield (a lock spinning before it
sleeps, as a free-threaded build's locks do) is booked asleep in sched_yield
by the kernel, not in the run queue: on a busy machine each yield waits out
others' slices, and that wait is the lock's, not ``sched``.

A free-threaded build (3.13t, 3.14t) has no GIL: there, waits of that shape
are a contended lock (``threading.Lock``, a critical section of the
interpreter's own), given as ``syscall`` (futex). The caller says which build
the process runs (``gil_possible``); unknown, it is taken to have a GIL.
"""

from __future__ import annotations

from otel_blocksnoop.events import NS_PER_MS, Activity, Cause, Sleep

FUTEX = "futex"
GIL_MIN_WAITS = 2
"""Futex sleeps needed before a wait is taken for the GIL: one long wait is a lock."""
GIL_MAX_MEAN_WAIT_NS = 10 * NS_PER_MS
"""Longest mean futex sleep of a GIL wait: twice CPython's default switch interval."""
GIL_MIN_SIBLING_SHARE = 0.25
"""Share of the futex time during which other threads must have been on a CPU.

Not higher: on an overloaded machine the GIL holder queues for a CPU too
(measured: a sibling ran 27% of the loop's futex time while holding the GIL)."""


def dominant_sleep(activity: Activity) -> Sleep | None:
    """The syscall the thread slept in longest, if any sleep was booked per syscall."""
    if not activity.sleeps:
        return None
    return max(activity.sleeps, key=lambda sleep: sleep.ns)


def looks_like_gil(activity: Activity, sleep: Sleep, *, gil_possible: bool = True) -> bool:
    """Several short futex waits while siblings ran; never in a build without a GIL."""
    return (
        gil_possible
        and sleep.syscall == FUTEX
        and sleep.count >= GIL_MIN_WAITS
        and sleep.ns <= GIL_MAX_MEAN_WAIT_NS * sleep.count
        and activity.sibling_cpu_ns >= GIL_MIN_SIBLING_SHARE * sleep.ns
    )


GIL_MIN_SHARE = 0.3
"""Share of the block a GIL wait must fill to name it, even if the loop ran longer:
a loop that calls into C between GIL waits (os.stat in a loop) runs about as
long as it waits, and the wait is what a reader must fix."""


def gil_share_ok(activity: Activity, sleep: Sleep) -> bool:
    total = activity.on_cpu_ns + activity.runq_ns + activity.sleep_ns
    return sleep.ns >= GIL_MIN_SHARE * total and sleep.ns >= activity.other_sleep_ns


def classify(
    activity: Activity | None, threshold_ns: int = 0, *, gil_possible: bool = True
) -> tuple[Cause, str | None]:
    """The cause of a block and, for ``syscall``, the syscall's name.

    ``gil_possible``: False for a free-threaded process, which has no GIL to wait for.
    """
    if activity is None or activity.on_cpu_ns + activity.runq_ns + activity.sleep_ns == 0:
        return Cause.UNKNOWN, None
    if activity.runq_ns and activity.on_cpu_ns + activity.sleep_ns < threshold_ns:
        return Cause.SCHED, None
    sleep = dominant_sleep(activity)
    if (
        sleep is not None
        and looks_like_gil(activity, sleep, gil_possible=gil_possible)
        and gil_share_ok(activity, sleep)
    ):
        return Cause.GIL, None
    if activity.sleep_ns <= max(activity.on_cpu_ns, activity.runq_ns):
        return Cause.CPU, None
    if sleep is None or sleep.syscall is None or sleep.ns < activity.other_sleep_ns:
        return Cause.UNKNOWN, None
    return Cause.SYSCALL, sleep.syscall
