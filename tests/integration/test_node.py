"""Node mode: apps found as they start, each reported as itself, let go of as they exit.

Real BPF, real Austin, the blocker and ticker apps (harness/targets), the
in-test OTLP receiver. The sidecar is narrowed with ``--match`` to this
test's own directory, so that the other Python processes on the machine
(other tests, the tools running them) are not watched.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import TARGETS
from harness.otlp import OtlpReceiver, ReceivedSpan, attributes
from harness.procs import children
from otel_blocksnoop.process import cgroup
from tests.helpers import IN_CI, WAIT_S, Target, truth
from tests.integration.test_export import Running, endpoint_of, otlp_env
from tests.integration.test_stop import no_otlp

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

STOP_BOUND_S = 5.0
"""README: from SIGTERM to exit, also with many processes watched."""
MANY = 20
"""Apps watched at once when the sidecar is stopped."""


def until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Wait until ``condition`` holds (looked at every 20 ms); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for thing in started:
        if isinstance(thing, Target):
            thing.stop()
        elif isinstance(thing, subprocess.Popen):
            thing.kill()
            thing.wait()
        elif thing.process.poll() is None:
            thing.process.kill()
            thing.process.wait()


def spans_of(spans: list[ReceivedSpan], pid: int) -> list[ReceivedSpan]:
    return [s for s in spans if attributes(s.span.attributes)["process.pid"] == pid]


def test_apps_started_after_the_sidecar_are_reported_as_themselves_and_let_go_at_exit(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    # GIVEN the sidecar in node mode, narrowed to the apps under a/ and b/ of this test
    with OtlpReceiver() as receiver:
        env = otlp_env(endpoint_of(receiver, "grpc"), "grpc")
        sidecar = Running(["-t", "50", "--match", f"{re.escape(str(tmp_path))}/(a|b)/"], env)
        cleanup.append(sidecar)
        sidecar.status.wait_for("Ctrl-C to stop")
        # WHEN three apps start after it, each with its own service name; only a and b match
        apps = {
            name: Target(
                tmp_path / name,
                "sleep",
                "--delay",
                "0.5",
                env={"OTEL_SERVICE_NAME": f"shop-{name}"},
            )
            for name in ("a", "b", "c")
        }
        cleanup.extend(apps.values())
        for name in ("a", "b"):
            sidecar.status.wait_for(f"watching PID {apps[name].pid} ")
        for app in apps.values():
            app.go()
        for app in apps.values():
            app.process.wait(timeout=WAIT_S)
        # THEN the blocks of a and b reach the collector under their own PID and resource
        spans = receiver.wait_for_spans(
            lambda got: all(spans_of(got, apps[n].pid) for n in ("a", "b"))
        )
        for name in ("a", "b"):
            (true_block,) = truth(apps[name].out)
            (span,) = spans_of(spans, apps[name].pid)
            assert span.resource["service.name"] == f"shop-{name}"
            assert span.resource["process.pid"] == apps[name].pid
            assert attributes(span.span.attributes)["thread.id"] == true_block["tid"]
            assert attributes(span.span.attributes)["code.function.name"] == "block_once"
        # AND c, which did block too, is not watched
        assert len(truth(apps["c"].out)) == 1
        assert spans_of(spans, apps["c"].pid) == []
        # AND both exits are seen, and what was held for them is let go of
        let_go = {apps[name].pid for name in ("a", "b")}
        while let_go:
            line = sidecar.status.wait_for("exited; no longer watched")
            let_go.discard(int(line.split("PID ")[1].split()[0]))
        sidecar.process.send_signal(signal.SIGTERM)
        code, records, _ = sidecar.finish()
    assert code == 0
    processes = records[-1]["processes"]
    assert (processes["found"], processes["left"], processes["watched"]) == (2, 2, 0)
    assert processes["held"] == {"identities": 0, "kernel_watch_entries": 0, "samplers": 0}


def start_tickers(directory: Path, count: int, cleanup: list[Any]) -> list[int]:
    """``count`` ticker apps whose command lines name ``directory``, each running its loop."""
    pids = []
    for index in range(count):
        fifo = directory / f"{index}.fifo"
        os.mkfifo(fifo)
        app = subprocess.Popen(
            [sys.executable, str(TARGETS / "ticker.py"), "--every", "0.2", "--ready", str(fifo)]
        )
        cleanup.append(app)
        with fifo.open() as ready:
            assert ready.readline().startswith("ready")
        pids.append(app.pid)
    return pids


def test_past_the_cap_processes_are_counted_and_warned_of_once_not_watched(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    # GIVEN the sidecar allowed two processes, and three apps that match
    tickers = tmp_path / "tickers"
    tickers.mkdir()
    pattern = f"ticker.py --every 0.2 --ready {re.escape(str(tickers))}/"
    sidecar = Running(["-t", "50", "--max-processes", "2", "--match", pattern], no_otlp())
    cleanup.append(sidecar)
    sidecar.status.wait_for("Ctrl-C to stop")
    pids = start_tickers(tickers, 3, cleanup)
    # WHEN it has seen them all
    sidecar.status.wait_for("(--max-processes)")
    sidecar.process.send_signal(signal.SIGTERM)
    code, records, _ = sidecar.finish()
    # THEN two are watched, the third is counted, with one warning, and nothing failed
    assert code == 0
    processes = records[-1]["processes"]
    assert (processes["found"], processes["watched"], processes["over_cap"]) == (2, 2, 1)
    warned = [line for line in sidecar.status.seen if "--max-processes" in line]
    assert len(warned) == 1
    assert str(pids[2]) in warned[0]


CONTAINER_ID = "7a1e" * 16
"""A container id, as Docker names a container's cgroup (``/docker/<id>``)."""


@pytest.fixture
def docker_cgroup() -> Iterator[Path]:
    """A real cgroup named as Docker names a container's, removed after (empty by then)."""
    mounts = [m for m in cgroup.own_mounts() if m.root == "/"]
    if not mounts:
        if IN_CI:
            pytest.fail("no cgroup hierarchy is mounted here: CI must have one")
        pytest.skip("no cgroup hierarchy is mounted here")
    root = Path(min(mounts, key=lambda m: m.v2).point)  # v1 first, as test_identity
    made = [d for d in (root / "docker", root / "docker" / CONTAINER_ID) if not d.exists()]
    for directory in made:
        directory.mkdir()
    yield root / "docker" / CONTAINER_ID
    for directory in reversed(made):
        directory.rmdir()


def test_a_container_id_prefix_watches_only_the_apps_in_that_container(
    tmp_path: Path, docker_cgroup: Path
) -> None:
    # GIVEN two asyncio apps, one of them moved into a container's cgroup
    tickers = tmp_path / "tickers"
    tickers.mkdir()
    started: list[Any] = []
    try:
        inside, outside = start_tickers(tickers, 2, started)
        (docker_cgroup / "cgroup.procs").write_text(f"{inside}\n")
        # WHEN the sidecar watches the container by the 12 characters `docker ps` shows
        pattern = f"ticker.py --every 0.2 --ready {re.escape(str(tickers))}/"
        args = ["-t", "50", "--container", CONTAINER_ID[:12], "--match", pattern]
        sidecar = Running(args, no_otlp())
        started.append(sidecar)
        sidecar.status.wait_for("Ctrl-C to stop")
        sidecar.process.send_signal(signal.SIGTERM)
        code, records, _ = sidecar.finish()
    finally:
        for thing in started:  # the apps leave the cgroup empty, so that it can go
            process = thing if isinstance(thing, subprocess.Popen) else thing.process
            if process.poll() is None:
                process.kill()
            process.wait()
    # THEN only the app inside it was watched
    assert code == 0
    assert records[-1]["processes"]["found"] == 1
    watching = [line for line in sidecar.status.seen if "watching PID" in line]
    assert [f"watching PID {inside} " in line for line in watching] == [True]
    assert str(outside) not in " ".join(watching)


def test_sigterm_stops_within_5_s_with_many_processes_watched(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    # GIVEN the sidecar watching many asyncio apps, each with its own Austin attached
    tickers = tmp_path / "tickers"
    tickers.mkdir()
    pattern = f"ticker.py --every 0.2 --ready {re.escape(str(tickers))}/"
    sidecar = Running(["-t", "50", "--stacks-from", "austin", "--match", pattern], no_otlp())
    cleanup.append(sidecar)
    sidecar.status.wait_for("Ctrl-C to stop")
    start_tickers(tickers, MANY, cleanup)

    def austins() -> int:
        return sum(1 for _, comm, _ in children(sidecar.process.pid) if comm == "austin")

    until(lambda: austins() >= MANY, f"an Austin for each of {MANY} apps")
    # WHEN it is told to stop
    sent = time.monotonic()
    sidecar.process.send_signal(signal.SIGTERM)
    code = sidecar.process.wait(timeout=WAIT_S)
    elapsed = time.monotonic() - sent
    print(f"\nstop time with {MANY} processes watched: {elapsed:.2f} s")  # shown with -s
    # THEN it exits cleanly within the bound, having watched every app
    assert code == 0
    assert elapsed <= STOP_BOUND_S
    _, records, _ = sidecar.finish()
    assert records[-1]["processes"]["watched"] == MANY
