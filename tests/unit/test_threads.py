from __future__ import annotations

from pathlib import Path

import pytest

from otel_blocksnoop.events import Frame, ThreadKind
from otel_blocksnoop.stacks import threads
from otel_blocksnoop.stacks.austin import Austin, AustinError, parse_where
from otel_blocksnoop.stacks.threads import ThreadClassifier, classify, reported

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
    """Answers `where` with a fixed dump and counts the calls."""

    def __init__(self, stacks: dict[int, tuple[Frame, ...]]) -> None:
        self.stacks = stacks
        self.calls = 0

    def where(self, pid: int) -> dict[int, tuple[Frame, ...]]:
        _ = pid
        self.calls += 1
        return self.stacks


LOOP_STACK = (Frame("BaseEventLoop.run_forever", f"{STDLIB}/asyncio/base_events.py", 607),)


def test_one_dump_classifies_every_thread_of_the_process() -> None:
    austin = FakeAustin({1: LOOP_STACK, 2: LOOP_STACK})
    classifier = ThreadClassifier(austin)  # type: ignore[arg-type]
    assert classifier.kind(1, 1) == ThreadKind.LOOP
    assert classifier.kind(1, 2) == ThreadKind.LOOP
    assert austin.calls == 1


def test_the_cache_stays_bounded_under_thread_churn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "MAX_REMEMBERED", 10)
    austin = FakeAustin({})
    classifier = ThreadClassifier(austin)  # type: ignore[arg-type]
    for tid in range(100, 150):
        classifier.kind(1, tid)  # threads that vanished: unknown, remembered briefly
    assert len(classifier._kinds) == 10  # noqa: SLF001 - the bound is the point


def test_a_missing_austin_means_every_thread_is_reported() -> None:
    assert ThreadClassifier(None).kind(1, 1) == ThreadKind.UNKNOWN


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
