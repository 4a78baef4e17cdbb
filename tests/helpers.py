"""Running the sidecar for real and reading what it said."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import pytest
from _pytest.outcomes import Skipped

from harness import TARGETS

ROOT = Path(__file__).resolve().parent.parent
BLOCKER = TARGETS / "blocker.py"
SIDECAR = [sys.executable, "-m", "otel_blocksnoop"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
RUN_TIMEOUT_S = 60
WAIT_S = 30.0


class NotApplicable(Skipped):  # what pytest.skip raises (pytest.skip.Exception)
    """A skip that stands under CI too: the test does not apply to this kind of machine."""


def not_applicable(reason: str) -> NoReturn:
    """Skip, also under CI: for what this kind of machine is not, never for what it lacks."""
    raise NotApplicable(reason)


@dataclass(frozen=True)
class SidecarRun:
    """What one run of the sidecar printed and returned."""

    returncode: int
    records: list[dict[str, Any]]
    stderr: str

    @property
    def blocks(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == "block"]

    @property
    def summary(self) -> dict[str, Any]:
        (summary,) = [r for r in self.records if r["type"] == "summary"]
        return summary


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_raw(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run the sidecar to completion; stdout as text."""
    return subprocess.run(
        [*SIDECAR, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def run_sidecar(*args: str, timeout: float = RUN_TIMEOUT_S) -> SidecarRun:
    """Run the sidecar to completion; stdout parsed as JSON lines."""
    result = run_raw(*args, timeout=timeout)
    records = parse_json_lines(result.stdout) if "--json" in args else []
    return SidecarRun(result.returncode, records, result.stderr)


def truth(path: Path) -> list[dict[str, Any]]:
    """The blocks the target app timed itself."""
    return parse_json_lines(path.read_text()) if path.exists() else []


def matching_block(blocks: list[dict[str, Any]], true_block: dict[str, Any]) -> dict[str, Any]:
    """The reported block on the same thread that overlaps the true one."""
    found = [
        b
        for b in blocks
        if b["tid"] == true_block["tid"]
        and b["start_monotonic_ns"] < true_block["end_ns"]
        and b["end_monotonic_ns"] > true_block["start_ns"]
    ]
    assert len(found) == 1, f"expected one report for {true_block}, got {found}"
    return found[0]


class PipeLines:
    """Lines of a child's pipe, read at the fd level so ``select`` never misses buffered data."""

    def __init__(self, stream: IO[str]) -> None:
        self._fd = stream.fileno()
        self._buffer = b""
        self.seen: list[str] = []

    def wait_for(self, needle: str, timeout: float = WAIT_S) -> str:
        """Return the first new line containing ``needle``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = raw.decode()
                self.seen.append(line)
                if needle in line:
                    return line
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(0.0, remaining))
            chunk = os.read(self._fd, 65536) if ready else b""
            if not chunk:
                pytest.fail(f"no line with {needle!r} within {timeout} s; saw {self.seen}")
            self._buffer += chunk

    def rest(self) -> str:
        """Everything not yet returned, up to end of file."""
        chunks = [self._buffer]
        while chunk := os.read(self._fd, 65536):
            chunks.append(chunk)
        self._buffer = b""
        return b"".join(chunks).decode()


class Target:
    """A blocker app started with --ready/--go: running, waiting for the word.

    ``inside`` runs it in a filesystem of its own: the argv that runs the
    app's argv there, the app's python and blocker.py as it sees them, and
    where it sees ``tmp_path``.
    """

    def __init__(
        self,
        tmp_path: Path,
        *args: str,
        env: dict[str, str] | None = None,
        inside: tuple[Callable[[list[str]], list[str]], str, str, str] | None = None,
    ) -> None:
        tmp_path.mkdir(exist_ok=True)
        fifo = tmp_path / "ready.fifo"
        os.mkfifo(fifo)
        self.out = tmp_path / "truth.jsonl"
        wrap, python, blocker, shared = inside or (list, sys.executable, str(BLOCKER), "")
        seen = f"{shared}/" if shared else f"{tmp_path}/"
        self.process = subprocess.Popen(
            wrap(
                [
                    python,
                    blocker,
                    *args,
                    "--ready",
                    f"{seen}{fifo.name}",
                    "--go",
                    "--out",
                    f"{seen}{self.out.name}",
                ]
            ),
            stdin=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        with fifo.open() as ready:
            self.main_tid, *self.loop_tids = map(int, ready.readline().split()[1:])
        self.pid = self.process.pid

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class Sidecar:
    """The sidecar attached to a PID, once it says it is watching."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*SIDECAR, "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stderr is not None
        PipeLines(self.process.stderr).wait_for("Ctrl-C to stop")

    def finish(self, timeout: float = WAIT_S) -> tuple[int, list[dict[str, Any]]]:
        stdout, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, parse_json_lines(stdout)
