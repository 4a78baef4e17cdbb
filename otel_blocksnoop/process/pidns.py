"""Process and thread ids across PID namespaces: the sidecar's, the app's own, the kernel's.

Three numberings of one thread meet here. The kernel's BPF helpers give the
host's (initial namespace) ids. An app in a container sees its own:
``threading.get_native_id()``, its logs, its thread states'
``native_thread_id``, and so Austin's thread ids. The sidecar's /proc shows
those of the namespace it was mounted in. ``NStgid``/``NSpid`` in
/proc/PID/task/TID/status list a thread's ids from that namespace down to
the innermost: the first entry is the sidecar's id, the last the app's.

``NamespaceIds`` maps the sidecar's ids (what the rest of the sidecar keys
its tables by) to the app's and back, reading /proc once per thread.
"""

from __future__ import annotations

from pathlib import Path

from otel_blocksnoop.bounded import BoundedDict

PROC_PID_INIT_INO = 0xEFFFFFFC
"""Inode of the initial PID namespace (the kernel's PROC_PID_INIT_INO): the host's."""
MAX_THREADS = 16384
"""Threads whose ids are remembered; the oldest are read again past this."""


def parse_ns_ids(status: str, field: str) -> tuple[int, ...]:
    """The ids on the ``field`` line (``NStgid``, ``NSpid``) of a status file, outermost first.

    Empty when the line is missing (kernels before 4.1) or unreadable.
    """
    prefix = field + ":"
    for line in status.splitlines():
        if line.startswith(prefix):
            try:
                return tuple(int(part) for part in line[len(prefix) :].split())
            except ValueError:
                return ()
    return ()


def pid_namespace(pid: int | str = "self", proc: Path = Path("/proc")) -> tuple[int, int]:
    """(device, inode) of ``pid``'s PID namespace, as bpf_get_ns_current_pid_tgid takes them."""
    info = (proc / str(pid) / "ns" / "pid").stat()
    return info.st_dev, info.st_ino


def sidecar_pid_namespace(proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """The PID namespace whose ids the sidecar's /proc shows; None when it is the host's.

    That of /proc's PID 1, which runs in the namespace the /proc was mounted
    for: the sidecar's own, unless its /proc was left from another one (a
    host's /proc in a new namespace still shows host ids, which are the
    kernel's). Its own when PID 1 cannot be looked at.
    """
    try:
        namespace = pid_namespace(1, proc)
    except OSError:
        namespace = pid_namespace("self", proc)
    return None if namespace[1] == PROC_PID_INIT_INO else namespace


class NamespaceIds:
    """The app's own ids of the processes and threads the sidecar knows by its ids.

    An id that cannot be read (the thread is gone, or /proc lacks the lines)
    is taken as is: in one namespace the numberings agree.
    """

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._tids: BoundedDict[tuple[int, int], int] = BoundedDict(MAX_THREADS)

    def _ids(self, path: Path, field: str) -> tuple[int, ...]:
        try:
            return parse_ns_ids(path.read_text(errors="replace"), field)
        except OSError:
            return ()

    def app_pid(self, pid: int) -> int:
        """``pid`` as the process sees itself (``os.getpid()`` in it)."""
        ids = self._ids(self._proc / str(pid) / "status", "NStgid")
        return ids[-1] if ids else pid

    def nested(self, pid: int) -> bool:
        """Whether ``pid`` runs in a PID namespace below the sidecar's (its ids differ)."""
        return len(self._ids(self._proc / str(pid) / "status", "NStgid")) > 1

    def app_tid(self, pid: int, tid: int) -> int:
        """Thread ``tid`` of ``pid`` as the app sees it (``threading.get_native_id()``)."""
        known = self._tids.get((pid, tid))
        if known is not None:
            return known
        ids = self._ids(self._proc / str(pid) / "task" / str(tid) / "status", "NSpid")
        if not ids:
            return tid  # gone (or no NSpid): not remembered, it may be read later
        self._tids[(pid, tid)] = ids[-1]
        return ids[-1]

    def forget(self, pid: int) -> None:
        """``pid`` exited: its threads' ids are not kept for a process that reuses its number."""
        for key in [key for key in self._tids if key[0] == pid]:
            del self._tids[key]

    def sidecar_tids(self, pid: int) -> dict[int, int]:
        """Every thread of ``pid`` now: the app's tid -> the sidecar's."""
        found: dict[int, int] = {}
        try:
            tasks = list((self._proc / str(pid) / "task").iterdir())
        except OSError:
            return found
        for task in tasks:
            if not task.name.isdigit():
                continue
            tid = int(task.name)
            found[self.app_tid(pid, tid)] = tid
        return found
