# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Processes the benchmarks start, and what /proc says about them.

Every child gets its own session, so one ``killpg`` reaches whatever it
started in turn (the sidecar's launched app, its Austin calls), and a Ctrl-C
at the terminal reaches only the runner, which then stops every child it
still knows about instead of leaving half of them running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Self

from harness.procs import children

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType

REPO = Path(__file__).resolve().parent.parent.parent
APPS = REPO / "bench" / "apps"
PYTHON = sys.executable
STOP_TIMEOUT_S = 10.0
ATTACH_TIMEOUT_S = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


SID_PREFIX = "sid:3."
"""``--python sid:3.14``: Debian sid's 3.14 venv (scripts/sid-pythons.sh), run in its root."""


class BenchError(Exception):
    """A benchmark could not run; the message names the step that failed."""


def python_argv(python: str) -> list[str]:
    """The argv that runs ``python``: itself, or ``sid:3.X`` in Debian sid's root.

    ``sid:3.X`` is the venv of sid's CPython 3.X with the test apps' packages
    (opentelemetry-sdk, aiohttp and its instrumentation, uvloop), run under
    pivot_root in that root as the integration tests run it (harness.mntns),
    with bench/apps and the test targets at their host paths and the host's /tmp.
    """
    if not python.startswith(SID_PREFIX):
        return [python]
    from dataclasses import replace  # noqa: PLC0415 - only for sid targets

    from harness.interpreters import sid_venv  # noqa: PLC0415
    from harness.mntns import pivot_root_command, sid_root  # noqa: PLC0415

    inside = sid_venv(int(python.removeprefix(SID_PREFIX)))
    if inside is None:
        msg = f"no {python} root: run scripts/sid-pythons.sh"
        raise BenchError(msg)
    root = sid_root()
    return pivot_root_command(replace(root, binds=(*root.binds, (str(APPS), str(APPS)))), [inside])


class Child:
    """A process started in its own session and registered for clean-up."""

    live: ClassVar[set[Child]] = set()

    def __init__(
        self,
        argv: list[str],
        *,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
    ) -> None:
        self.argv = argv
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            msg = f"failed to start {argv[0]}: {exc.strerror}"
            raise BenchError(msg) from exc
        Child.live.add(self)

    @property
    def pid(self) -> int:
        """Also the process group id, since every child leads its own session."""
        return self.process.pid

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit; a hang becomes a BenchError instead of a stuck benchmark."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            msg = f"failed to wait for {Path(self.argv[0]).name}: still running after {timeout} s"
            raise BenchError(msg) from exc

    def stop(self, first: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Ask the process to end with ``first``, then kill whatever is left of its group."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, first)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # A launched app whose sidecar died, or an Austin dump in flight.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        code = self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        Child.live.discard(self)
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    @classmethod
    def stop_all(cls) -> None:
        """Last line of clean-up: the runner calls it however it ends."""
        for child in list(cls.live):
            child.stop(timeout=3.0)


class Lines:
    """Reads a child's text stream on a thread, so the runner never blocks on a pipe."""

    def __init__(self, stream: IO[str], on_line: Callable[[str], None] | None = None) -> None:
        self.lines: list[str] = []
        self._on_line = on_line
        self._done = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for raw in stream:
                line = raw.rstrip("\n")
                if self._on_line is not None:
                    self._on_line(line)
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        except (ValueError, OSError):  # the stream was closed under us at clean-up
            pass
        finally:
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """Return the first matching line; fail fast if the stream ends instead."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    tail = " | ".join(self.lines[-5:]) or "no output"
                    why = "it exited" if self._done else f"nothing after {timeout:g} s"
                    msg = f"failed to see {what}: {why} ({tail})"
                    raise BenchError(msg)
                self._changed.wait(left)

    def text(self) -> str:
        """Everything read so far, for error messages."""
        with self._changed:
            return "\n".join(self.lines)


def start_app(
    name: str, *args: str, on_line: Callable[[str], None] | None = None
) -> tuple[Child, Lines]:
    """Start bench/apps/NAME with this interpreter, reading its stdout line by line."""
    child = Child([PYTHON, str(APPS / name), *args])
    if child.process.stdout is None:
        msg = f"failed to start {name}: no stdout pipe"
        raise BenchError(msg)
    return child, Lines(child.process.stdout, on_line)


def sidecar_command() -> list[str]:
    """Prefer the console script, so the sidecar runs exactly as a user starts it."""
    script = Path(sys.executable).with_name("otel-blocksnoop")
    return [str(script)] if script.exists() else [PYTHON, "-m", "otel_blocksnoop"]


class Sidecar:
    """One otel-blocksnoop run with ``--json``; its stdout goes to a file, stderr is read."""

    READY = ("watching PID", "launched PID")

    def __init__(self, args: list[str], out: Path) -> None:
        self.out = out
        self.attach_s: float | None = None
        self._started = time.monotonic()
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as stdout:
            self.child = Child([*sidecar_command(), "--json", *args], stdout=stdout)
        if self.child.process.stderr is None:
            msg = "failed to start the sidecar: no stderr pipe"
            raise BenchError(msg)
        self.stderr = Lines(self.child.process.stderr)

    @property
    def pid(self) -> int:
        """The sidecar's own PID, whose CPU and RSS are measured."""
        return self.child.pid

    def wait_attached(self) -> None:
        """Block until the probes are attached: its log line comes after ``watch()``."""
        self.stderr.wait_for(
            lambda line: any(mark in line for mark in self.READY),
            ATTACH_TIMEOUT_S,
            "the sidecar attach",
        )
        self.attach_s = time.monotonic() - self._started

    def stop(self) -> int:
        """SIGINT, so it drains and writes its summary, as a user's Ctrl-C would."""
        return self.child.stop(first=signal.SIGINT)

    def records(self) -> list[dict[str, Any]]:
        """Parsed JSON lines; a torn last line (a killed sidecar) is skipped."""
        return json_records(self.out)

    def summary(self) -> dict[str, Any] | None:
        """The closing summary, or None if the sidecar never got to write it."""
        found = [r for r in self.records() if r.get("type") == "summary"]
        return found[-1] if found else None


@contextlib.contextmanager
def attached(
    pid: int, threshold_ms: float, out: Path, settle_s: float, args: Sequence[str] = ()
) -> Iterator[Sidecar]:
    """Yield a sidecar (with ``args``) watching ``pid`` once attached and settled; stop it after.

    Settling keeps the BPF compile's CPU burst out of whatever is measured next.
    """
    sidecar = Sidecar(["-t", f"{threshold_ms:g}", *args, str(pid)], out)
    try:
        sidecar.wait_attached()
        time.sleep(settle_s)
        yield sidecar
    finally:
        code = sidecar.stop()
        if code != 0:
            sys.stderr.write(f"bench: sidecar exited {code}: {sidecar.stderr.text()[-500:]}\n")


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """CPU seconds from /proc/PID/stat, and when they were read."""

    own_s: float
    children_s: float
    at_s: float

    def percent_since(self, before: CpuTimes) -> tuple[float, float]:
        """Return (own, children) as % of one core, the unit peers quote."""
        wall = self.at_s - before.at_s
        if wall <= 0:
            return 0.0, 0.0
        return (
            100 * (self.own_s - before.own_s) / wall,
            100 * (self.children_s - before.children_s) / wall,
        )


def _stat_fields(pid: int | str) -> list[str]:
    """Fields after "(comm)" (which may hold spaces): state is index 0, ppid 1."""
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _live_children_s(pid: int) -> float:
    """CPU seconds of the running children of ``pid`` (the sidecar's Austin samplers)."""
    total = sum(int(fields[11]) + int(fields[12]) for _pid, _comm, fields in children(pid))
    return total / CLK_TCK


def json_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def cpu_times(pid: int) -> CpuTimes:
    """Own utime+stime; children = reaped (cutime+cstime) plus those still running."""
    fields = _stat_fields(pid)
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return CpuTimes(
        own_s=(utime + stime) / CLK_TCK,
        children_s=(cutime + cstime) / CLK_TCK + _live_children_s(pid),
        at_s=time.monotonic(),
    )


def rss_mib(pid: int) -> float:
    """Resident memory now; sampled over time it shows whether memory stays flat."""
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    msg = f"failed to read VmRSS of {pid}"
    raise BenchError(msg)


def _my_groups() -> set[int]:
    return {child.pid for child in Child.live} | {os.getpgid(0)}


def _foreign_sidecars() -> set[int]:
    mine = _my_groups()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            group = os.getpgid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
        if group not in mine and (b"otel_blocksnoop" in cmdline or b"otel-blocksnoop" in cmdline):
            found.add(int(entry.name))
    return found


def _foreign_cpu() -> dict[int, float]:
    """CPU seconds so far of every process outside this run's process groups."""
    mine = _my_groups()
    seconds = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # After "(comm)": state 0, ppid 1, pgrp 2, ..., utime 11, stime 12.
        if int(fields[2]) not in mine:
            seconds[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return seconds


@dataclass(frozen=True, slots=True)
class Window:
    """What the rest of the machine did while one measurement ran."""

    foreign_cpu_pct: float
    foreign_sidecar: bool

    def disturbed(self, cpu_limit_pct: float) -> bool:
        """A window is suspect if another sidecar ran or others used real CPU."""
        return self.foreign_sidecar or self.foreign_cpu_pct > cpu_limit_pct


class Neighbours:
    """Watches what other people run on this shared machine during measurements.

    Another sidecar's syscall tracepoints slow every process, and any other
    busy process takes CPU from a 2-vCPU machine, so a window either touched
    is not a clean sample. The report says which windows were, and gives the
    medians without them. Foreign CPU is a lower bound: a process that starts
    and ends within one window is not seen.
    """

    INTERVAL_S = 0.25

    def __init__(self, patience_s: float, cpu_limit_pct: float) -> None:
        self.cpu_limit_pct = cpu_limit_pct
        self._patience_left = patience_s
        self._sidecar_seen: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)
        self._thread.start()

    def _scan(self) -> None:
        while not self._stop.is_set():
            if _foreign_sidecars():
                self._sidecar_seen.append(time.monotonic())
            self._stop.wait(self.INTERVAL_S)

    @contextlib.contextmanager
    def window(self) -> Iterator[list[Window]]:
        """Measure what others did during the ``with`` block; the list gets one Window."""
        result: list[Window] = []
        before = _foreign_cpu()
        started = time.monotonic()
        yield result
        after = _foreign_cpu()
        ended = time.monotonic()
        used = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
        if _foreign_sidecars():
            self._sidecar_seen.append(ended)
        seen = any(started - self.INTERVAL_S <= at <= ended for at in list(self._sidecar_seen))
        result.append(Window(100 * max(0.0, used) / (ended - started), seen))

    def wait_quiet(self, limit_s: float) -> float:
        """Wait up to ``limit_s`` until others are idle; return the time waited.

        The total wait is bounded by the patience given at construction, so a
        machine that is never quiet slows the run down only so much.
        """
        started = time.monotonic()
        limit_s = min(limit_s, self._patience_left)
        while time.monotonic() - started < limit_s:
            with self.window() as probe:
                time.sleep(0.5)
            if not probe[0].disturbed(self.cpu_limit_pct):
                break
        waited = time.monotonic() - started
        self._patience_left = max(0.0, self._patience_left - waited)
        return waited

    def close(self) -> None:
        """Stop scanning; the thread ends within one interval."""
        self._stop.set()


SPINNER = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"
"""One CPU kept busy in pure Python: the "other work" of a saturated machine."""


class Saturation:
    """One busy process per CPU this run may use, each pinned to its CPU, while in use.

    A saturated machine is one whose cores all have other work to do: the
    sidecar, Austin and the target then wait for a CPU like everybody else.
    The spinners are the runner's own children (never counted as others'
    work), are stopped on the way out, and their CPU over the pass is
    reported so a reader can see the cores really were busy.
    """

    def __init__(self) -> None:
        self.cpus = sorted(os.sched_getaffinity(0))
        self.spinners: list[Child] = []
        self._before: list[CpuTimes] = []
        self.busy_pct: list[float] = []

    def __enter__(self) -> Self:
        try:
            for cpu in self.cpus:
                argv = [PYTHON, "-c", SPINNER, str(cpu)]
                self.spinners.append(
                    Child(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            time.sleep(0.2)
            self._before = [cpu_times(spinner.pid) for spinner in self.spinners]
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        try:
            dead = [s.pid for s in self.spinners if s.process.poll() is not None]
            if dead:
                msg = f"failed to keep the machine saturated: spinner(s) {dead} exited"
                raise BenchError(msg)
            self.busy_pct = [
                cpu_times(spinner.pid).percent_since(before)[0]
                for spinner, before in zip(self.spinners, self._before, strict=True)
            ]
        finally:
            self._stop()

    def _stop(self) -> None:
        for spinner in self.spinners:
            spinner.stop(timeout=3.0)

    def describe(self) -> str:
        """One markdown line: what kept the machine busy, and how busy it was."""
        busy = ", ".join(f"{pct:.0f}%" for pct in self.busy_pct) or "not measured"
        return (
            f"**Saturated machine:** {len(self.cpus)} busy processes started by the bench, "
            f"one pinned to each CPU ({', '.join(map(str, self.cpus))}), "
            "each a Python `while True: pass` at normal priority, for the whole pass; "
            f"they used {busy} of their CPUs over the pass (the rest went to the tools, "
            "the targets and others).\n"
        )


@dataclass(frozen=True, slots=True)
class TimedApp:
    """A bench app that times the blocks it injects and writes them to ``--out``."""

    script: str  # under bench/apps/
    args: list[str]
    expected_s: float  # how long it should run; it is given three times that, plus 60 s
    what: str  # for the error message
    python: str = PYTHON


def run_timed_app(
    app: TimedApp, threshold_ms: float, raw: Path
) -> tuple[str, list[dict[str, Any]]]:
    """Launch ``app`` under the sidecar until it exits.

    The app's own timings and the sidecar's records are returned, and kept as
    ``RAW.jsonl`` (the sidecar's) and ``RAW-injected.json`` (the app's).
    """
    with tempfile.TemporaryDirectory(prefix="blocksnoop-bench-") as tmp:
        app_out = Path(tmp) / "injected.json"
        argv = [*python_argv(app.python), str(APPS / app.script), f"--out={app_out}", *app.args]
        sidecar = Sidecar(
            ["-t", f"{threshold_ms:g}", "--", *argv], raw.parent / f"{raw.name}.jsonl"
        )
        try:
            code = sidecar.child.wait(timeout=60 + 3 * app.expected_s)
        finally:
            sidecar.child.stop()
        if code != 0 or not app_out.exists():
            msg = f"failed to run the {app.what} (exit {code}): "
            raise BenchError(msg + sidecar.stderr.text()[-800:])
        timings = app_out.read_text()
    (raw.parent / f"{raw.name}-injected.json").write_text(timings)
    return timings, sidecar.records()
