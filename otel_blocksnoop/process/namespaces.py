"""Where a target lives relative to the sidecar: its mount and PID namespaces.

A containerised app (or one started under ``pivot_root``) has its own mount
namespace: the paths in its /proc/PID/maps name files of its filesystem, not
ours. A tool that opens those paths (Austin) must run inside that namespace;
inside it, /proc is (as in every container engine) the procfs of the app's
PID namespace, so the tool must also join that PID namespace and be given
the app's PID as the app's namespace numbers it. ``Reach`` says what to join.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Reach:
    """How a helper process started by the sidecar reaches target ``pid``."""

    pid: int  # the target's PID where the helper runs (its own namespace's, if joined)
    mount_ns: Path | None = None  # the target's mount namespace, when it is not ours
    pid_ns: Path | None = None  # the target's PID namespace, when it is not ours

    @property
    def local(self) -> bool:
        """The helper runs where the sidecar does: nothing to join."""
        return self.mount_ns is None and self.pid_ns is None


def same_namespace(pid: int, kind: str, proc: Path = PROC) -> bool:
    """Whether ``pid`` shares our ``kind`` namespace (``mnt``, ``pid``...); True if unreadable.

    Compared by the (device, inode) of the namespace files, as the kernel
    documents (namespaces(7)). Unreadable (no privileges, or gone) counts as
    the same: the helper then runs where the sidecar does, as it always did.
    """
    try:
        theirs = (proc / str(pid) / "ns" / kind).stat()
        ours = (proc / "self" / "ns" / kind).stat()
    except OSError:
        return True
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def same_root(pid: int, proc: Path = PROC) -> bool:
    """Whether ``pid`` sees the same root directory as we do (False: chroot or another mount ns)."""
    try:
        theirs = (proc / str(pid) / "root").stat()
        ours = (proc / "self" / "root").stat()
    except OSError:
        return True
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def namespace_pid(pid: int, proc: Path = PROC) -> int:
    """``pid`` as its own PID namespace numbers it: the last ``NSpid:`` entry (``pid`` if none)."""
    try:
        status = (proc / str(pid) / "status").read_text()
    except OSError:
        return pid
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            fields = line.split()[1:]
            if fields and fields[-1].isdigit():
                return int(fields[-1])
    return pid


def reach(pid: int, proc: Path = PROC) -> Reach:
    """What a helper must join to see ``pid``'s files at the paths its maps give.

    Another mount namespace is joined. Its PID namespace is joined with it
    when it differs from ours, since that namespace's /proc is what the helper
    then finds; a PID namespace of its own alone (our filesystem, our /proc)
    needs nothing.
    """
    if same_namespace(pid, "mnt", proc):
        return Reach(pid)
    mount_ns = proc / str(pid) / "ns" / "mnt"
    if same_namespace(pid, "pid", proc):
        return Reach(pid, mount_ns=mount_ns)
    return Reach(namespace_pid(pid, proc), mount_ns=mount_ns, pid_ns=proc / str(pid) / "ns" / "pid")


CAP_SYS_CHROOT = 18  # linux/capability.h
CAP_SYS_ADMIN = 21
MOUNT_NS_CAPABILITIES = (("CAP_SYS_ADMIN", CAP_SYS_ADMIN), ("CAP_SYS_CHROOT", CAP_SYS_CHROOT))
"""What setns(2) into another mount namespace takes (mount_namespaces(7))."""


def missing_for_mount_namespace(proc: Path = PROC) -> list[str]:
    """The capabilities we lack to enter another mount namespace ([] if none, or unreadable).

    From our effective set (``CapEff``): a hardened container that adds only
    SYS_ADMIN and SYS_PTRACE may read an app's memory but not enter its
    mount namespace.
    """
    try:
        status = (proc / "self" / "status").read_text()
    except OSError:
        return []
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            try:
                caps = int(value.strip(), 16)
            except ValueError:
                return []
            return [name for name, bit in MOUNT_NS_CAPABILITIES if not caps >> bit & 1]
    return []


def open_namespace(path: Path) -> int:
    """An fd of namespace file ``path``, for setns(2) (OSError when it cannot be opened)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


__all__ = [
    "MOUNT_NS_CAPABILITIES",
    "PROC",
    "Reach",
    "missing_for_mount_namespace",
    "namespace_pid",
    "open_namespace",
    "reach",
    "same_namespace",
    "same_root",
]
