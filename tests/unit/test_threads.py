from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from otel_blocksnoop.events import Frame, ThreadKind
from otel_blocksnoop.stacks import threads
from otel_blocksnoop.stacks.austin import (
    REASON_CHARS,
    WHERE_TIMEOUT_S,
    Austin,
    AustinError,
    parse_where,
)
from otel_blocksnoop.stacks.austin import reason as austin_reason
from otel_blocksnoop.stacks.threads import ThreadClassifier, classify, reported

WAIT_S = 30.0
DATA = Path(__file__).resolve().parent.parent / "data"
STDLIB = "/usr/lib/python3.11"


def test_parse_where_reads_a_recorded_austin_dump_with_colours() -> None:
    # GIVEN the raw output of `austin -w` for an app with two loop threads and a worker
    stacks = parse_where((DATA / "austin_where_two_loops.txt").read_text())
    # THEN every thread is there, keyed by native tid, frames outermost first
    assert len(stacks) == 3
    worker = stacks[3099]
    assert worker[-1] == Frame("worker", "/tmp/app2.py", 9)  # noqa: S108 - recorded path
    assert worker[0].function == "Thread._bootstrap"


def test_parse_where_of_nothing_is_empty() -> None:
    assert parse_where("") == {}


def test_a_thread_absent_from_the_dump_is_native_and_not_reported() -> None:
    assert classify(None) == ThreadKind.NATIVE
    assert not reported(ThreadKind.NATIVE)


def test_asyncio_and_uvloop_frames_mean_a_loop() -> None:
    asyncio_stack = (
        Frame("<module>", "/app/main.py", 3),
        Frame("BaseEventLoop.run_forever", f"{STDLIB}/asyncio/base_events.py", 607),
    )
    uvloop_stack = (Frame("run", "/venv/lib/python3.11/site-packages/uvloop/__init__.py", 105),)
    assert classify(asyncio_stack) == ThreadKind.LOOP
    assert classify(uvloop_stack) == ThreadKind.LOOP


def test_a_grpc_serving_thread_is_a_poller_and_not_reported() -> None:
    stack = (
        Frame("Thread.run", f"{STDLIB}/threading.py", 982),
        Frame("_serve", "/venv/lib/python3.11/site-packages/grpc/_server.py", 1200),
    )
    assert classify(stack) == ThreadKind.POLLER
    assert not reported(ThreadKind.POLLER)


def test_other_python_threads_are_reported_rather_than_risk_a_miss() -> None:
    stack = (Frame("run_app", "/venv/lib/python3.11/site-packages/aiohttp/web.py", 500),)
    assert classify(stack) == ThreadKind.UNKNOWN
    assert reported(ThreadKind.UNKNOWN)


class FakeAustin:
    """Answers `where` with a fixed dump (or fails) and counts the calls; can be held."""

    def __init__(self, stacks: dict[int, tuple[Frame, ...]], fail: bool = False) -> None:
        self.stacks = stacks
        self.fail = fail
        self.calls = 0
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def where(self, pid: int) -> dict[int, tuple[Frame, ...]]:
        self.calls += 1
        self.entered.set()
        self.release.wait()
        if self.fail:
            msg = f"failed to dump the threads of {pid}: Cannot attach to the given process."
            raise AustinError(msg)
        return self.stacks


LOOP_STACK = (Frame("BaseEventLoop.run_forever", f"{STDLIB}/asyncio/base_events.py", 607),)


def settled(classifier: ThreadClassifier) -> ThreadClassifier:
    assert classifier.wait_idle(WAIT_S), "the dump never finished"
    return classifier


def test_one_dump_classifies_every_thread_of_the_process() -> None:
    austin = FakeAustin({1: LOOP_STACK, 2: LOOP_STACK})
    classifier = ThreadClassifier(austin)  # type: ignore[arg-type]
    assert classifier.kind(1, 1) is None  # being looked at
    assert settled(classifier).kind(1, 1) == ThreadKind.LOOP
    assert classifier.kind(1, 2) == ThreadKind.LOOP
    assert austin.calls == 1


def test_a_thread_absent_from_the_dump_of_a_live_process_is_native() -> None:
    # GIVEN a dump of this process that lacks one of its live threads (this one)
    tid = threading.get_native_id()
    classifier = ThreadClassifier(FakeAustin({}))  # type: ignore[arg-type]
    classifier.kind(os.getpid(), tid)
    # THEN it is a native thread; one that does not exist is unknown (reported)
    assert settled(classifier).kind(os.getpid(), tid) == ThreadKind.NATIVE
    classifier.kind(os.getpid(), 999_999_999)
    assert settled(classifier).kind(os.getpid(), 999_999_999) == ThreadKind.UNKNOWN


def test_the_cache_stays_bounded_under_thread_churn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "MAX_REMEMBERED", 10)
    austin = FakeAustin({})
    classifier = ThreadClassifier(austin)  # type: ignore[arg-type]
    for tid in range(100, 150):
        classifier.kind(1, tid)  # threads that vanished: unknown, remembered briefly
        settled(classifier)
    assert len(classifier._kinds) == 10  # noqa: SLF001 - the bound is the point


def test_a_missing_austin_means_every_thread_is_reported() -> None:
    assert ThreadClassifier(None).kind(1, 1) == ThreadKind.UNKNOWN


def test_asking_never_waits_for_a_dump_that_hangs() -> None:
    # GIVEN an Austin whose dump does not come back
    austin = FakeAustin({1: LOOP_STACK})
    austin.release.clear()
    classifier = ThreadClassifier(austin)  # type: ignore[arg-type]
    try:
        # WHEN threads of the process are asked about while it hangs
        assert classifier.kind(1, 1) is None
        assert austin.entered.wait(WAIT_S)
        answers = [classifier.kind(1, tid) for tid in range(2, 50)]
        # THEN each call returns at once, "not known yet"
        assert answers == [None] * 48
    finally:
        austin.release.set()
    # AND the threads asked meanwhile take one more dump, not one each
    settled(classifier)
    assert austin.calls == 2


def test_a_failed_dump_is_not_tried_again_for_the_back_off() -> None:
    # GIVEN an Austin that cannot read the process (another mount namespace, say)
    austin = FakeAustin({}, fail=True)
    classifier = ThreadClassifier(austin)  # type: ignore[arg-type]
    classifier.kind(1, 1)
    settled(classifier)
    # WHEN blocks of other threads of that process come in
    kinds = [classifier.kind(1, tid) for tid in range(1, 100)]
    # THEN they are reported as unknown at once, with no new dump
    assert kinds == [ThreadKind.UNKNOWN] * 99
    assert settled(classifier).dumps == 1
    assert austin.calls == 1


def test_a_failed_dump_is_tried_again_after_the_back_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "WHERE_BACKOFF_S", 0.0)
    austin = FakeAustin({}, fail=True)
    classifier = ThreadClassifier(austin)  # type: ignore[arg-type]
    classifier.kind(1, 1)
    settled(classifier)
    austin.fail = False
    austin.stacks = {2: LOOP_STACK}
    classifier.kind(1, 2)
    assert settled(classifier).kind(1, 2) == ThreadKind.LOOP


def test_a_closed_classifier_starts_no_dump() -> None:
    austin = FakeAustin({1: LOOP_STACK})
    classifier = ThreadClassifier(austin)  # type: ignore[arg-type]
    classifier.close()
    assert classifier.kind(1, 1) == ThreadKind.UNKNOWN
    assert austin.calls == 0


def test_an_austin_that_is_not_austin_is_refused(tmp_path: Path) -> None:
    # GIVEN a "binary" that runs but prints no Austin version
    fake = tmp_path / "austin"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    # THEN finding works, but the version check fails with a clear reason
    with pytest.raises(AustinError, match=r"failed to run .*: hello"):
        Austin.find(str(fake)).version()


def test_an_explicit_austin_path_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AustinError, match="not an executable file"):
        Austin.find(str(tmp_path / "nope"))


@pytest.mark.parametrize("value", ["{tmp}/no-austin-here", "{tmp}"])
def test_an_austinpath_that_names_no_austin_is_an_error_that_names_it(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN $AUSTINPATH set to a missing file, or to a directory without austin in it,
    # while the venv has an Austin the search would otherwise fall back to
    austinpath = value.format(tmp=tmp_path)
    monkeypatch.setenv("AUSTINPATH", austinpath)

    # WHEN Austin is looked for
    with pytest.raises(AustinError) as error:
        Austin.find()

    # THEN the error names the variable and what it pointed at
    assert str(error.value).startswith(f"failed to find Austin at $AUSTINPATH={austinpath} (")
    assert str(error.value).endswith("): not an executable file")


def test_an_austinpath_directory_holding_austin_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "austin"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("AUSTINPATH", str(tmp_path))
    assert Austin.find().path == binary


def test_the_flag_is_used_whatever_austinpath_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "austin"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("AUSTINPATH", str(tmp_path / "no-austin-here"))
    assert Austin.find(str(binary)).path == binary


def test_the_opentelemetry_sdks_export_thread_is_a_poller_and_not_reported() -> None:
    # GIVEN the SDK's batch worker, which polls epoll through gRPC while exporting
    sdk = "/srv/.venv/lib/python3.11/site-packages/opentelemetry/sdk"
    worker = (
        Frame("Thread._bootstrap", "/usr/lib/python3.11/threading.py", 995),
        Frame("BatchProcessor.worker", f"{sdk}/_shared_internal/__init__.py", 176),
    )
    ticker = (
        Frame("Thread.run", "/usr/lib/python3.11/threading.py", 975),
        Frame(
            "PeriodicExportingMetricReader._ticker",
            f"{sdk}/metrics/_internal/export/__init__.py",
            520,
        ),
    )
    assert classify(worker) == ThreadKind.POLLER
    assert classify(ticker) == ThreadKind.POLLER


RUNNERS = f"{STDLIB}/asyncio/runners.py"
BASE = f"{STDLIB}/asyncio/base_events.py"


def test_a_loop_being_closed_after_asyncio_run_is_not_a_running_loop() -> None:
    # GIVEN stacks of asyncio.run's way out: 3.11+'s Runner.close, and 3.9's finally
    runner_close = (
        Frame("run", RUNNERS, 190),
        Frame("Runner.__exit__", RUNNERS, 62),
        Frame("Runner.close", RUNNERS, 72),
        Frame("BaseEventLoop.close", BASE, 690),
    )
    app_close = (
        Frame("<module>", "/app/main.py", 9),
        Frame("run", RUNNERS, 47),
        Frame("SlowLoop.close", "/app/main.py", 5),
    )
    # THEN neither is taken for a loop running an iteration
    assert classify(runner_close) == ThreadKind.UNKNOWN
    assert classify(app_close) == ThreadKind.UNKNOWN


def test_iterations_run_by_asyncio_run_or_its_close_are_a_running_loop() -> None:
    # GIVEN a handler under asyncio.run, the tasks cancelled inside Runner.close,
    # and a handler under uvloop, whose run_until_complete has no Python frame
    handler = (
        Frame("run", RUNNERS, 190),
        Frame("Runner.run", RUNNERS, 118),
        Frame("BaseEventLoop.run_until_complete", BASE, 641),
        Frame("BaseEventLoop.run_forever", BASE, 608),
        Frame("BaseEventLoop._run_once", BASE, 1936),
        Frame("handler", "/app/main.py", 20),
    )
    cancelling = (
        Frame("Runner.close", RUNNERS, 71),
        Frame("_cancel_all_tasks", RUNNERS, 196),
        Frame("BaseEventLoop.run_until_complete", BASE, 641),
        Frame("BaseEventLoop.run_forever", BASE, 608),
    )
    uvloop_handler = (
        Frame("run", "/venv/lib/python3.11/site-packages/uvloop/__init__.py", 105),
        Frame("Runner.run", RUNNERS, 118),
        Frame("wrapper", "/venv/lib/python3.11/site-packages/uvloop/__init__.py", 61),
        Frame("handler", "/app/main.py", 20),
    )
    # THEN each is a loop
    for stack in (handler, cancelling, uvloop_handler):
        assert classify(stack) == ThreadKind.LOOP, stack


def test_a_failed_dump_says_austins_reason_not_its_last_line() -> None:
    # GIVEN what Austin 4.0.0 printed for a process it cannot read: a banner, the
    # reason, then advice ending in "like frameworks used, command line etc ...."
    stderr = (DATA / "austin_where_not_python.stderr").read_text()
    # THEN the reason is its first sentence, without the advice
    assert austin_reason(stderr, 10) == "Cannot determine the version of the Python interpreter."
    no_process = austin_reason((DATA / "austin_where_no_process.stderr").read_text(), 1)
    assert no_process.startswith("Cannot attach to the given process. Make sure")
    assert len(no_process) <= REASON_CHARS


def test_a_reason_is_capped_and_an_empty_one_gives_the_exit_status() -> None:
    assert len(austin_reason("x" * 1000)) == REASON_CHARS
    assert austin_reason("", 3) == "exit status 3"


def test_a_dump_asks_austin_to_give_up_before_the_dump_is_timed_out(tmp_path: Path) -> None:
    # GIVEN an "Austin" that notes its arguments and fails the way Austin does
    args = tmp_path / "args"
    fake = tmp_path / "austin"
    stderr = DATA / "austin_where_not_python.stderr"
    fake.write_text(f'#!/bin/sh\necho "$@" > {args}\ncat {stderr} >&2\nexit 10\n')
    fake.chmod(0o755)
    # WHEN it is asked for a dump
    with pytest.raises(AustinError) as failed:
        Austin(fake).where(1234)
    # THEN its own attach wait (-t, ms) ends before our timeout, and its reason is shown
    argv = args.read_text().split()
    assert argv[argv.index("-w") + 1] == "1234"
    assert int(argv[argv.index("-t") + 1]) < WHERE_TIMEOUT_S * 1000
    assert str(failed.value) == (
        "failed to dump the threads of 1234: "
        "Cannot determine the version of the Python interpreter."
    )


def test_a_thread_looked_at_again_waits_for_the_new_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a thread not in the first dump (native), which starts a loop later
    monkeypatch.setattr(threads, "RECHECK_S", 0.0)
    tid = threading.get_native_id()
    austin = FakeAustin({})
    classifier = ThreadClassifier(austin)  # type: ignore[arg-type]
    classifier.kind(os.getpid(), tid)
    settled(classifier)
    austin.stacks = {tid: LOOP_STACK}
    # WHEN it is asked about again once it is due for another look
    assert classifier.kind(os.getpid(), tid) is None
    # THEN the answer is the new dump's, not the old one
    assert settled(classifier).kind(os.getpid(), tid) == ThreadKind.LOOP


CLOSING_STACK = (
    Frame("run", RUNNERS, 190),
    Frame("Runner.__exit__", RUNNERS, 62),
    Frame("Runner.close", RUNNERS, 72),
    Frame("BaseEventLoop.close", BASE, 690),
)


def test_a_thread_dumped_while_its_loop_closes_is_a_loops_thread() -> None:
    # GIVEN a dump taken late, while asyncio.run closes the thread's loop
    classifier = ThreadClassifier(FakeAustin({1: CLOSING_STACK}))  # type: ignore[arg-type]
    classifier.kind(1, 1)
    # THEN the thread is a loop's (its teardown is then told by its samples), not
    # unknown (reported, whatever its stacks show)
    assert settled(classifier).kind(1, 1) == ThreadKind.LOOP
    assert threads.thread_kind(CLOSING_STACK) == ThreadKind.LOOP
    assert classify(CLOSING_STACK) == ThreadKind.UNKNOWN  # as a sample: no iteration runs


def test_a_later_dump_does_not_unmake_a_loops_thread() -> None:
    # GIVEN a thread known as a loop's, and a dump asked for by another thread
    # of the process after the loop's thread left its loop
    austin = FakeAustin({1: LOOP_STACK})
    classifier = ThreadClassifier(austin)  # type: ignore[arg-type]
    classifier.kind(1, 1)
    settled(classifier)
    austin.stacks = {1: (Frame("<module>", "/app/main.py", 30),), 2: LOOP_STACK}
    classifier.kind(1, 2)
    settled(classifier)
    # THEN it is still a loop's thread, as it was answered before that dump
    assert austin.calls == 2
    assert classifier.kind(1, 1) == ThreadKind.LOOP
    assert classifier.kind(1, 2) == ThreadKind.LOOP
