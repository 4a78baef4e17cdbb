"""Every call site of a block: real handlers making 2, 3 and 5 blocking calls in one callback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness import TARGETS
from harness.interpreters import SID_MINORS
from tests.helpers import matching_block, run_sidecar, truth
from tests.integration.conftest import sid_python
from tests.integration.test_stacks import PYTHONS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

CALLS = TARGETS / "calls.py"
MS = 1_000_000
NAMED_FROM_MS = 5.0
"""Calls of at least this long (in the sampled part of the block) must be named."""
UNSAMPLED_SHARE = 0.1
"""A block missing more of its samples than this (past the unsampled head) is held only to
naming right what was sampled: on a saturated machine the sampler may be kept from it."""
ROUNDS = 2
"""Each handler runs twice: on a saturated machine the sampler may be kept from a block."""
HANDLER = "handler"  # the callback itself: its own few lines between the calls

# The cause each call may be given (the kernel's books may also leave it unknown), by the
# source of the line named: a line elsewhere in a call (a thread's start) may have any.
CAUSES: dict[str, set[tuple[str, str | None]]] = {
    "time.sleep(seconds)": {("syscall", "clock_nanosleep")},
    "time.thread_time() < deadline": {("cpu", None)},
    "hashlib.pbkdf2_hmac(": {("cpu", None)},
    "ours.recv(1)": {("syscall", "recvfrom")},
    "lock.acquire()": {("syscall", "futex")},
}


INTERVAL_MS = 1.0
"""The sampling interval at ``-t 10``."""


def tolerance_ms(ms: float) -> float:
    """2 ms or 10% (the issue's bar, met in BENCHMARKS.md), and one sampling interval.

    Each end of a share falls between two samples, each timed by its own read:
    within half an interval of the truth while the sampler keeps its pace; on a
    busy machine a read held up for a CPU moves its sample by up to that again
    (seen: a 21.9 ms socket read given 19.2 ms, beside other test runs)."""
    return max(2.0, 0.1 * ms) + INTERVAL_MS


def runs(sites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neighbouring call sites in one function as one (the truth is timed per function)."""
    out: list[dict[str, Any]] = []
    for site in sites:
        if out and out[-1]["function"] == site["function"]:
            out[-1]["share_ms"] += site["share_ms"]
            out[-1]["end_ms"] = site["offset_ms"] + site["share_ms"]
            continue
        out.append(
            {
                "function": site["function"],
                "share_ms": site["share_ms"],
                "start_ms": site["offset_ms"],
                "end_ms": site["offset_ms"] + site["share_ms"],
            }
        )
    return out


def assert_none_invented(sites: list[dict[str, Any]], calls: list[dict[str, Any]]) -> None:
    """Each call site is in a call of its function, at its time (or the handler's own few
    lines between calls)."""
    for site in sites:
        end_ms = site["offset_ms"] + site["share_ms"]
        if site["function"] == HANDLER:
            assert site["share_ms"] < NAMED_FROM_MS, site
            continue
        assert any(
            call["function"] == site["function"]
            and site["offset_ms"] < call["end_ms"] + 2
            and end_ms > call["start_ms"] - 2
            for call in calls
        ), (site, calls)


def causes_told(sites: list[dict[str, Any]]) -> int:
    """Assert each call site's cause, where named, is its call's; how many were named."""
    told = 0
    for site in sites:
        if site["cause"] == "unknown":
            continue
        line = Path(site["file"]).read_text().splitlines()[site["line"] - 1]
        for snippet, causes in CAUSES.items():
            if snippet in line:
                assert (site["cause"], site["syscall"]) in causes, (site, line)
        told += 1
    return told


def check_block(block: dict[str, Any], handler: dict[str, Any]) -> tuple[bool, int, int]:
    """Assert the block's call sites against the handler's own timing.

    Returns whether it was sampled throughout, the causes named and the call sites.
    """
    start_ns = block["start_monotonic_ns"]
    sites = block["call_sites"]
    if not sites:  # no sample landed in it (a starved sampler): nothing named, nothing wrong
        assert block["unsampled_ms"] == 0 or block["unsampled_ms"] >= block["duration_ms"] - 1
        return False, 0, 0
    # The sampled part of the block: from the first sample on (sampling begins when the
    # kernel says the block is under way); gaps inside it are in unsampled_ms.
    sampled_from_ms = sites[0]["offset_ms"]
    gaps_ms = max(0.0, block["unsampled_ms"] - sampled_from_ms)
    calls = [
        {
            "function": call["function"],
            "start_ms": (call["start_ns"] - start_ns) / MS,
            "end_ms": (call["end_ns"] - start_ns) / MS,
        }
        for call in handler["calls"]
    ]
    for call in calls:
        call["seen_ms"] = call["end_ms"] - max(call["start_ms"], sampled_from_ms)
    assert_none_invented(sites, calls)
    named = [run for run in runs(sites) if run["function"] != HANDLER]
    due = [call for call in calls if call["seen_ms"] >= NAMED_FROM_MS]
    whole = gaps_ms <= UNSAMPLED_SHARE * block["duration_ms"]
    # What is named is in the order made, each call once (a call with under 5 ms
    # sampled may be named too)
    order = [call["function"] for call in calls]
    places = [order.index(run["function"]) for run in named]
    assert places == sorted(set(places)), (named, calls, block["unsampled_ms"])
    if whole:  # (else samples are missing inside the block: a starved sampler)
        # Every call of 5 ms or more named
        missing = {call["function"] for call in due} - {run["function"] for run in named}
        assert not missing, (missing, named, calls)
    for run in named:
        (call,) = (call for call in calls if call["function"] == run["function"])
        tolerance = tolerance_ms(call["seen_ms"])
        if whole and call in due:
            assert call["seen_ms"] - tolerance - gaps_ms <= run["share_ms"], (run, call, gaps_ms)
        assert run["share_ms"] <= call["seen_ms"] + tolerance, (run, call)
    return whole, causes_told(sites), len(sites)


def calls_command(version: str, *args: str) -> list[str]:
    """The argv that runs calls.py on CPython ``version``: the sidecar's or pyenv's, or sid's
    (in its root)."""
    if int(version.split(".")[1]) in SID_MINORS:
        return sid_python(f"py{version}").run(CALLS, *args)
    python = PYTHONS.get(version)
    if python is None:
        pytest.skip(f"no CPython {version} under pyenv here")
    return [str(python), str(CALLS), *args]


@pytest.mark.parametrize("version", ["3.11", "3.13", *(f"3.{m}" for m in SID_MINORS)])
def test_every_blocking_call_of_a_handler_is_named_in_order_with_its_share(
    tmp_path: Path, version: str
) -> None:
    # GIVEN handlers on this interpreter that make 2, 3 and 5 different blocking calls
    # in one callback each (sleep, CPU loop, pbkdf2, socket read, lock wait), timing each
    # call themselves (after 1 s: Austin attaches to a started interpreter)
    out = tmp_path / "truth.jsonl"
    target = calls_command(version, "--delay", "1", "--rounds", str(ROUNDS), "--out", str(out))
    # WHEN the sidecar watches them at -t 10 with its default stack source: on 3.11+ the
    # sidecar's own reads, each sample timed by its read (Austin's samples are placed by
    # summed per-pass deltas, which a pass that reads no thread leaves short)
    run = run_sidecar("--json", "-v", "-t", "10", "--", *target)
    assert "from its memory" in run.stderr
    assert run.returncode == 0, run.stderr
    handlers = truth(out)
    assert [h["scenario"] for h in handlers] == ["calls-2", "calls-3", "calls-5"] * ROUNDS
    # THEN each handler's block names every call it made, in order, with its share,
    # and nothing it did not make; a cause is never another call's
    told = sites = wholes = 0
    for handler in handlers:
        block = matching_block(run.blocks, handler)
        whole, named, count = check_block(block, handler)
        told, sites, wholes = told + named, sites + count, wholes + whole
    print(
        f"{wholes} of {len(handlers)} blocks sampled throughout; "
        f"causes named for {told} of {sites} call sites"
    )
    # AND the sampler missed nothing inside one block at least: the test is not vacuous
    assert wholes >= 1, run.blocks
