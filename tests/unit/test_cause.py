"""Cause of a block from the kernel's books; the activities are ones measured here."""

from __future__ import annotations

from otel_blocksnoop.analysis.cause import classify
from otel_blocksnoop.events import NS_PER_MS, Activity, Cause, Sleep


def activity(
    on_cpu_ms: float = 0.0,
    runq_ms: float = 0.0,
    sleeps: tuple[tuple[str | None, float, int], ...] = (),
    sibling_ms: float = 0.0,
    other_ms: float = 0.0,
) -> Activity:
    booked = tuple(Sleep(name, int(ms * NS_PER_MS), count) for name, ms, count in sleeps)
    return Activity(
        on_cpu_ns=int(on_cpu_ms * NS_PER_MS),
        runq_ns=int(runq_ms * NS_PER_MS),
        sleep_ns=sum(sleep.ns for sleep in booked) + int(other_ms * NS_PER_MS),
        sleeps=booked,
        other_sleep_ns=int(other_ms * NS_PER_MS),
        sibling_cpu_ns=int(sibling_ms * NS_PER_MS),
    )


def test_a_loop_that_ran_python_or_c_code_is_cpu() -> None:
    assert classify(activity(on_cpu_ms=200.3)) == (Cause.CPU, None)


def test_a_thread_starved_of_cpu_is_cpu() -> None:
    # GIVEN a busy loop that waited for a CPU more than it slept or ran
    starved = activity(on_cpu_ms=20.0, runq_ms=150.0, sleeps=(("futex", 30.0, 2),))
    assert classify(starved) == (Cause.CPU, None)


def test_a_gil_wait_on_an_overloaded_machine_is_still_the_gil() -> None:
    # GIVEN what was measured with the machine at load 4 on 2 CPUs: the loop
    # queued for a CPU as long as it slept, and the GIL holder ran only 27%
    # of that time (it queued too)
    busy_machine = activity(
        on_cpu_ms=24.8, runq_ms=51.3, sleeps=(("futex", 52.1, 28),), sibling_ms=49.9
    )
    assert classify(busy_machine) == (Cause.GIL, None)
    overloaded = activity(
        on_cpu_ms=18.7, runq_ms=60.6, sleeps=(("futex", 148.8, 36),), sibling_ms=39.6
    )
    assert classify(overloaded) == (Cause.GIL, None)


def test_a_sleep_is_named_by_the_syscall_with_most_sleeping_time() -> None:
    # GIVEN a pipe read that first waited briefly for a timer thread's futex
    read = activity(on_cpu_ms=0.7, sleeps=(("futex", 0.2, 2), ("read", 200.3, 1)), sibling_ms=0.4)
    assert classify(read) == (Cause.SYSCALL, "read")
    wait = activity(on_cpu_ms=0.8, sleeps=(("vfork", 0.1, 1), ("wait4", 201.2, 1)))
    assert classify(wait) == (Cause.SYSCALL, "wait4")


def test_a_lock_held_by_a_sleeping_thread_is_a_futex_syscall_not_the_gil() -> None:
    lock = activity(on_cpu_ms=0.6, sleeps=(("futex", 200.3, 6),), sibling_ms=0.2)
    assert classify(lock) == (Cause.SYSCALL, "futex")


def test_many_short_futex_waits_while_a_sibling_runs_are_the_gil() -> None:
    # GIVEN what Python 3.9 showed: 56 waits of ~3.4 ms while another thread ran 199 ms
    gil = activity(on_cpu_ms=11.5, runq_ms=8.0, sleeps=(("futex", 189.5, 56),), sibling_ms=199.0)
    assert classify(gil) == (Cause.GIL, None)


def test_the_same_futex_waits_in_a_free_threaded_process_are_a_lock_not_the_gil() -> None:
    # GIVEN the waits that are the GIL in a build with one, in a build without one
    waits = activity(on_cpu_ms=11.5, runq_ms=8.0, sleeps=(("futex", 189.5, 56),), sibling_ms=199.0)
    # WHEN classified for a free-threaded process
    # THEN it is the futex syscall (a contended lock): there is no GIL to wait for
    assert classify(waits, gil_possible=False) == (Cause.SYSCALL, "futex")


def test_one_long_futex_wait_for_a_busy_worker_is_not_the_gil() -> None:
    # GIVEN the loop waited 190 ms for a thread pool's result, then 3 ms for the GIL
    worker = activity(on_cpu_ms=1.0, sleeps=(("futex", 193.0, 2),), sibling_ms=195.0)
    # THEN the mean wait is far longer than a GIL switch interval
    assert classify(worker) == (Cause.SYSCALL, "futex")


def test_short_futex_waits_with_nobody_else_running_are_not_the_gil() -> None:
    polling = activity(on_cpu_ms=2.0, sleeps=(("futex", 150.0, 50),), sibling_ms=10.0)
    assert classify(polling) == (Cause.SYSCALL, "futex")


def test_without_the_kernel_books_or_with_nothing_booked_the_cause_is_unknown() -> None:
    assert classify(None) == (Cause.UNKNOWN, None)
    assert classify(activity()) == (Cause.UNKNOWN, None)


def test_a_sleep_outside_any_syscall_is_unknown() -> None:
    # GIVEN a thread asleep in a page fault (no syscall number)
    fault = activity(on_cpu_ms=1.0, sleeps=((None, 120.0, 3),))
    assert classify(fault) == (Cause.UNKNOWN, None)


def test_an_iteration_over_the_threshold_only_by_waiting_for_a_cpu_is_sched() -> None:
    # GIVEN a 10 ms threshold, and an iteration that ran 4 ms, slept 1 ms, and
    # waited 9 ms on the run queue (a saturated machine or a CPU quota)
    starved = activity(on_cpu_ms=4.0, runq_ms=9.0, sleeps=(("read", 1.0, 1),))
    # THEN there is no blocking call to look for: the cause is the scheduler
    assert classify(starved, threshold_ns=10 * NS_PER_MS) == (Cause.SCHED, None)


def test_a_block_the_app_made_keeps_its_cause_however_long_it_also_waited_for_a_cpu() -> None:
    # GIVEN a 10 ms threshold: 12 ms of the app's own CPU work, 30 ms on the run queue
    busy = activity(on_cpu_ms=12.0, runq_ms=30.0)
    assert classify(busy, threshold_ns=10 * NS_PER_MS) == (Cause.CPU, None)
    # AND a 15 ms sleep in read() that also queued for a CPU a little
    read = activity(on_cpu_ms=0.5, runq_ms=2.0, sleeps=(("read", 15.0, 1),))
    assert classify(read, threshold_ns=10 * NS_PER_MS) == (Cause.SYSCALL, "read")


def test_a_block_stretched_by_a_cpu_quota_is_sched_and_a_handler_that_was_throttled_is_cpu() -> (
    None
):
    # GIVEN a 100 ms threshold and a container at 10% of a CPU: a callback that
    # ran 12 ms, then waited out the rest of the 100 ms period throttled
    throttled = activity(on_cpu_ms=12.0, runq_ms=91.0, sleeps=(("epoll_wait", 0.1, 1),))
    # THEN nobody is sent to hunt for a blocking call
    assert classify(throttled, threshold_ns=100 * NS_PER_MS) == (Cause.SCHED, None)
    # AND a handler that spun 150 ms of its own, throttled for 1.2 s meanwhile, is the app's
    spinning = activity(on_cpu_ms=150.0, runq_ms=1200.0)
    assert classify(spinning, threshold_ns=100 * NS_PER_MS) == (Cause.CPU, None)


def test_a_loop_that_runs_between_gil_waits_is_still_held_by_the_gil() -> None:
    # GIVEN a loop calling into C between waits for the GIL: 60 ms on CPU, 55 ms in
    # 21 short futex waits while another thread of the process ran
    ms = NS_PER_MS
    activity = Activity(60 * ms, 5 * ms, 55 * ms, (Sleep("futex", 55 * ms, 21),), 0, 100 * ms)
    # THEN the GIL is named: the wait is what a reader must fix
    assert classify(activity, 50 * ms) == (Cause.GIL, None)
