"""A free-threaded CPython (3.14t, built here from source): what works, and what is refused.

The kernel's part does not depend on the build: blocks, their durations and
their causes, except that such a process has no GIL to wait for. Our frame
reader reads its stacks with the offsets it publishes (its own constants,
each thread's copy of the bytecode); Austin 4.0.0 finds its threads but no
frame, and the context reader (trace links, task names) knows no layout of
its objects: each of these is said once, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.interpreters import FREE_THREADED_SETUP, free_threaded_venv
from otel_blocksnoop.analysis.cause import classify
from otel_blocksnoop.events import NS_PER_MS, Activity, Cause, Sleep
from otel_blocksnoop.stacks.memory import AUSTIN_NO_FREE_THREADED
from tests.helpers import BLOCKER, IN_CI, matching_block, run_sidecar, truth
from tests.integration.test_stacks import CALL_SITES, CAUSES, assert_call_site

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

FREE_THREADED_CAUSES: dict[str, tuple[str, set[str | None]]] = {
    **CAUSES,
    "lock": ("syscall", {"futex", "sched_yield"}),
}
"""A free-threaded build's lock spins in sched_yield before it sleeps in futex; on a
busy machine each yield waits out others' slices, and the spin can fill the block."""
NO_GIL_CAUSES = {("cpu", None), ("sched", None), ("syscall", "sched_yield")}
"""The ``gil`` scenario's loop on a build without one: it just runs, or (on a busy
machine) waits for its busy thread's start (``threading.Thread.start`` waits in an
``Event``, whose lock spins in sched_yield as above)."""


@pytest.fixture(scope="module")
def python() -> Path:
    """The free-threaded build's venv, with every package the test apps import."""
    found = free_threaded_venv()
    if found is None:
        why = f"no free-threaded CPython here: `bash {FREE_THREADED_SETUP}` (make test runs it)"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    return found


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_free_threaded_app_gets_its_stacks_from_memory_and_no_gil_cause(
    tmp_path: Path, python: Path, loop: str
) -> None:
    # GIVEN an app on CPython 3.14t that blocks seven known ways, one of them making
    # calls while another thread runs Python (the GIL's case in a build with one)
    out = tmp_path / "truth.jsonl"
    extra = ["--uvloop"] if loop == "uvloop" else []
    run = run_sidecar(
        "--json", "-v", "-t", "50", "--", str(python), str(BLOCKER), "all", "--out", str(out),
        *extra,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # THEN our reader reads the stacks (Austin cannot), trace links are refused with why
    assert f"(CPython 3.14) from its memory ({AUSTIN_NO_FREE_THREADED})" in run.stderr
    assert "trace links disabled for process" in run.stderr
    assert "python3.14t is a free-threaded build" in run.stderr
    # AND each block names its call, down to the line, with its cause; there is no GIL,
    # so the loop that made calls beside a busy thread just ran
    expected = truth(out)
    assert [r["scenario"] for r in expected] == list(CALL_SITES)
    for true_block in expected:
        block = matching_block(run.blocks, true_block)
        scenario = true_block["scenario"]
        if scenario == "gil":
            assert block["call_site"]["function"].endswith("gil_contention"), block
            assert (block["cause"], block["syscall"]) in NO_GIL_CAUSES, block["sleeps"]
        else:
            assert_call_site(block, scenario, FREE_THREADED_CAUSES)
    assert "gil" not in {block["cause"] for block in run.blocks}


def test_loops_in_other_threads_are_read_through_their_own_bytecode(
    tmp_path: Path, python: Path
) -> None:
    # GIVEN two loops in threads of their own: each thread runs its own copy of the
    # bytecode (co_tlbc), not the code object's
    out = tmp_path / "truth.jsonl"
    run = run_sidecar(
        "--json", "-t", "50", "--", str(python), str(BLOCKER), "two-threads", "--out", str(out)
    )
    assert run.returncode == 0, run.stderr
    # THEN each block names the line that blocked it
    expected = truth(out)
    assert len(expected) == 2
    for true_block in expected:
        site = matching_block(run.blocks, true_block)["call_site"]
        assert site is not None, true_block
        assert site["function"].endswith("body"), site
        line = Path(site["file"]).read_text().splitlines()[site["line"] - 1]
        assert "time.sleep(args.ms / 1000)" in line, line


def test_austin_asked_for_a_free_threaded_app_says_it_gets_no_stacks(
    tmp_path: Path, python: Path
) -> None:
    # GIVEN the app watched with Austin for its stacks
    out = tmp_path / "truth.jsonl"
    run = run_sidecar(
        "--json", "-t", "50", "--stacks-from", "austin", "--",
        str(python), str(BLOCKER), "cpu", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # THEN it says once that there are none, and why; the block is reported without them
    assert run.stderr.count("no stacks for process") == 1, run.stderr
    assert AUSTIN_NO_FREE_THREADED in run.stderr
    (true_block,) = truth(out)
    block = matching_block(run.blocks, true_block)
    assert (block["cause"], block["call_site"]) == ("cpu", None)


def books(block: dict[str, Any]) -> Activity:
    """What the kernel booked for a block, from its JSON record."""
    sleeps = tuple(
        Sleep(s["syscall"], int(s["ms"] * NS_PER_MS), s["count"]) for s in block["sleeps"]
    )
    sleep_ns = int((block["off_cpu_ms"] - block["runq_ms"]) * NS_PER_MS)
    return Activity(
        on_cpu_ns=int(block["on_cpu_ms"] * NS_PER_MS),
        runq_ns=int(block["runq_ms"] * NS_PER_MS),
        sleep_ns=sleep_ns,
        sleeps=sleeps,
        other_sleep_ns=max(0, sleep_ns - sum(s.ns for s in sleeps)),
        sibling_cpu_ns=int(block["sibling_cpu_ms"] * NS_PER_MS),
    )


GIL_SHAPED_TRIES = 3
"""Runs of the app until the kernel books its lock waits as a GIL wait would look.

On a busy machine the run queue may outweigh them (the block is then ``sched``
or ``cpu`` whatever the build): such a run proves nothing either way."""


def test_a_lock_waited_for_in_short_waits_beside_a_busy_thread_is_a_futex_not_the_gil(
    tmp_path: Path, python: Path
) -> None:
    # GIVEN a loop waiting again and again for a lock (a bare futex) that a thread
    # running Python holds 1 ms at a time, for 300 ms: many short futex waits while a
    # sibling runs, which in a build with a GIL is how a wait for the GIL looks
    seen = []
    for attempt in range(GIL_SHAPED_TRIES):
        out = tmp_path / f"truth-{attempt}.jsonl"
        run = run_sidecar(
            "--json", "-t", "50", "--", str(python), str(BLOCKER), "contended", "--ms", "300",
            "--out", str(out),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        (true_block,) = truth(out)
        block = matching_block(run.blocks, true_block)
        assert block["call_site"]["function"].endswith("contended_lock"), block["call_site"]
        # THEN the block is never the GIL's
        assert block["cause"] != "gil", block
        seen.append((block["cause"], block["syscall"], block["sleeps"], block["runq_ms"]))
        if classify(books(block), 50 * NS_PER_MS) == (Cause.GIL, None):
            # AND where the books are those of a GIL wait, it is the lock's futex
            assert (block["cause"], block["syscall"]) == ("syscall", "futex"), block
            return
    pytest.fail(f"the lock waits never looked like a GIL wait in {GIL_SHAPED_TRIES} runs: {seen}")
