"""The watched process: checking a PID, and launching a command held until probes attach."""

from __future__ import annotations

import os
import select
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from otel_blocksnoop.errors import (
    BadTargetError,
    LaunchError,
    NoPrivilegesError,
    NoSuchProcessError,
    NotPythonError,
)
from otel_blocksnoop.process.context.interpreter import (
    UnsupportedInterpreterError,
    interpreter_image,
)
from otel_blocksnoop.process.pythons import is_interpreter_name, mapped_libpythons


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """What was learnt about a PID before watching it."""

    pid: int
    exe: str
    cmdline: str


PF_KTHREAD = 0x00200000
"""<linux/sched.h>: the task is a kernel thread (flags, field 9 of /proc/PID/stat)."""


def _proc(pid: int) -> Path:
    return Path("/proc") / str(pid)


@dataclass(frozen=True, slots=True)
class TaskKind:
    """What /proc says a PID is: its name, its thread group, whether the kernel runs it."""

    name: str
    tgid: int
    kernel_thread: bool


def parse_task(stat: str, status: str) -> TaskKind:
    """``/proc/PID/stat`` and ``/proc/PID/status`` of one task; ValueError if malformed."""
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 1 :].split()
    flags = int(fields[6])  # field 9; fields[0] is field 3 (state)
    tgid = next(
        int(line.split(":", 1)[1]) for line in status.splitlines() if line.startswith("Tgid:")
    )
    return TaskKind(name=name, tgid=tgid, kernel_thread=bool(flags & PF_KTHREAD))


def _check_kind(pid: int) -> None:
    """Refuse a kernel thread, a thread that is not its process, and this sidecar itself."""
    try:
        kind = parse_task(
            (_proc(pid) / "stat").read_text(errors="replace"),
            (_proc(pid) / "status").read_text(errors="replace"),
        )
    except (StopIteration, ValueError, IndexError):
        return  # unreadable as expected: the checks that follow say what is wrong
    if kind.kernel_thread:
        msg = f"process {pid} ({kind.name}) is a kernel thread, not a user process"
        raise NotPythonError(msg)
    if kind.tgid == os.getpid():
        msg = f"refusing to watch process {pid}: it is this otel-blocksnoop itself"
        hint = "pass the app's PID (`ps` lists it; in a container the sidecar is often PID 1)"
        raise BadTargetError(msg, hint)
    if kind.tgid != pid:
        msg = f"{pid} is a thread of process {kind.tgid}, not a process"
        hint = f"pass {kind.tgid}, and `--tid {pid}` to watch only that thread"
        raise BadTargetError(msg, hint)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_python(pid: int, exe: str, proc: Path = Path("/proc")) -> bool:
    """A Python interpreter binary, or a program embedding libpython (uWSGI and the like).

    Known by a name first; else by a mapped libpython; else, as the readers
    know it, by the file's own data (a renamed or statically linked CPython;
    only for the live /proc: ``proc`` may be a copy of one).
    """
    if is_interpreter_name(exe):
        return True
    maps = (proc / str(pid) / "maps").read_text(errors="replace")
    if next(mapped_libpythons(maps), None) is not None:
        return True
    if proc != Path("/proc"):
        return False
    try:
        interpreter_image(pid)
    except (UnsupportedInterpreterError, OSError):
        return False
    return True


def inspect_target(pid: int) -> TargetInfo:
    """Check that ``pid`` is a live Python process this user may watch."""
    if pid <= 0 or not process_exists(pid):
        msg = f"failed to find process {pid}: no such process"
        raise NoSuchProcessError(msg)
    try:
        _check_kind(pid)
        exe = str((_proc(pid) / "exe").readlink())
        raw = (_proc(pid) / "cmdline").read_bytes()
        python = is_python(pid, exe)
    except PermissionError as exc:
        msg = f"failed to inspect process {pid}: permission denied"
        raise NoPrivilegesError(msg) from exc
    except FileNotFoundError as exc:
        msg = f"failed to find process {pid}: it exited"
        raise NoSuchProcessError(msg) from exc
    cmdline = shlex.join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    if not python:
        msg = f"process {pid} ({Path(exe).name}) is not a Python interpreter"
        raise NotPythonError(msg)
    return TargetInfo(pid=pid, exe=exe, cmdline=cmdline)


def thread_name(pid: int, tid: int) -> str | None:
    try:
        return (_proc(pid) / "task" / str(tid) / "comm").read_text().strip()
    except OSError:
        return None


def thread_ids(pid: int) -> list[int]:
    """The threads of ``pid`` now (none once it has exited)."""
    try:
        tasks = (_proc(pid) / "task").iterdir()
        return sorted(int(task.name) for task in tasks if task.name.isdigit())
    except OSError:
        return []


RUNNING = -2
"""``thread_syscall``: the thread is on a CPU now."""


def thread_syscall(pid: int, tid: int) -> int | None:
    """The syscall thread ``tid`` is stopped in now, from /proc (the kernel's own answer).

    ``RUNNING`` when it is on a CPU, -1 when it is off CPU outside a syscall
    (preempted in user space), None when it cannot be read (gone, or no
    ptrace access).
    """
    try:
        text = (_proc(pid) / "task" / str(tid) / "syscall").read_text()
    except OSError:
        return None
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    if first == "running":
        return RUNNING
    try:
        return int(first)
    except ValueError:
        return None


ExecIdentity = tuple[bytes, int, int]
"""A process's command line and executable (device, inode): what an exec changes."""


def exec_identity(pid: int) -> ExecIdentity | None:
    """What ``pid`` runs now, to tell whether it has exec'd since; None once it is gone."""
    try:
        cmdline = (_proc(pid) / "cmdline").read_bytes()
        exe = (_proc(pid) / "exe").stat()
    except OSError:
        return None
    return cmdline, exe.st_dev, exe.st_ino


def _process_groups() -> list[tuple[str, int]]:
    """(state letter, process group) of every process in /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:  # noqa: PTH123 - hot, raw bytes
                text = stat.read()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rfind(b")") + 2 :].split()
        if len(fields) > 2:
            found.append((fields[0].decode(), int(fields[2])))
    return found


class ExitWatch:
    """Tells, without blocking, whether processes we did not start have all exited.

    A pidfd becomes readable when its process exits, so a reused PID can
    never be mistaken for the watched process. They are kept in an epoll,
    whose own fd (``fileno``) is readable while one of them is.
    """

    def __init__(self, pids: list[int]) -> None:
        self._poller = select.epoll()
        self._live: dict[int, int] = {}
        try:
            for pid in pids:
                fd = os.pidfd_open(pid)
                self._live[fd] = pid
                self._poller.register(fd, select.EPOLLIN)
        except ProcessLookupError as exc:
            self.close()
            msg = f"failed to find process {pid}: it exited"
            raise NoSuchProcessError(msg) from exc

    def add(self, pid: int) -> bool:
        """Watch one more process (the node mode's, found while running); False if it is gone."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        self._live[fd] = pid
        self._poller.register(fd, select.EPOLLIN)
        return True

    def take_exited(self) -> list[int]:
        """The processes that exited since the last call, each once; no longer watched."""
        gone = []
        for fd, _ in self._poller.poll(0):
            self._poller.unregister(fd)
            os.close(fd)
            gone.append(self._live.pop(fd))
        return gone

    def __len__(self) -> int:
        return len(self._live)

    def exited(self) -> bool:
        self.take_exited()
        return not self._live

    def fileno(self) -> int:
        """Readable once a watched process has exited (until ``exited`` has seen it)."""
        return self._poller.fileno()

    def close(self) -> None:
        for fd in self._live:
            os.close(fd)
        self._live.clear()
        self._poller.close()


# The holder waits until the sidecar writes to the pipe, closes it and execs
# the command in the same process, so the PID put in the kernel's watch list
# before the release is the command's own. It is the sidecar's interpreter in
# isolated mode, so any fd number works (POSIX sh only takes one digit). The
# command runs in a process group of its own, so a signal from the terminal
# reaches only the sidecar: it dies with the sidecar (PR_SET_PDEATHSIG, kept
# across exec), as it did when the terminal or a group kill reached both.
# A stop reaches it as SIGINT to its group: SIGINT is put back to its default
# first, as a shell does for a foreground job (a sidecar started in the
# background by a non-interactive shell inherits it ignored, and so would the
# command, which then outlived every Ctrl-C until the SIGTERM).
_HOLD_SCRIPT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)\n"  # PR_SET_PDEATHSIG
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "fd = int(sys.argv[1])\n"
    "go = os.read(fd, 1)\n"
    "os.close(fd)\n"
    "if not go:\n"
    "    sys.exit(125)\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as exc:\n"
    "    sys.stderr.write(f'otel-blocksnoop: failed to launch {sys.argv[2]}: {exc.strerror}\\n')\n"
    "    sys.exit(127)\n"
)


def check_command(argv: list[str]) -> None:
    """Fail early, before BPF is compiled, when the command cannot be run."""
    if not argv:
        msg = "failed to launch command: nothing after `--`"
        raise LaunchError(msg)
    if shutil.which(argv[0]) is None:
        msg = f"failed to launch {argv[0]}: command not found or not executable"
        raise LaunchError(msg)


class LaunchedCommand:
    """A command started paused; ``release()`` lets it run its first instruction.

    It runs in a process group of its own, so that a stop reaches every process
    it started (a shell's background jobs ignore SIGINT; ``signal_group``), the
    way ``timeout`` runs its command.
    """

    def __init__(self, argv: list[str]) -> None:
        check_command(argv)
        read_end, self._write_end = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HOLD_SCRIPT, str(read_end), *argv],
                pass_fds=(read_end,),
                process_group=0,
            )
        except OSError as exc:
            os.close(self._write_end)
            msg = f"failed to launch {argv[0]}: {exc.strerror}"
            raise LaunchError(msg) from exc
        finally:
            os.close(read_end)
        self.pid = self.process.pid
        self._pidfd = os.pidfd_open(self.pid)
        self.holder = exec_identity(self.pid)
        """What the PID runs until it execs the command (the sidecar's own Python)."""

    def fileno(self) -> int:
        """A pidfd of the command: readable once it has exited."""
        return self._pidfd

    def close(self) -> None:
        os.close(self._pidfd)

    def release(self) -> None:
        os.write(self._write_end, b"go\n")
        os.close(self._write_end)

    def exited(self) -> bool:
        return self.process.poll() is not None

    def group_alive(self) -> bool:
        """Whether a live process (not a zombie) is left in the command's group.

        Not ``killpg(pgid, 0)``: a killed background job stays a zombie until
        init reaps it (1.5 s, seen), and would look alive.
        """
        return any(pgrp == self.pid and state not in "ZX" for state, pgrp in _process_groups())

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to every process of the command's group (safe from a signal handler)."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass  # the whole group is gone
        except PermissionError:  # a member changed its credentials: the command itself, then
            self.process.send_signal(signum)

    def exit_code(self) -> int | None:
        """The command's exit status, shell-style (128+N when killed by signal N)."""
        code = self.process.poll()
        if code is None:
            return None
        return 128 - code if code < 0 else code
