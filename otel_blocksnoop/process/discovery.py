"""Node mode: finding the Python processes to watch by a scan of /proc, as they start.

One scan lists /proc and looks only at the PIDs it has not judged yet, so a
node whose processes do not change costs one directory listing per scan.
A new PID is judged with the target checks (a user process, not this
sidecar nor one of its children, a Python interpreter or a program
embedding libpython) and the user's selector (command line, container). A
process seen just after its fork still runs its parent's program: one
refused is looked at again at each scan while it is young (``YOUNG_S``): if
its executable or command line changed (it exec'd), it is judged afresh, so a
shell's child that execs Python a moment after its fork is found, and so is a
Python program's child that execs Python again.

Why a scan, not the kernel's exec tracepoint: a process is only worth
watching once it runs Python, which the exec alone does not tell (a script
run through ``env``, a program that loads libpython later), and the scan is
cheap: 0.08 ms when nothing changed on a host of ~100 processes, a readlink
more per process younger than ``YOUNG_S`` (BENCHMARKS.md, "Node mode"). A
loop found up to a scan late is seen from its next return from epoll.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from otel_blocksnoop.process.container import Placement
from otel_blocksnoop.process.identity import (
    parse_environ,
    pod_name,
    pod_namespace,
    pod_uid,
    read_environ,
    read_placement,
)
from otel_blocksnoop.process.target import PF_KTHREAD, TargetInfo, is_python

log = logging.getLogger(__name__)

PROC = Path("/proc")
YOUNG_S = 5.0
"""How long a refused process is judged again at each scan (it may exec Python meanwhile)."""


@dataclass(frozen=True, slots=True)
class _Judged:
    """A process the scan has judged: when first, and the executable it refused it with."""

    since: float
    refused_as: bytes | None  # executable and command line; None: handed out, not judged again


@dataclass(frozen=True, slots=True)
class PodSelector:
    """A Kubernetes pod as ``--pod`` names it: its uid, or its name (and namespace).

    The uid is matched against the one in the process's cgroup (the kubelet's
    path, either driver), else its downward-API variable; the name against
    the downward API's variable, else ``HOSTNAME`` (the kubelet names a pod's
    host after it); the namespace against the downward API's variable, else
    the service account's namespace file in the process's root.
    """

    uid: str | None = None
    name: str | None = None
    namespace: str | None = None

    def __str__(self) -> str:
        if self.uid is not None:
            return self.uid
        return f"{self.namespace}/{self.name}" if self.namespace else str(self.name)

    def wants(self, pid: int, where: Placement, proc: Path = PROC) -> bool:
        """Whether process ``pid``, whose cgroups place it ``where``, runs in this pod."""
        if self.uid is not None and where.pod_uid is not None:
            return where.pod_uid == self.uid
        env = parse_environ(read_environ(pid, proc))
        if self.uid is not None:
            return (pod_uid(env, where) or "").lower() == self.uid
        if pod_name(env, where) != self.name:
            return False
        return self.namespace is None or pod_namespace(pid, env, proc) == self.namespace


@dataclass(frozen=True, slots=True)
class Selector:
    """Which Python processes node mode watches: all of them, or those matching.

    ``pattern`` is searched in the command line (its arguments joined by
    spaces, as ``pgrep -f`` does); ``container`` is a container id or its
    prefix (``docker ps`` shows 12 characters), matched against the id in the
    process's cgroup; ``pod`` a Kubernetes pod (``PodSelector``). More than
    one given: all must match.
    """

    pattern: re.Pattern[str] | None = None
    container: str | None = None
    pod: PodSelector | None = None

    def wants_command(self, cmdline: str) -> bool:
        return self.pattern is None or self.pattern.search(cmdline) is not None

    def wants_container(self, container_id: str | None) -> bool:
        if self.container is None:
            return True
        return container_id is not None and container_id.startswith(self.container.lower())

    def wants_place(self, pid: int, proc: Path = PROC) -> bool:
        """Whether ``pid`` runs in the container and the pod asked for (True if neither is)."""
        if self.container is None and self.pod is None:
            return True
        where = read_placement(pid, proc)
        if not self.wants_container(where.container_id):
            return False
        return self.pod is None or self.pod.wants(pid, where, proc)

    def describe(self) -> str:
        parts = []
        if self.pattern is not None:
            parts.append(f"command lines matching {self.pattern.pattern!r}")
        if self.container is not None:
            parts.append(f"container {self.container}")
        if self.pod is not None:
            parts.append(f"pod {self.pod}")
        if not parts:
            return "every Python process"
        return "Python processes with " + " in ".join(parts)


@dataclass(frozen=True, slots=True)
class Stat:
    """What ``/proc/PID/stat`` tells the scan: the parent, and whether the kernel runs it."""

    ppid: int
    kernel_thread: bool


def parse_stat(text: str) -> Stat:
    """``/proc/PID/stat``; ValueError or IndexError if malformed."""
    fields = text[text.rindex(")") + 2 :].split()
    return Stat(ppid=int(fields[1]), kernel_thread=bool(int(fields[6]) & PF_KTHREAD))


def command_line(raw: bytes) -> str:
    """``/proc/PID/cmdline`` as ``pgrep -f`` matches it: the arguments joined by spaces."""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


class Discovery:
    """The processes the selector picks, each handed out once, by a scan of /proc."""

    def __init__(
        self,
        selector: Selector,
        *,
        proc: Path = PROC,
        own_pid: int | None = None,
        young_s: float = YOUNG_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.selector = selector
        self._proc = proc
        self._own_pid = os.getpid() if own_pid is None else own_pid
        self._young_s = young_s
        self._clock = clock
        self._judged: dict[int, _Judged] = {}
        self.scans = 0

    def scan(self) -> list[TargetInfo]:
        """The processes picked since the last scan, oldest PID first."""
        self.scans += 1
        now = self._clock()
        try:
            listing = {int(entry.name) for entry in os.scandir(self._proc) if entry.name.isdigit()}
        except OSError as exc:
            log.warning("failed to list %s: %s", self._proc, exc)
            return []
        for pid in self._judged.keys() - listing:
            del self._judged[pid]  # gone: its PID may come back as another process
        found = []
        for pid in sorted(listing):
            judged = self._judged.get(pid)
            if judged is not None and not self._exec_since(pid, judged, now):
                continue
            target = self._judge(pid)
            since = now if judged is None else judged.since
            if target is not None:
                self._judged[pid] = _Judged(since, None)
                found.append(target)
            else:
                self._judged[pid] = _Judged(since, self._running(pid))
        return found

    def _exec_since(self, pid: int, judged: _Judged, now: float) -> bool:
        """Whether a refused process, still young, runs something else than when refused."""
        if judged.refused_as is None or now - judged.since >= self._young_s:
            return False
        return self._running(pid) != judged.refused_as

    def _running(self, pid: int) -> bytes:
        """What ``pid`` runs: its executable's path and its command line (b"" if unreadable)."""
        base = self._proc / str(pid)
        try:
            return (
                os.fsencode((base / "exe").readlink()) + b"\0\0" + (base / "cmdline").read_bytes()
            )
        except OSError:
            return b""  # gone, or a kernel thread

    def forget(self, pid: int) -> None:
        """``pid`` exited: a process that gets its number next is judged afresh."""
        self._judged.pop(pid, None)

    def _judge(self, pid: int) -> TargetInfo | None:
        """``pid`` as a target when the checks and the selector take it, else None."""
        base = self._proc / str(pid)
        try:
            stat = parse_stat((base / "stat").read_text(errors="replace"))
            if stat.kernel_thread or self._own_pid in (pid, stat.ppid):
                return None
            cmdline = command_line((base / "cmdline").read_bytes())
            if not cmdline or not self.selector.wants_command(cmdline):
                return None
            if not self.selector.wants_place(pid, self._proc):
                return None
            exe = str((base / "exe").readlink())
            if not is_python(pid, exe, self._proc):
                return None
            raw = (base / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None  # gone, unreadable, or not what a process's files look like
        shown = shlex.join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        return TargetInfo(pid=pid, exe=exe, cmdline=shown)


EVENTPOLL = "anon_inode:[eventpoll]"


def has_event_poll(pid: int, proc: Path = PROC) -> bool:
    """Whether ``pid`` holds an epoll fd now: it may run an event loop (asyncio, uvloop)."""
    try:
        entries = list(os.scandir(proc / str(pid) / "fd"))
    except OSError:
        return False
    for entry in entries:
        try:
            if os.readlink(entry.path) == EVENTPOLL:  # noqa: PTH115 - a DirEntry's path, hot
                return True
        except OSError:
            continue
    return False
