"""The Austin frame-stack sampler: finding the binary and one-off thread dumps.

Austin reads the target's memory from outside (process_vm_readv): the target
is never stopped and needs no change.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from otel_blocksnoop.events import Frame

AUSTINPATH_ENV = "AUSTINPATH"
"""Directory holding the ``austin`` binary, or the binary itself (as austin-python reads it)."""

REQUIRED_MAJOR = 4
WHERE_TIMEOUT_S = 2.0

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls it

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_THREAD = re.compile(r"\S*\s*Process ([0-9]+)\D+Thread ([0-9]+):([0-9]+)")
_FRAME = re.compile(r"^ {4}(\S.*?) \((.*):([0-9]+)\)$")
_VERSION = re.compile(r"austin (\d+)\.(\d+)\.(\d+)")


class AustinError(Exception):
    """Austin is missing, does not run, or could not read the target."""


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
        """Locate Austin: the flag, then ``$AUSTINPATH``, then the venv, then ``$PATH``."""
        candidates: list[Path] = []
        if explicit:
            candidates.append(Path(explicit))
        env = os.environ.get(AUSTINPATH_ENV)
        if env:
            path = Path(env)
            candidates.append(path / cls.BINARY if path.is_dir() else path)
        candidates.append(Path(sys.prefix) / "bin" / cls.BINARY)
        found = shutil.which(cls.BINARY)
        if found:
            candidates.append(Path(found))
        for candidate in candidates:
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return cls(candidate)
            if explicit and candidate == Path(explicit):
                msg = f"failed to find Austin at {explicit}: not an executable file"
                raise AustinError(msg)
        msg = "failed to find Austin: not in $AUSTINPATH, the venv or $PATH"
        raise AustinError(msg)

    def _run(self, *args: str, doing: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(self.path), *args],
                capture_output=True,
                text=True,
                timeout=WHERE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            msg = f"failed to {doing}: {exc}"
            raise AustinError(msg) from exc

    def stream(self, *args: str) -> subprocess.Popen[bytes]:
        """Start a sampling Austin that dies with this process, its output on a pipe.

        A sidecar killed outright (SIGKILL, OOM) runs no cleanup, and an Austin
        it kept stopped between blocks would stay behind stopped for good: the
        kernel kills it instead (PR_SET_PDEATHSIG; tied to the starting thread,
        so start it from one that lives as long as the sampler).
        """
        return subprocess.Popen(
            [str(self.path), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_dies_with(os.getpid()),  # noqa: PLW1509 - prctl only, no Python state
        )

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
        result = self._run("-w", str(pid), doing=doing)
        if result.returncode != 0:
            lines = [line for line in _ANSI.sub("", result.stderr).splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else f"exit status {result.returncode}"
            msg = f"failed to {doing}: {reason}"
            raise AustinError(msg)
        return parse_where(result.stdout)


def _dies_with(parent: int) -> Callable[[], None]:
    """What the forked child runs before exec: SIGKILL when ``parent`` dies, or now if it has."""

    def die_with_parent() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # died between fork and prctl
            os._exit(1)

    return die_with_parent
