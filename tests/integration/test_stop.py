"""SIGINT/SIGTERM stop the sidecar within 5 s whatever the collector, the launched command or
Austin does, with blocks already detected; a second signal exits at once.

Each test measures the time from the signal to the sidecar's exit and prints it
(``pytest -s tests/integration/test_stop.py`` shows the figures).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

from harness import TARGETS
from harness.faulty import RefusingHttpCollector, SilentCollector, UnavailableGrpcCollector
from harness.otlp import OtlpReceiver
from otel_blocksnoop.errors import ExitCode
from otel_blocksnoop.stacks.austin import Austin
from tests.helpers import BLOCKER, SIDECAR, WAIT_S, Target
from tests.integration.test_export import Running, app, endpoint_of, otlp_env, running

__all__ = ["running"]  # the fixture, shared with test_export

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

STOP_BOUND_S = 5.0
"""README: from SIGINT/SIGTERM to exit, by default, whatever the collector does."""
AT_ONCE_S = 2.0
"""A second signal: exit "at once"; the kernel detaches the BPF programs as the process
exits (0.3-0.8 s seen), longer on a busy machine."""
Collector = RefusingHttpCollector | SilentCollector | UnavailableGrpcCollector

COLLECTORS: dict[str, tuple[Callable[[], Collector], str]] = {
    "http-503": (lambda: RefusingHttpCollector(HTTPStatus.SERVICE_UNAVAILABLE), "http/protobuf"),
    "http-429-retry-after": (
        lambda: RefusingHttpCollector(HTTPStatus.TOO_MANY_REQUESTS, retry_after=3),
        "http/protobuf",
    ),
    "http-silent": (SilentCollector, "http/protobuf"),
    "grpc-silent": (SilentCollector, "grpc"),
    "grpc-unavailable": (UnavailableGrpcCollector, "grpc"),
}

IGNORES_SIGINT_AND_SIGTERM = """\
import runpy, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.path.insert(0, {targets!r})
sys.argv = [{blocker!r}, *sys.argv[1:]]
runpy.run_path({blocker!r}, run_name="__main__")
"""


def until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Wait until ``condition`` holds (looked at every 10 ms); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.01)


def stop(run: Running, signum: int, label: str) -> tuple[float, int, list[dict[str, Any]], str]:
    """Signal the sidecar; (seconds until it exited, exit code, JSON records, stderr)."""
    sent = time.monotonic()
    run.process.send_signal(signum)
    run.process.wait(timeout=WAIT_S)
    elapsed = time.monotonic() - sent
    print(f"\nstop time {label}: {elapsed:.2f} s")  # the measurement, shown with -s
    code, records, stderr = run.finish()
    return elapsed, code, records, stderr


def launched_pid(line: str) -> int:
    """The PID in the sidecar's "launched PID N (...)" line: the command's process group."""
    found = re.search(r"launched PID (\d+)", line)
    assert found is not None, line
    return int(found.group(1))


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def no_otlp() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def stubborn(tmp_path: Path) -> Running:
    """The sidecar launching the blocker app with SIGINT and SIGTERM ignored."""
    script = tmp_path / "stubborn.py"
    script.write_text(IGNORES_SIGINT_AND_SIGTERM.format(targets=str(TARGETS), blocker=str(BLOCKER)))
    out = tmp_path / "truth.jsonl"
    command = [sys.executable, str(script), "all", "--linger", "60", "--out", str(out)]
    return Running(["-t", "50", "--", *command], no_otlp())


def assert_stopped_in_time(elapsed: float, stderr: str) -> None:
    assert elapsed <= STOP_BOUND_S, f"stopped {elapsed:.2f} s after the signal\n{stderr}"
    assert "/otel_blocksnoop/" not in stderr, "a traceback of the sidecar's own"  # the app's may be


@pytest.mark.parametrize("name", COLLECTORS)
def test_attach_mode_stops_within_5_s_whatever_the_collector_does(
    name: str, tmp_path: Path, running: list[Running]
) -> None:
    # GIVEN a sidecar that has reported blocks to a collector that fails or never answers
    make, protocol = COLLECTORS[name]
    with make() as collector:
        target = Target(tmp_path, "all", "--linger", "60")
        try:
            run = Running(["-t", "50", str(target.pid)], otlp_env(collector.endpoint, protocol))
            running.append(run)
            run.wait_attached()
            target.go()
            for _ in range(3):
                run.wait_for("block")
            until(lambda: collector.count > 0, "an export reached the collector")
            # WHEN it is told to stop
            elapsed, code, _, stderr = stop(run, signal.SIGTERM, f"attach {name}")
        finally:
            target.stop()
    # THEN it exits within the bound, and says what it could not deliver
    assert code == 0, stderr
    assert_stopped_in_time(elapsed, stderr)
    assert "failed to deliver" in stderr


@pytest.mark.parametrize("name", COLLECTORS)
def test_launch_mode_stops_within_5_s_whatever_the_collector_does(
    name: str, tmp_path: Path, running: list[Running]
) -> None:
    # GIVEN a launched app whose blocks were reported to a failing collector
    make, protocol = COLLECTORS[name]
    out = tmp_path / "truth.jsonl"
    with make() as collector:
        run = Running(
            ["-t", "50", "--", *app("all", "--linger", "60", "--out", str(out))],
            otlp_env(collector.endpoint, protocol),
        )
        running.append(run)
        for _ in range(3):
            run.wait_for("block")
        until(lambda: collector.count > 0, "an export reached the collector")
        # WHEN Ctrl-C comes
        elapsed, code, _, stderr = stop(run, signal.SIGINT, f"launch {name}")
    # THEN the app got it (it died of SIGINT: 128+2 is ours), and the bound held
    assert code == 128 + signal.SIGINT, stderr
    assert_stopped_in_time(elapsed, stderr)
    assert "failed to deliver" in stderr


@pytest.mark.parametrize(
    ("shell_prefix", "shell_dies_of"),
    [("", signal.SIGINT), ("trap '' INT; ", signal.SIGTERM)],
    ids=["shell-dies-of-sigint", "shell-ignores-sigint"],
)
def test_a_launched_shells_background_job_that_ignores_sigint_is_stopped_too(
    tmp_path: Path, running: list[Running], shell_prefix: str, shell_dies_of: int
) -> None:
    # GIVEN `sh -c 'python app & wait'`: a non-interactive shell starts its background job
    # with SIGINT ignored; the shell itself dies of SIGINT, or ignores it too
    out = tmp_path / "truth.jsonl"
    script = f"{shell_prefix}{sys.executable} {BLOCKER} all --linger 60 --out {out} & wait"
    with OtlpReceiver() as receiver:
        run = Running(
            ["-t", "50", "--", "sh", "-c", script],
            otlp_env(endpoint_of(receiver, "grpc"), "grpc"),
        )
        running.append(run)
        for _ in range(3):
            run.wait_for("block")
        # WHEN Ctrl-C comes
        elapsed, code, records, stderr = stop(
            run, signal.SIGINT, f"launch sh -c '{shell_prefix}app & wait'"
        )
    # THEN what is left of its process group gets SIGTERM, and all of it ends in time
    assert code == 128 + shell_dies_of, stderr
    assert_stopped_in_time(elapsed, stderr)
    assert "SIGTERM" in stderr
    (launched,) = [line for line in stderr.splitlines() if "launched PID" in line]
    until(lambda: group_gone(launched_pid(launched)), "the launched command's group is gone")
    # AND every block detected reached the collector
    assert len(receiver.spans()) == len([r for r in records if r["type"] == "block"]) >= 3


def test_a_launched_command_that_ignores_sigint_and_sigterm_is_killed(
    tmp_path: Path, running: list[Running]
) -> None:
    # GIVEN an app that ignores both SIGINT and SIGTERM
    run = stubborn(tmp_path)
    running.append(run)
    for _ in range(3):
        run.wait_for("block")
    # WHEN it is told to stop
    elapsed, code, _, stderr = stop(run, signal.SIGTERM, "launch, ignoring SIGINT and SIGTERM")
    # THEN SIGTERM, then SIGKILL go to its group, within the bound
    assert code == 128 + signal.SIGKILL, stderr
    assert_stopped_in_time(elapsed, stderr)
    assert "sending SIGKILL to its process group" in stderr


def test_a_second_signal_exits_at_once_saying_what_it_drops(
    tmp_path: Path, running: list[Running]
) -> None:
    # GIVEN a sidecar stopping, its spans stuck on a collector that never answers
    with SilentCollector() as collector:
        target = Target(tmp_path, "all", "--linger", "60")
        try:
            run = Running(["-t", "50", str(target.pid)], otlp_env(collector.endpoint, "grpc"))
            running.append(run)
            run.wait_attached()
            target.go()
            for _ in range(3):
                run.wait_for("block")
            until(lambda: collector.count > 0, "an export reached the collector")
            run.process.send_signal(signal.SIGTERM)
            run.status.wait_for("delivering")
            # WHEN a second signal comes
            elapsed, code, _, stderr = stop(run, signal.SIGTERM, "second signal, attach")
        finally:
            target.stop()
    # THEN it exits at once with its own code, saying in one line what it dropped
    assert code == ExitCode.STOPPED_AT_ONCE, stderr
    assert elapsed <= AT_ONCE_S
    (line,) = [line for line in stderr.splitlines() if "second signal" in line]
    assert re.fullmatch(
        r"otel-blocksnoop: stopped at once by a second signal: \d+ spans.* left undelivered", line
    )


def test_a_second_signal_kills_a_launched_command_that_ignores_the_first(
    tmp_path: Path, running: list[Running]
) -> None:
    # GIVEN a launched app that ignores SIGINT and SIGTERM, and a first signal
    run = stubborn(tmp_path)
    running.append(run)
    pgid = launched_pid(run.status.wait_for("launched PID"))
    run.wait_for("block")
    run.process.send_signal(signal.SIGINT)
    run.status.wait_for("stopping within")  # two signals sent at once would be one
    # WHEN a second comes
    elapsed, code, _, stderr = stop(run, signal.SIGINT, "second signal, launch")
    # THEN the sidecar exits at once, and takes the app's process group with it
    assert code == ExitCode.STOPPED_AT_ONCE, stderr
    assert elapsed <= AT_ONCE_S
    until(lambda: group_gone(pgid), "the launched command's group is gone")


def test_a_huge_sample_interval_still_stops_within_5_s(
    tmp_path: Path, running: list[Running]
) -> None:
    # GIVEN samples 1000 ms apart, the most allowed (a block waits long for its samples)
    target = Target(tmp_path, "all", "--linger", "60")
    try:
        run = Running(["-t", "50", "--sample-interval", "1000", str(target.pid)], no_otlp())
        running.append(run)
        run.wait_attached()
        target.go()
        run.wait_for("block")
        # WHEN Ctrl-C comes
        elapsed, code, _, stderr = stop(run, signal.SIGINT, "attach --sample-interval 1000")
    finally:
        target.stop()
    # THEN it stops within the bound
    assert code == 0, stderr
    assert_stopped_in_time(elapsed, stderr)


def test_a_failing_thread_dump_is_tried_once_and_never_delays_blocks_or_the_stop(
    tmp_path: Path, running: list[Running]
) -> None:
    # GIVEN an Austin that samples, but whose thread dumps (-w) never answer
    # (as for an app in a container whose files it cannot see)
    dumps = tmp_path / "dumps"
    wrapper = tmp_path / "austin"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" -w "*) echo "$@" >> {dumps}; exec sleep 60;; esac\n'
        f'exec {Austin.find().path} "$@"\n'
    )
    wrapper.chmod(0o755)
    out = tmp_path / "truth.jsonl"
    run = Running(
        [
            "-t",
            "50",
            "--austin",
            str(wrapper),
            "--stacks-from",
            "austin",
            "--",
            *app("all", "--linger", "60", "--out", str(out)),
        ],
        no_otlp(),
    )
    running.append(run)
    # WHEN the app blocks its loop again and again
    blocks = [run.wait_for("block") for _ in range(5)]
    elapsed, code, _, stderr = stop(run, signal.SIGINT, "launch, austin -w hanging")
    # THEN one dump was tried, every block was reported (a loop thread's where its own
    # samples, all in the app's handlers, show the loop; else an unknown thread's), and
    # the stop kept its bound
    assert len(dumps.read_text().splitlines()) == 1
    for block in blocks:
        assert block["thread_kind"] == ("loop" if block["stack"] else "unknown"), block
    assert "Austin gave no answer within 2 s; reporting every thread" in stderr
    assert code == 128 + signal.SIGINT, stderr
    assert_stopped_in_time(elapsed, stderr)


def test_ctrl_c_stops_a_launched_command_even_if_the_sidecar_got_sigint_ignored(
    tmp_path: Path,
) -> None:
    # GIVEN a sidecar started with SIGINT ignored (`cmd &` in a non-interactive shell,
    # nohup in a script), launching an app that idles
    out = tmp_path / "truth.jsonl"
    sidecar = subprocess.Popen(
        [*SIDECAR, "-q", "-t", "50", "--", *app("sleep", "--linger", "60", "--out", str(out))],
        stderr=subprocess.PIPE,
        text=True,
        env=no_otlp(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509
    )
    try:
        until(lambda: out.exists() and out.read_text().strip() != "", "the app's block")
        # WHEN Ctrl-C comes (the sidecar's own handler takes it)
        started = time.monotonic()
        sidecar.send_signal(signal.SIGINT)
        code = sidecar.wait(timeout=WAIT_S)
        elapsed = time.monotonic() - started
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
        assert sidecar.stderr is not None
        stderr = sidecar.stderr.read()
    # THEN the command died of that SIGINT (not of a SIGTERM 2 s later), within the bound
    assert code == 128 + signal.SIGINT, stderr
    assert_stopped_in_time(elapsed, stderr)
