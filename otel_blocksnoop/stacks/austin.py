"""The Austin frame-stack sampler: finding the binary and one-off thread dumps.

Austin reads the target's memory from outside (process_vm_readv): the target
is never stopped and needs no change.

Austin finds the interpreter by opening the paths in /proc/PID/maps, which
name the app's own files: across a mount namespace (a container, an app under
``pivot_root``) it finds none of them, or our own files at the same paths.
Austin is then run inside the app's mount namespace (and in its PID namespace,
whose /proc it finds there), started from here by file descriptor: the binary
and its dynamic loader (musl's, which the app's filesystem seldom has) are
opened before the fork and executed as /proc/self/fd/N. It stays our child,
dies with us and can be stopped and continued as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from otel_blocksnoop.events import Frame
from otel_blocksnoop.process.elf import ElfError, program_interpreter
from otel_blocksnoop.process.namespaces import (
    PROC,
    Reach,
    missing_for_mount_namespace,
    open_namespace,
    reach,
    same_namespace,
)

AUSTINPATH_ENV = "AUSTINPATH"
"""Directory holding the ``austin`` binary, or the binary itself (as austin-python reads it)."""

REQUIRED_MAJOR = 4
WHERE_TIMEOUT_S = 2.0
"""How long a one-off dump (``austin -w``) or ``--version`` may take before it is killed."""
WHERE_ATTACH_MS = 1000
"""Austin's own wait for the target's interpreter in a dump (``-t``; its default, 3 s,
would outlive WHERE_TIMEOUT_S and leave a timeout in place of its reason)."""
REASON_CHARS = 160
"""A reason from Austin's stderr is cut to whole sentences within this many characters."""

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
CLONE_FS = 0x00000200  # <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls it

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_THREAD = re.compile(r"\S*\s*Process ([0-9]+)\D+Thread ([0-9]+):([0-9]+)")
_FRAME = re.compile(r"^ {4}(\S.*?) \((.*):([0-9]+)\)$")
_VERSION = re.compile(r"austin (\d+)\.(\d+)\.(\d+)")
_BANNER_END = re.compile(r"\d+\.\d+\.\d+ \[")  # the banner's last line: "4.0.0 [musl-gcc ...]"
_LEAD = re.compile(r"^\W+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class AustinError(Exception):
    """Austin is missing, does not run, or could not read the target."""


def reason(stderr: str, returncode: int | None = None) -> str:
    """Why Austin failed, from its stderr: the first paragraph after its banner, in short.

    Austin prints a banner, then the reason, then advice (where to report an
    issue): the last line is the advice's tail, the reason comes first. The
    paragraph is cut to whole sentences within REASON_CHARS.
    """
    lines = _ANSI.sub("", stderr).splitlines()
    banner = next((i for i, line in enumerate(lines) if _BANNER_END.search(line)), -1)
    paragraph: list[str] = []
    for line in lines[banner + 1 :]:
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            break
    text = _LEAD.sub("", " ".join(paragraph))  # Austin starts a message with an emoji
    if not text:
        return "no reason given" if returncode is None else f"exit status {returncode}"
    kept = ""
    for sentence in _SENTENCE_END.split(text):
        candidate = f"{kept} {sentence}".strip()
        if len(candidate) > REASON_CHARS:
            break
        kept = candidate
    return kept or text[: REASON_CHARS - 3].rstrip() + "..."


def parse_where(text: str) -> dict[int, tuple[Frame, ...]]:
    """Parse ``austin -w`` output into ``{native tid: frames, outermost first}``."""
    stacks: dict[int, list[Frame]] = {}
    current: list[Frame] | None = None
    for raw in _ANSI.sub("", text).splitlines():
        # A frame line first: its file name is the app's, and may spell a thread header.
        frame = _FRAME.match(raw)
        if frame:
            if current is not None:
                current.append(Frame(frame.group(1), frame.group(2), int(frame.group(3))))
            continue
        header = _THREAD.fullmatch(raw)
        if header:
            current = stacks.setdefault(int(header.group(3)), [])
    return {tid: tuple(frames) for tid, frames in stacks.items()}


class Austin:
    """One Austin binary: where it is, its version, and what it can dump."""

    BINARY = "austin"

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def find(cls, explicit: str | None = None) -> Austin:
        """Locate Austin: the flag, then ``$AUSTINPATH``, then the venv, then ``$PATH``.

        A flag or ``$AUSTINPATH`` that names no executable is an error that names
        it, never skipped for the next place: the user asked for that Austin.
        """
        if explicit:
            return cls._at(Path(explicit))
        env = os.environ.get(AUSTINPATH_ENV, "")
        if env.strip():
            path = Path(env)
            return cls._at(path / cls.BINARY if path.is_dir() else path, f"${AUSTINPATH_ENV}={env}")
        candidates = [Path(sys.prefix) / "bin" / cls.BINARY]
        found = shutil.which(cls.BINARY)
        if found:
            candidates.append(Path(found))
        for candidate in candidates:
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return cls(candidate)
        msg = "failed to find Austin: $AUSTINPATH is not set, and none is in the venv or on $PATH"
        raise AustinError(msg)

    @classmethod
    def _at(cls, path: Path, given: str | None = None) -> Austin:
        """The Austin at ``path``; ``given`` is how the user named it, if not by ``path``."""
        if path.is_file() and os.access(path, os.X_OK):
            return cls(path)
        where = f"{given} ({path})" if given else str(path)
        msg = f"failed to find Austin at {where}: not an executable file"
        raise AustinError(msg)

    @cached_property
    def loader(self) -> str | None:
        """The dynamic loader the binary names (musl's), None when static or unreadable."""
        try:
            return program_interpreter(self.path)
        except (OSError, ElfError, UnicodeDecodeError):
            return None

    def _run(
        self, *args: str, doing: str, where: Reach | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            with self._spawn(list(args), where, text=True) as process:
                try:
                    stdout, stderr = process.communicate(timeout=WHERE_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.communicate()
                    raise
        except subprocess.TimeoutExpired as exc:
            msg = f"failed to {doing}: Austin gave no answer within {WHERE_TIMEOUT_S:g} s"
            raise AustinError(msg) from exc
        except (OSError, subprocess.SubprocessError) as exc:
            msg = f"failed to {doing}: {exc}"
            raise AustinError(msg) from exc
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def stream(self, *args: str, pid: int) -> subprocess.Popen[bytes]:
        """Start Austin sampling ``pid`` (``-p``), dying with this process, its output on a pipe.

        A sidecar killed outright (SIGKILL, OOM) runs no cleanup, and an Austin
        it kept stopped between blocks would stay behind stopped for good: the
        kernel kills it instead (PR_SET_PDEATHSIG; tied to the starting thread,
        so start it from one that lives as long as the sampler). A target in
        another mount namespace is sampled from inside it (see the module).
        """
        where = reach(pid)
        return self._spawn([*args, "-p", str(where.pid)], where, new_session=True)

    def _spawn(
        self,
        args: list[str],
        where: Reach | None,
        *,
        text: bool = False,
        new_session: bool = False,
    ) -> subprocess.Popen[Any]:
        """Popen of Austin with ``args``, run inside ``where``'s namespaces (None: here)."""
        if where is None or where.local:
            return subprocess.Popen(
                [str(self.path), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=_dies_with(os.getpid()),  # noqa: PLW1509 - prctl only, no Python state
                text=text,
                start_new_session=new_session,
            )
        with contextlib.ExitStack() as opened:
            inherited = [_open_fd(opened, self.path)]
            if self.loader is not None:
                inherited.insert(0, _open_fd(opened, Path(self.loader)))
            mount = _open_namespace(opened, where.mount_ns)
            pid_ns = _open_namespace(opened, where.pid_ns)
            # A parent outside the child's PID namespace is PID 0 to it.
            parent = 0 if pid_ns >= 0 else os.getpid()
            paths = [f"{PROC}/self/fd/{fd}" for fd in inherited]
            # Run by its loader, Austin is "austin" to itself, and /proc/PID/cmdline
            # starts with it (its comm is the fd's number: the kernel's basename).
            argv = [self.BINARY, *(["--argv0", self.BINARY, paths[1]] if len(paths) > 1 else [])]
            wrappers = _namespace_wrappers(where.mount_ns)
            try:
                with _children_in(pid_ns):
                    if wrappers is not None:
                        # No Python code in the child: see _namespace_wrappers.
                        process = subprocess.Popen(
                            [*wrappers, paths[0], *argv[1:], *args],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            pass_fds=inherited,
                            text=text,
                            start_new_session=new_session,
                        )
                    else:
                        process = subprocess.Popen(
                            [*argv, *args],
                            executable=paths[0],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            pass_fds=inherited,
                            preexec_fn=_dies_with(parent, mount),  # noqa: PLW1509 - prctl, setns
                            text=text,
                            start_new_session=new_session,
                        )
            except subprocess.SubprocessError as exc:  # only setns raises in the child
                raise OSError(refused_namespace(where)) from exc
        return process

    def version(self) -> str:
        """Run ``austin --version``; fail unless it runs and is Austin 4."""
        result = self._run("--version", doing=f"run {self.path}")
        match = _VERSION.search(result.stdout + result.stderr)
        if not match:
            detail = (result.stderr or result.stdout).strip().splitlines()
            msg = f"failed to run {self.path}: {detail[0] if detail else 'no version printed'}"
            raise AustinError(msg)
        if int(match.group(1)) != REQUIRED_MAJOR:
            msg = f"Austin {match.group(0)} found, version {REQUIRED_MAJOR}.x is needed"
            raise AustinError(msg)
        return ".".join(match.groups())

    def where(self, pid: int) -> dict[int, tuple[Frame, ...]]:
        """Stacks of every Python thread of ``pid`` right now (about 10 ms)."""
        doing = f"dump the threads of {pid}"
        where = reach(pid)
        result = self._run(
            "-t", str(WHERE_ATTACH_MS), "-w", str(where.pid), doing=doing, where=where
        )
        if result.returncode != 0:
            said = reason(result.stderr, result.returncode)
            if any(
                line.startswith("nsenter:") for line in _ANSI.sub("", result.stderr).splitlines()
            ):
                said = refused_namespace(where)
            msg = f"failed to {doing}: {said}"
            raise AustinError(msg)
        return parse_where(result.stdout)


def unreachable(pid: int, proc: Path = PROC) -> str | None:
    """Why Austin cannot read ``pid`` from here, known without running it; None: it may.

    Austin must run inside an app's mount namespace to find its files
    (module docstring), and entering one takes capabilities a hardened
    sidecar may lack.
    """
    if same_namespace(pid, "mnt", proc):
        return None
    missing = missing_for_mount_namespace(proc)
    if not missing:
        return None
    return f"Austin cannot enter its mount namespace without {' and '.join(missing)}"


def refused_namespace(where: Reach) -> str:
    """What to tell when Austin could not enter the app's mount namespace."""
    return (
        f"Austin cannot enter the mount namespace of {where.mount_ns}: refused "
        "(it takes CAP_SYS_ADMIN and CAP_SYS_CHROOT)"
    )


def _namespace_wrappers(mount_ns: Path | None) -> list[str] | None:
    """util-linux's setpriv and nsenter: die with us, enter ``mount_ns``; None if absent.

    Forking from a thread whose PID namespace for children was changed
    (``_children_in``) with a ``preexec_fn`` runs Python's at-fork hooks in
    that thread: the gRPC exporter's restart its threads there, which the
    kernel refuses (EINVAL: a thread must start in its process's PID
    namespace), and the sidecar stalled for good (seen in a container on the
    host's PID namespace, exporting over gRPC). Exec'd programs run no hook:
    ``setpriv --pdeathsig KILL`` ties the child to us, ``nsenter --mount``
    enters the app's mount namespace without a fork, so the child, and
    Austin after both execs, stays the process we started and can stop.
    """
    setpriv, nsenter = shutil.which("setpriv"), shutil.which("nsenter")
    if setpriv is None or nsenter is None:
        return None
    wrappers = [setpriv, "--pdeathsig", "KILL", "--"]
    if mount_ns is not None:
        wrappers += [nsenter, f"--mount={mount_ns}", "--"]
    return wrappers


def _dies_with(parent: int, mount_ns: int = -1) -> Callable[[], None]:
    """What the forked child runs before exec: SIGKILL when ``parent`` dies, or now if it has.

    ``mount_ns`` (an fd, -1: none) is the mount namespace to enter first. The
    kernel refuses that to a process whose root and cwd (fs_struct) another
    thread shares, and the child may have threads already: Python's at-fork
    hooks run before this, and the OpenTelemetry SDK's restarts its export
    thread in the child (seen: EINVAL with OTLP export on). So the child takes
    a copy of its own first (unshare CLONE_FS).
    """

    def die_with_parent() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # died between fork and prctl
            os._exit(1)
        if mount_ns < 0:
            return
        if _LIBC.unshare(CLONE_FS) != 0 or _LIBC.setns(mount_ns, CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "failed to enter the mount namespace")

    return die_with_parent


@contextlib.contextmanager
def _children_in(pid_ns: int) -> Iterator[None]:
    """Children this thread forks meanwhile start in PID namespace ``pid_ns`` (-1: ours).

    setns(CLONE_NEWPID) changes only where the calling thread's next children
    go (not the thread itself, nor other threads); ours is restored after.
    """
    if pid_ns < 0:
        yield
        return
    own = os.open(PROC / "self" / "ns" / "pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _LIBC.setns(pid_ns, CLONE_NEWPID) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"failed to enter a PID namespace: {os.strerror(error)}")
        try:
            yield
        finally:
            _LIBC.setns(own, CLONE_NEWPID)
    finally:
        os.close(own)


def _open_fd(opened: contextlib.ExitStack, path: Path) -> int:
    """``path`` opened for a child to execute as /proc/self/fd/N (closed here when done)."""
    fd = os.open(path, os.O_RDONLY)
    opened.callback(os.close, fd)
    return fd


def _open_namespace(opened: contextlib.ExitStack, path: Path | None) -> int:
    """An fd of namespace ``path`` for setns(2), or -1 for none (closed here when done)."""
    if path is None:
        return -1
    fd = open_namespace(path)
    opened.callback(os.close, fd)
    return fd
