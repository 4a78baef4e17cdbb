"""One read of the thread table: loop times of every thread, and who is out of epoll."""

from __future__ import annotations

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import NS_PER_MS, InProgress, ThreadTimes, Trigger, TriggerReason
from otel_blocksnoop.kernel.constants import OFF_ON_CPU
from otel_blocksnoop.kernel.layout import ThreadStateC
from otel_blocksnoop.kernel.thread_table import due_triggers, snapshot_of

NOW = 10_000 * NS_PER_MS


def thread(left_ms: int, entered_ms: int = 0, busy_ms: int = 0, idle_ms: int = 0) -> ThreadStateC:
    return ThreadStateC(
        left_epoll_ns=left_ms * NS_PER_MS,
        entered_epoll_ns=entered_ms * NS_PER_MS,
        switched_at=left_ms * NS_PER_MS,
        busy_ns=busy_ms * NS_PER_MS,
        idle_ns=idle_ms * NS_PER_MS,
        iterations=3,
        tgid=7,
        off_nr=OFF_ON_CPU,
    )


def test_threads_inside_epoll_are_idle_and_those_out_long_enough_are_ongoing() -> None:
    # GIVEN one thread inside epoll since 9,000 ms, one out since 9,990 ms, one since 9,500 ms
    entries = [
        (1, thread(0, entered_ms=9_000, busy_ms=5, idle_ms=100)),
        (2, thread(9_990, busy_ms=5)),
        (3, thread(9_500)),
    ]
    # WHEN the table is read at 10,000 ms for blocks of 100 ms or more
    snapshot = snapshot_of(entries, NOW, 100 * NS_PER_MS, None)
    # THEN the stretches in progress count as idle or busy, and only thread 3 is ongoing
    ms = NS_PER_MS
    assert snapshot.times == (
        ThreadTimes(7, 1, 3, 5 * ms, 1_100 * ms),
        ThreadTimes(7, 2, 3, 15 * ms, 0),
        ThreadTimes(7, 3, 3, 500 * ms, 0),
    )
    assert snapshot.ongoing == (InProgress(7, 3, 9_500 * ms, None),)


def test_the_process_cpu_time_is_read_once_per_process_when_asked() -> None:
    reads: list[int] = []

    def process_cpu_ns(pid: int) -> int:
        reads.append(pid)
        return 0

    entries = [(2, thread(9_000)), (3, thread(9_500))]
    snapshot = snapshot_of(entries, NOW, 100 * NS_PER_MS, process_cpu_ns)
    assert reads == [7]
    assert all(item.activity is not None for item in snapshot.ongoing)
    assert snapshot.ongoing[0].activity.on_cpu_ns == 1_000 * NS_PER_MS  # type: ignore[union-attr]


def test_without_ticks_user_space_tells_of_each_block_past_the_trigger_age_once() -> None:
    # GIVEN a thread out since 9,900 ms, one out since 9,990 ms, and one the kernel told of
    told_by_kernel = thread(9_000)
    told_by_kernel.told_ns = told_by_kernel.left_epoll_ns
    entries = [(2, thread(9_900)), (3, thread(9_990)), (4, told_by_kernel), (5, thread(0))]
    told: BoundedDict[int, int] = BoundedDict(16)
    # WHEN user space looks at 10,000 ms for blocks of 50 ms, twice
    first = due_triggers(entries, NOW, 50 * NS_PER_MS, told)
    again = due_triggers(entries, NOW + NS_PER_MS, 50 * NS_PER_MS, told)
    # THEN only thread 2 is told of, once, as due now
    assert first == [Trigger(7, 2, 9_900 * NS_PER_MS, NOW, TriggerReason.DUE)]
    assert again == []
