"""Which namespaces a helper must join to see a target as it sees itself: on a fake /proc."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from otel_blocksnoop.process.namespaces import Reach, namespace_pid, reach, same_root


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """/proc with ourselves and process 123, whose root is a directory of its own."""
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "123" / "ns").mkdir(parents=True)
    (proc / "123" / "root").mkdir()
    (proc / "self" / "root").symlink_to(tmp_path)
    for kind in ("mnt", "pid"):
        (proc / "self" / "ns" / kind).write_text(kind)
    (proc / "123" / "status").write_text("Name:\tpython3\nNSpid:\t123\t7\n")
    return proc


def share(proc: Path, kind: str) -> None:
    """Process 123 shares our ``kind`` namespace (the same namespace file)."""
    (proc / "123" / "ns" / kind).symlink_to(proc / "self" / "ns" / kind)


def own(proc: Path, kind: str) -> None:
    """Process 123 has a ``kind`` namespace of its own."""
    (proc / "123" / "ns" / kind).write_text(f"its {kind}")


def test_a_target_in_our_mount_namespace_is_reached_from_here(proc: Path) -> None:
    share(proc, "mnt")
    own(proc, "pid")  # its own PID namespace alone: our /proc still numbers it 123
    assert reach(123, proc) == Reach(123)
    assert reach(123, proc).local


def test_a_target_in_another_mount_namespace_is_reached_inside_it(proc: Path) -> None:
    own(proc, "mnt")
    share(proc, "pid")
    assert reach(123, proc) == Reach(123, mount_ns=proc / "123" / "ns" / "mnt")


def test_a_target_in_other_mount_and_pid_namespaces_is_reached_by_its_own_pid(
    proc: Path,
) -> None:
    # GIVEN a container: its own mount and PID namespaces, PID 7 in its own
    own(proc, "mnt")
    own(proc, "pid")
    # THEN a helper joins both and names it 7, as the container's /proc does
    assert reach(123, proc) == Reach(
        7, mount_ns=proc / "123" / "ns" / "mnt", pid_ns=proc / "123" / "ns" / "pid"
    )


def test_namespaces_that_cannot_be_read_count_as_ours(proc: Path) -> None:
    assert reach(123, proc).local
    assert reach(999, proc).local


def test_a_pid_without_nspid_is_its_own_namespace_pid(proc: Path) -> None:
    (proc / "123" / "status").write_text("Name:\tpython3\n")
    assert namespace_pid(123, proc) == 123
    assert namespace_pid(999, proc) == 999


def test_a_chrooted_root_differs_from_ours(proc: Path) -> None:
    assert not same_root(123, proc)
    shutil.rmtree(proc / "123" / "root")
    (proc / "123" / "root").symlink_to(proc.parent)
    assert same_root(123, proc)
