"""Splitting one block's samples into every call site that held the loop, with its share."""

from __future__ import annotations

from dataclasses import replace

import pytest

from otel_blocksnoop.analysis.calls import CallSites, split
from otel_blocksnoop.events import Activity, Cause, Frame, Sleep, StackSample

MS = 1_000_000
APP = "/srv/app.py"
RUN = Frame("_run", "/usr/lib/python3.11/asyncio/events.py", 80)
HANDLER = Frame("handle", APP, 10)
IDLE = (Frame("select", "/usr/lib/python3.11/selectors.py", 468),)


def at(line: int, function: str = "handle") -> tuple[Frame, ...]:
    """A stack whose innermost application frame is ``function`` at ``line``."""
    if function == "handle":
        return (RUN, Frame("handle", APP, line))
    return (RUN, HANDLER, Frame(function, APP, line))


def sampled(
    *parts: tuple[tuple[Frame, ...], int], every_ms: float = 1, from_ms: float = 0.5
) -> list[StackSample]:
    """``count`` samples of each stack in turn, one every ``every_ms``."""
    out: list[StackSample] = []
    time = from_ms
    for stack, count in parts:
        for _ in range(count):
            out.append(StackSample(int(time * MS), stack))
            time += every_ms
    return out


def books(on_cpu_ms: float, *sleeps: tuple[str, float]) -> Activity:
    sleep_ns = sum(int(ms * MS) for _, ms in sleeps)
    return Activity(
        on_cpu_ns=int(on_cpu_ms * MS),
        runq_ns=0,
        sleep_ns=sleep_ns,
        sleeps=tuple(Sleep(name, int(ms * MS), 1) for name, ms in sleeps),
        other_sleep_ns=0,
        sibling_cpu_ns=0,
    )


def run(
    samples: list[StackSample],
    end_ms: float,
    activity: Activity | None = None,
    whole: tuple[Cause, str | None] = (Cause.UNKNOWN, None),
    *,
    gil_possible: bool = True,
) -> CallSites:
    return split(
        samples,
        0,
        int(end_ms * MS),
        activity=activity,
        whole=whole,
        to_unix=lambda ns: ns + 7,
        gil_possible=gil_possible,
    )


def shares_ms(found: CallSites) -> list[tuple[str, int, float]]:
    return [
        (site.frame.function, site.frame.line, round(site.share_ns / MS, 1)) for site in found.sites
    ]


def test_three_calls_in_one_callback_are_three_call_sites_in_order_with_their_shares() -> None:
    # GIVEN a callback that slept 20 ms, then hashed 30 ms, then read a socket 10 ms
    samples = sampled((at(11), 20), (at(12), 30), (at(13), 10))
    # WHEN the block is split
    found = run(samples, 60)
    # THEN each call is named at its line, in order, with its time
    assert shares_ms(found) == [("handle", 11, 20.0), ("handle", 12, 30.0), ("handle", 13, 10.0)]
    assert found.left_out == 0
    assert found.unsampled_ns == 0


def test_a_python_loop_moving_between_its_lines_is_one_call_site() -> None:
    # GIVEN a pure-Python loop in spin() whose samples land on lines 30 and 31 by turns
    samples = sampled(*[(at(30 + i % 2, "spin"), 1 + i % 3) for i in range(12)])
    found = run(samples, len(samples))
    # THEN it is one call site, at the line seen most, with the whole time
    assert len(found.sites) == 1
    site = found.sites[0]
    assert site.frame.function == "spin"
    assert site.share_ns == len(samples) * MS


def test_a_call_site_seen_in_one_sample_is_left_out_and_counted_never_named() -> None:
    # GIVEN one stray sample between two calls
    samples = sampled((at(11), 10), (at(99), 1), (at(12), 10))
    found = run(samples, 21)
    assert [site.frame.line for site in found.sites] == [11, 12]
    assert found.left_out == 1
    # AND its time is in no call site's share
    assert sum(site.share_ns for site in found.sites) == 20 * MS


def test_the_same_call_site_twice_is_one_at_its_first_place_with_both_shares() -> None:
    samples = sampled((at(11), 5), (at(12), 10), (at(11), 5))
    found = run(samples, 20)
    assert shares_ms(found) == [("handle", 11, 10.0), ("handle", 12, 10.0)]
    assert found.sites[0].start_ns == 0


def test_time_before_the_first_sample_is_unsampled_not_given_to_the_first_call() -> None:
    # GIVEN sampling that began 5 ms into the block (the kernel's trigger)
    samples = sampled((at(11), 15), (at(12), 10), from_ms=5.5)
    found = run(samples, 30)
    # THEN the first call site's share is what its samples stand for, and it starts at 5 ms
    assert shares_ms(found) == [("handle", 11, 15.0), ("handle", 12, 10.0)]
    assert found.sites[0].start_ns == 5 * MS
    assert found.sites[0].start_unix_ns == 5 * MS + 7
    assert found.unsampled_ns == 5 * MS


def test_a_gap_in_the_sampling_is_nobodys_time() -> None:
    samples = [*sampled((at(11), 10)), *sampled((at(12), 10), from_ms=40.5)]
    found = run(samples, 50.5)
    # THEN neither call gets the 20 ms nobody sampled (each sample one interval at most)
    assert all(site.share_ns <= 11 * MS for site in found.sites)
    assert found.unsampled_ns >= 19 * MS


def test_samples_of_the_loop_idling_stand_for_no_call_site() -> None:
    samples = sampled((at(11), 10), (IDLE, 5))
    found = run(samples, 15)
    assert shares_ms(found) == [("handle", 11, 10.0)]


def test_each_call_site_gets_the_syscall_whose_sleep_matches_it_and_the_rest_is_cpu() -> None:
    # GIVEN a 20 ms sleep, 30 ms of hashing, a 10 ms socket read, as the kernel booked them
    samples = sampled((at(11), 20), (at(12), 30), (at(13), 10))
    activity = books(30.4, ("clock_nanosleep", 20.1), ("recvfrom", 9.8))
    found = run(samples, 60, activity, whole=(Cause.CPU, None))
    # THEN each call has its own cause
    assert [(site.cause, site.syscall) for site in found.sites] == [
        (Cause.SYSCALL, "clock_nanosleep"),
        (Cause.CPU, None),
        (Cause.SYSCALL, "recvfrom"),
    ]


@pytest.mark.parametrize(
    ("gil_possible", "cause"),
    [(True, (Cause.GIL, None)), (False, (Cause.SYSCALL, "futex"))],
    ids=["with-gil", "free-threaded"],
)
def test_a_call_site_waiting_in_short_futex_waits_is_the_gil_only_in_a_build_with_one(
    gil_possible: bool,
    cause: tuple[Cause, str | None],
) -> None:
    # GIVEN 30 ms of hashing, then 20 ms in eight short futex waits while a sibling ran
    samples = sampled((at(11), 30), (at(12), 20))
    activity = replace(
        books(30.2),
        sleeps=(Sleep("futex", int(19.8 * MS), 8),),
        sleep_ns=int(19.8 * MS),
        sibling_cpu_ns=19 * MS,
    )
    # WHEN the block is split, for a build with a GIL and for a free-threaded one
    found = run(samples, 50, activity, gil_possible=gil_possible)
    # THEN the waiting call site is the GIL only where there is one; else a lock (futex)
    assert [(site.cause, site.syscall) for site in found.sites] == [(Cause.CPU, None), cause]


def test_the_first_call_site_cut_by_the_unsampled_head_takes_no_sleep() -> None:
    # GIVEN a 20 ms sleep of which only the last 15 ms were sampled, then 10 ms of CPU
    samples = sampled((at(11), 15), (at(12), 10), from_ms=5.5)
    found = run(samples, 30, books(10.2, ("clock_nanosleep", 20.0)))
    # THEN its share says too little to give it the sleep, and the sleep left over
    # may be anybody's: no cause for either
    assert [site.cause for site in found.sites] == [Cause.UNKNOWN, Cause.UNKNOWN]


def test_a_cpu_call_first_in_the_block_never_takes_the_next_ones_futex() -> None:
    # GIVEN (seen on a loaded machine) pbkdf2 sampled for 31 ms after a 7 ms unsampled
    # head, then a thread start waiting 36.5 ms in futex over 75 ms, a 20 ms recv
    samples = sampled((at(11), 31), (at(12), 75), (at(13), 20), from_ms=7.5)
    activity = books(30, ("futex", 36.5), ("recvfrom", 19.0))
    found = run(samples, 133, activity)
    # THEN pbkdf2 is not said to have waited in futex
    assert (found.sites[0].cause, found.sites[0].syscall) != (Cause.SYSCALL, "futex")
    assert found.sites[2].syscall == "recvfrom"


def test_a_share_between_two_sleeps_takes_neither() -> None:
    # GIVEN (seen) a recv sampled for 16 ms, with 14.5 ms in clock_nanosleep and 18.1 ms
    # in recvfrom booked for the block: it fits one within the tolerance, the other nearly
    samples = sampled((at(11), 30), (at(12), 16), (at(13), 10))
    activity = books(30, ("clock_nanosleep", 14.5), ("recvfrom", 18.1))
    found = run(samples, 56, activity)
    assert found.sites[1].cause == Cause.UNKNOWN


def test_a_gap_in_the_sampling_leaves_every_call_site_without_a_cause() -> None:
    samples = [*sampled((at(11), 10), (at(12), 20)), *sampled((at(13), 5), from_ms=45.5)]
    activity = books(25.2, ("clock_nanosleep", 10.0))
    found = run(samples, 50.5, activity)
    assert found.unsampled_ns > 10 * MS
    assert {site.cause for site in found.sites} == {Cause.UNKNOWN}


def test_two_calls_the_kernels_books_fit_both_ways_get_no_cause() -> None:
    # GIVEN two 10 ms calls and 10 ms asleep in read and 10 ms on a CPU: which was which?
    samples = sampled((at(11), 10), (at(12), 10))
    activity = Activity(10 * MS, 0, 10 * MS, (Sleep("read", 10 * MS, 1),), 0, 0)
    found = run(samples, 20, activity)
    assert [site.cause for site in found.sites] == [Cause.UNKNOWN, Cause.UNKNOWN]


def test_a_sleep_no_call_site_took_leaves_the_rest_without_a_cause() -> None:
    # GIVEN three calls, two of which fit the 11 ms and 13.5 ms sleeps alike, on a
    # machine so busy that the time on a CPU or waiting for one adds up to all three
    samples = sampled((at(11), 10), (at(12), 12), (at(13), 12))
    activity = replace(books(10, ("read", 11), ("futex", 13.5)), runq_ns=24 * MS)
    found = run(samples, 34, activity)
    # THEN no call site is said to be on a CPU: an unplaced sleep may be in any of them
    assert Cause.CPU not in [site.cause for site in found.sites]


def test_a_sleep_too_short_to_tell_is_not_given_to_a_short_call_site() -> None:
    # GIVEN a 2 ms stretch of the handler's own code, then 30 ms of CPU; 0.3 ms in futex
    samples = sampled((at(11), 2), (at(12, "spin"), 30))
    found = run(samples, 32, books(31.7, ("futex", 0.3)))
    # THEN the short site is not said to have waited in futex
    assert "futex" not in [site.syscall for site in found.sites]


def test_a_block_of_one_call_site_has_the_blocks_cause() -> None:
    found = run(sampled((at(11), 20)), 20, books(0.1, ("futex", 19.9)), (Cause.SYSCALL, "futex"))
    assert [(site.cause, site.syscall) for site in found.sites] == [(Cause.SYSCALL, "futex")]


def test_the_only_call_site_seen_takes_the_blocks_cause_only_if_it_spans_the_block() -> None:
    # GIVEN 20 ms of pbkdf2 seen, then nothing sampled for the 200 ms the block slept in futex
    found = run(sampled((at(11), 20)), 220, books(20, ("futex", 200)), (Cause.SYSCALL, "futex"))
    # THEN the block's cause is not given to it
    assert [site.cause for site in found.sites] == [Cause.UNKNOWN]


def test_no_samples_no_call_sites() -> None:
    found = run([], 20)
    assert found.sites == ()
    assert found.left_out == 0
