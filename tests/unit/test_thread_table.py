"""One read of the thread table: loop times of every thread, and who is out of epoll."""

from __future__ import annotations

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import NS_PER_MS, InProgress, ThreadTimes, Trigger, TriggerReason
from otel_blocksnoop.kernel.constants import OFF_ON_CPU
from otel_blocksnoop.kernel.layout import ThreadStateC
from otel_blocksnoop.kernel.thread_table import due_triggers, snapshot_of

NOW = 10_000 * NS_PER_MS


def thread(
    left_ms: int, entered_ms: int = 0, busy_ms: int = 0, idle_ms: int = 0, tid: int = 0
) -> ThreadStateC:
    """A thread's state; in the host's PID namespace its ids are the keys' (``entry``)."""
    return ThreadStateC(
        left_epoll_ns=left_ms * NS_PER_MS,
        entered_epoll_ns=entered_ms * NS_PER_MS,
        switched_at=left_ms * NS_PER_MS,
        busy_ns=busy_ms * NS_PER_MS,
        idle_ns=idle_ms * NS_PER_MS,
        iterations=3,
        tgid=7,
        off_nr=OFF_ON_CPU,
        tid=tid,
        host_tgid=7,
    )


def entry(tid: int, state: ThreadStateC) -> tuple[int, ThreadStateC]:
    """The table's entry of ``state``, keyed by its host tid, the same as its own."""
    state.tid = tid
    return tid, state


def test_threads_inside_epoll_are_idle_and_those_out_long_enough_are_ongoing() -> None:
    # GIVEN one thread inside epoll since 9,000 ms, one out since 9,990 ms, one since 9,500 ms
    entries = [
        entry(1, thread(0, entered_ms=9_000, busy_ms=5, idle_ms=100)),
        entry(2, thread(9_990, busy_ms=5)),
        entry(3, thread(9_500)),
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
    assert snapshot.ongoing == (InProgress(7, 3, 9_500 * ms, None, host_pid=7, host_tid=3),)


def test_the_process_cpu_time_is_read_once_per_process_when_asked() -> None:
    reads: list[int] = []

    def process_cpu_ns(pid: int) -> int:
        reads.append(pid)
        return 0

    entries = [entry(2, thread(9_000)), entry(3, thread(9_500))]
    snapshot = snapshot_of(entries, NOW, 100 * NS_PER_MS, process_cpu_ns)
    assert reads == [7]
    assert all(item.activity is not None for item in snapshot.ongoing)
    assert snapshot.ongoing[0].activity.on_cpu_ns == 1_000 * NS_PER_MS  # type: ignore[union-attr]


def test_without_ticks_user_space_tells_of_each_block_past_the_trigger_age_once() -> None:
    # GIVEN a thread out since 9,900 ms, one out since 9,990 ms, and one the kernel told of
    told_by_kernel = thread(9_000)
    told_by_kernel.told_ns = told_by_kernel.left_epoll_ns
    entries = [
        entry(2, thread(9_900)),
        entry(3, thread(9_990)),
        entry(4, told_by_kernel),
        entry(5, thread(0)),
    ]
    told: BoundedDict[int, int] = BoundedDict(16)
    # WHEN user space looks at 10,000 ms for blocks of 50 ms, twice
    first = due_triggers(entries, NOW, 50 * NS_PER_MS, told)
    again = due_triggers(entries, NOW + NS_PER_MS, 50 * NS_PER_MS, told)
    # THEN only thread 2 is told of, once, as due now
    assert first == [Trigger(7, 2, 9_900 * NS_PER_MS, NOW, TriggerReason.DUE, host_tid=2)]
    assert again == []


def test_in_another_pid_namespace_threads_are_named_by_their_ids_there_not_by_the_host_key() -> (
    None
):
    # GIVEN host tid 4242 of host process 4240, which is 7/9 in the sidecar's PID namespace
    state = thread(9_000, tid=9)
    state.host_tgid = 4240
    cpu_asked: list[int] = []

    def process_cpu_ns(pid: int) -> int:
        cpu_asked.append(pid)
        return 0

    # WHEN the table is read, and user space looks for due blocks
    snapshot = snapshot_of([(4242, state)], NOW, 100 * NS_PER_MS, process_cpu_ns)
    due = due_triggers([(4242, state)], NOW, 50 * NS_PER_MS, BoundedDict(16))
    # THEN the ids are the sidecar's, the host's come beside, the CPU is asked by host id
    assert snapshot.times[0].tid == 9
    item = snapshot.ongoing[0]
    assert (item.pid, item.tid, item.host_pid, item.host_tid) == (7, 9, 4240, 4242)
    assert cpu_asked == [4240]
    assert [(t.pid, t.tid, t.host_tid) for t in due] == [(7, 9, 4242)]
