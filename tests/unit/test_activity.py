"""A block in progress: the kernel's books plus the stretch still going on."""

from __future__ import annotations

from otel_blocksnoop.events import NS_PER_MS, Sleep
from otel_blocksnoop.kernel.constants import OFF_ON_CPU, OFF_RUNQ, SLEEP_SLOTS
from otel_blocksnoop.kernel.decode import activity_from_c, activity_so_far
from otel_blocksnoop.kernel.layout import ThreadStateC

FUTEX, READ = 202, 0
START = 1_000 * NS_PER_MS


def state(off_nr: int, switched_at_ms: int, sleeps: list[tuple[int, int, int]]) -> ThreadStateC:
    raw = ThreadStateC(left_epoll_ns=START, tgid=7, off_nr=off_nr)
    raw.switched_at = START + switched_at_ms * NS_PER_MS
    raw.proc_cpu_start = 50 * NS_PER_MS
    raw.own_cpu_ns = 2 * NS_PER_MS
    raw.activity.on_cpu_ns = 2 * NS_PER_MS
    for slot, (nr, ms, count) in zip(raw.activity.sleeps, sleeps, strict=False):
        slot.nr, slot.ns, slot.count = nr, ms * NS_PER_MS, count
    raw.activity.sleep_ns = sum(ms for _, ms, _ in sleeps) * NS_PER_MS
    return raw


def test_the_current_sleep_is_added_to_its_syscall() -> None:
    # GIVEN a thread asleep in futex since 10 ms into the block, after a 3 ms read
    raw = state(FUTEX, 10, [(READ, 3, 1)])
    # WHEN looked at 500 ms into the block, with its process's CPU at 80 ms
    now = START + 500 * NS_PER_MS
    so_far = activity_so_far(raw, process_cpu_ns=80 * NS_PER_MS, now_ns=now)
    # THEN the 490 ms futex sleep counts, and siblings ran 30 - 2 ms
    assert so_far.sleeps == (Sleep("read", 3 * NS_PER_MS, 1), Sleep("futex", 490 * NS_PER_MS, 1))
    assert so_far.sleep_ns == 493 * NS_PER_MS
    assert so_far.on_cpu_ns == 2 * NS_PER_MS
    assert so_far.sibling_cpu_ns == 28 * NS_PER_MS


def test_a_thread_on_cpu_or_preempted_now_has_that_stretch_counted() -> None:
    now = START + 100 * NS_PER_MS
    running = activity_so_far(state(OFF_ON_CPU, 40, []), 50 * NS_PER_MS, now)
    assert running.on_cpu_ns == (2 + 60) * NS_PER_MS
    waiting = activity_so_far(state(OFF_RUNQ, 40, []), 50 * NS_PER_MS, now)
    assert waiting.runq_ns == 60 * NS_PER_MS


def test_a_sleep_with_no_free_slot_goes_to_the_rest() -> None:
    full = [(nr, 1, 1) for nr in range(1, SLEEP_SLOTS + 1)]
    so_far = activity_so_far(state(FUTEX, 10, full), 0, START + 30 * NS_PER_MS)
    assert so_far.other_sleep_ns == 20 * NS_PER_MS
    assert len(so_far.sleeps) == SLEEP_SLOTS


def test_unused_slots_are_left_out_when_reading_a_finished_block() -> None:
    raw = state(OFF_ON_CPU, 0, [(FUTEX, 5, 2)])
    assert activity_from_c(raw.activity).sleeps == (Sleep("futex", 5 * NS_PER_MS, 2),)
