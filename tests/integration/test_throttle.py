"""A loop held back by its cgroup's CPU quota: cause ``sched``, and the throttled time.

The target runs in a cgroup of its own with 10 ms of CPU per 100 ms period,
made here and removed after. Machines of the kind CI uses (ENVIRONMENT.md)
mount the ``cpu`` controller on a cgroup v1 hierarchy, so the v2 case runs
only where v2 has the controller, and the v1 case only where v1 has it; one
of them must run in CI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otel_blocksnoop.process import cgroup
from tests.helpers import WAIT_S, Sidecar, Target, matching_block, not_applicable, truth

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

QUOTA_US = 10_000
PERIOD_US = 100_000
THRESHOLD_MS = 100
NAME = "blocksnoop-test-throttle"


@dataclass(frozen=True)
class Hierarchy:
    """Where a cgroup with a CPU quota can be made: its mount and how its quota is written."""

    mount: Path
    v2: bool

    def limit(self, group: Path) -> None:
        if self.v2:
            (group / "cpu.max").write_text(f"{QUOTA_US} {PERIOD_US}\n")
        else:
            (group / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
            (group / "cpu.cfs_quota_us").write_text(f"{QUOTA_US}\n")


def _hierarchy(v2: bool) -> Hierarchy | None:
    """The mount of the hierarchy that has the ``cpu`` controller, of that version, if any."""
    for mount in cgroup.own_mounts():
        if mount.v2 != v2 or mount.root != "/":
            continue
        point = Path(mount.point)
        if not v2:
            return Hierarchy(point, v2=False)
        controllers = point / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            return Hierarchy(point, v2=True)
    return None


@pytest.fixture(params=["v2", "v1"])
def quota_cgroup(request: pytest.FixtureRequest) -> Iterator[tuple[Path, Hierarchy]]:
    """A fresh cgroup with 10% of a CPU; removed after, once its processes are gone."""
    hierarchy = _hierarchy(v2=request.param == "v2")
    if hierarchy is None:
        reason = f"no cgroup {request.param} hierarchy with the cpu controller here"
        if _hierarchy(v2=request.param != "v2") is not None:
            not_applicable(f"{reason}: the machine runs the other version")
        pytest.skip(reason)  # neither version: a failure under CI
    if hierarchy.v2:
        # The controller must be on for the children of the root to set cpu.max.
        with contextlib.suppress(OSError):
            (hierarchy.mount / "cgroup.subtree_control").write_text("+cpu\n")
    group = hierarchy.mount / NAME
    with contextlib.suppress(FileNotFoundError):
        group.rmdir()  # left by a run that was killed
    group.mkdir()
    try:
        hierarchy.limit(group)
        yield group, hierarchy
    finally:
        group.rmdir()  # empty: ``cleanup`` (set up later, torn down first) reaped the target


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for thing in started:
        if isinstance(thing, Target):
            thing.stop()
        elif thing.process.poll() is None:
            thing.process.kill()
            thing.process.wait()


def _throttled_block(
    tmp_path: Path, group: Path, own_ms: int, cleanup: list[Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a loop that spins ``own_ms`` of its CPU time in ``group``; (report, truth)."""
    target = Target(tmp_path, "cpu", "--ms", str(own_ms))
    cleanup.append(target)
    (group / "cgroup.procs").write_text(f"{target.pid}\n")
    sidecar = Sidecar("--no-stacks", "-t", str(THRESHOLD_MS), str(target.pid))
    cleanup.append(sidecar)
    target.go()
    target.process.wait(timeout=WAIT_S)
    code, records = sidecar.finish()
    assert code == 0
    (expected,) = truth(target.out)
    block = matching_block([r for r in records if r["type"] == "block"], expected)
    return block, expected


def test_a_loop_stretched_by_its_cpu_quota_is_sched_with_its_throttled_time(
    tmp_path: Path, quota_cgroup: tuple[Path, Hierarchy], cleanup: list[Any]
) -> None:
    # GIVEN an asyncio app at 10% of a CPU whose callback runs 30 ms of its own:
    # under the 100 ms threshold, but a quota period runs out in the middle
    group, _ = quota_cgroup
    # WHEN the sidecar watches it
    block, _ = _throttled_block(tmp_path, group, own_ms=30, cleanup=cleanup)
    # THEN it is reported, as the scheduler's doing, not the app's
    assert block["duration_ms"] >= THRESHOLD_MS
    assert block["cause"] == "sched", block
    assert block["on_cpu_ms"] < THRESHOLD_MS
    # AND its throttling is on it: run-queue time of the thread, counted from the
    # block's confirmation on (a stretch over before then is not in it)
    assert block["throttled_periods"] >= 1
    assert 0 < block["throttled_ms"] <= block["runq_ms"], block


def test_a_handler_that_spins_past_the_threshold_is_cpu_however_long_it_was_throttled(
    tmp_path: Path, quota_cgroup: tuple[Path, Hierarchy], cleanup: list[Any]
) -> None:
    # GIVEN the same app at 10% of a CPU, whose callback runs 150 ms of its own
    group, _ = quota_cgroup
    block, _ = _throttled_block(tmp_path, group, own_ms=150, cleanup=cleanup)
    # THEN the app's code made the block: cpu, with the throttling shown beside it
    assert block["cause"] == "cpu", block
    assert block["on_cpu_ms"] >= THRESHOLD_MS
    assert block["throttled_periods"] >= 1
    assert 0 < block["throttled_ms"] <= block["runq_ms"]
