"""Which namespaces a helper must join to see a target as it sees itself: on a fake /proc."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from otel_blocksnoop.process.namespaces import (
    Reach,
    missing_for_mount_namespace,
    namespace_pid,
    reach,
    same_root,
)
from otel_blocksnoop.stacks.austin import unreachable


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


# CapEff of a root sidecar with every capability, and of docker-compose.yml's hardened one
# (cap_drop ALL, cap_add SYS_ADMIN and SYS_PTRACE).
ALL_CAPS = "000001ffffffffff"
HARDENED_CAPS = f"{1 << 21 | 1 << 19:016x}"


def capabilities(proc: Path, cap_eff: str) -> None:
    (proc / "self" / "status").write_text(
        f"Name:\tpython3\nCapPrm:\t{ALL_CAPS}\nCapEff:\t{cap_eff}\n"
    )


@pytest.mark.parametrize(
    ("cap_eff", "missing"),
    [
        (ALL_CAPS, []),
        (HARDENED_CAPS, ["CAP_SYS_CHROOT"]),
        (f"{1 << 18:016x}", ["CAP_SYS_ADMIN"]),
        ("0000000000000000", ["CAP_SYS_ADMIN", "CAP_SYS_CHROOT"]),
    ],
)
def test_entering_a_mount_namespace_takes_sys_admin_and_sys_chroot(
    proc: Path, cap_eff: str, missing: list[str]
) -> None:
    capabilities(proc, cap_eff)
    assert missing_for_mount_namespace(proc) == missing


def test_capabilities_that_cannot_be_read_are_not_taken_for_missing(proc: Path) -> None:
    assert missing_for_mount_namespace(proc) == []  # no status: Austin tries, and says why
    (proc / "self" / "status").write_text("Name:\tpython3\nCapEff:\tnot hex\n")
    assert missing_for_mount_namespace(proc) == []


@pytest.mark.parametrize(
    ("mount", "cap_eff", "refused"),
    [
        ("own", HARDENED_CAPS, "Austin cannot enter its mount namespace without CAP_SYS_CHROOT"),
        ("own", ALL_CAPS, None),
        ("share", HARDENED_CAPS, None),  # Austin runs here, nothing to enter
    ],
)
def test_austin_is_known_unable_to_reach_an_app_whose_mount_namespace_it_may_not_enter(
    proc: Path, mount: str, cap_eff: str, refused: str | None
) -> None:
    {"own": own, "share": share}[mount](proc, "mnt")
    capabilities(proc, cap_eff)
    assert unreachable(123, proc) == refused
