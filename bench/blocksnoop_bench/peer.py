# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""The peer, blocksnoop 0.11.1 from PyPI: installed by the bench itself, run like ours.

Installation is idempotent and kept in the cache beside the target venvs
(``~/.cache/otel-blocksnoop/peer-0.11.1``): a venv of pyenv's CPython 3.12
(the peer needs >= 3.12) with ``pip install blocksnoop==0.11.1``, and our
musl Austin copied into its ``bin/`` (the peer finds ``austin`` on PATH; the
glibc build PyPI gives this machine does not run). The peer looks for
tracepoints only under debugfs, so debugfs is mounted on
``/sys/kernel/debug`` when it is not.

A run is ``blocksnoop --json -t MS PID`` (or ``-- CMD``), stdout to a file,
stopped with SIGINT as a user's Ctrl-C would, which makes it write its
``session_summary``. It has two children while it runs: Austin and its
native BPF collector (``blocksnoop-ebpf``); ``procs.cpu_times`` counts both,
as it counts our sidecar's Austin.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blocksnoop_bench.procs import (
    APPS,
    ATTACH_TIMEOUT_S,
    BenchError,
    Child,
    Lines,
    TimedApp,
    json_records,
    python_argv,
    rss_mib,
)
from harness.interpreters import CACHE, pyenv_python
from harness.procs import children

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

PEER_VERSION = "0.11.1"
PEER_MINOR = 12
"""blocksnoop 0.11.1 requires Python >= 3.12."""
PEER_VENV = CACHE / f"peer-{PEER_VERSION}"
DEBUGFS = Path("/sys/kernel/debug")
OUR_AUSTIN = Path(sys.executable).with_name("austin")
PIP_TIMEOUT_S = 600
PEER_CHILDREN = ("austin", "blocksnoop-ebpf")
"""What a running peer has started once it watches: its sampler and its BPF collector."""
CLEAN_EXITS = (0, 130)
"""The peer exits 130 after SIGINT, with its summary written."""
NS_PER_S = 1_000_000_000


def _installed_version(python: Path) -> str | None:
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('blocksnoop'))"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _mount_debugfs() -> None:
    if os.path.ismount(DEBUGFS):
        return
    sys.stderr.write(f"bench: mounting debugfs on {DEBUGFS} (the peer reads tracepoints there)\n")
    done = subprocess.run(
        ["mount", "-t", "debugfs", "debugfs", str(DEBUGFS)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 and not os.path.ismount(DEBUGFS):
        msg = f"failed to mount debugfs on {DEBUGFS}: {done.stderr.strip()}"
        raise BenchError(msg)


def _copy_austin(venv: Path) -> None:
    """Our musl Austin into the peer's bin/, unless the same binary is there already."""
    if not OUR_AUSTIN.exists():
        msg = f"failed to find our Austin at {OUR_AUSTIN}: run `make setup` first"
        raise BenchError(msg)
    target = venv / "bin" / "austin"
    if target.exists() and target.read_bytes() == OUR_AUSTIN.read_bytes():
        return
    shutil.copy2(OUR_AUSTIN, target)
    target.chmod(0o755)


def install_peer(venv: Path = PEER_VENV) -> Path:
    """Make sure blocksnoop 0.11.1 can run here; return its venv. Cheap when already done."""
    _mount_debugfs()
    python = venv / "bin" / "python"
    if not python.exists() or _installed_version(python) != PEER_VERSION:
        base = pyenv_python(PEER_MINOR)
        if base is None:
            msg = f"failed to install the peer: no pyenv CPython 3.{PEER_MINOR} (it needs >= 3.12)"
            raise BenchError(msg)
        sys.stderr.write(f"bench: installing blocksnoop=={PEER_VERSION} into {venv}...\n")
        steps = (
            [str(base), "-m", "venv", "--clear", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", f"blocksnoop=={PEER_VERSION}"],
        )
        for argv in steps:
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, check=False, timeout=PIP_TIMEOUT_S
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                msg = f"failed to install the peer ({' '.join(argv[1:4])}): {exc}"
                raise BenchError(msg) from exc
            if done.returncode != 0:
                msg = f"failed to install the peer: {done.stderr.strip()[-500:]}"
                raise BenchError(msg)
        if _installed_version(python) != PEER_VERSION:
            msg = f"failed to install the peer: blocksnoop {PEER_VERSION} not importable"
            raise BenchError(msg)
    _copy_austin(venv)
    return venv


def children_rss_mib(pid: int) -> float:
    """Resident memory of the running children of ``pid`` (Austin, the peer's collector)."""
    total = 0.0
    for child, _comm, _fields in children(pid):
        with contextlib.suppress(OSError, BenchError):
            total += rss_mib(child)
    return total


class Peer:
    """One blocksnoop 0.11.1 run with ``--json``; stdout goes to a file, stderr is read."""

    def __init__(self, venv: Path, args: Sequence[str], out: Path) -> None:
        self.out = out
        self.attach_s: float | None = None
        self._started = time.monotonic()
        out.parent.mkdir(parents=True, exist_ok=True)
        bin_dir = venv / "bin"
        # ``env`` execs in place, so the PID measured is the peer's own.
        path = f"PATH={bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        argv = ["env", path, str(bin_dir / "blocksnoop"), "--json", *args]
        with out.open("w") as stdout:
            self.child = Child(argv, stdout=stdout)
        if self.child.process.stderr is None:
            msg = "failed to start the peer: no stderr pipe"
            raise BenchError(msg)
        self.stderr = Lines(self.child.process.stderr)

    @property
    def pid(self) -> int:
        """The peer's own PID, whose CPU (children included) and RSS are measured."""
        return self.child.pid

    def wait_attached(self) -> None:
        """Block until Austin and the BPF collector run: the peer logs nothing when ready.

        Its collector answers a handshake once its probes are attached, and the
        peer starts it after Austin; both present is as close as the outside
        can see. The caller's settle time covers the rest.
        """
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.child.process.poll() is not None:
                msg = f"failed to see the peer attach: it exited ({self.stderr.text()[-500:]})"
                raise BenchError(msg)
            names = {comm for _pid, comm, _fields in children(self.pid)}
            if all(name in names for name in PEER_CHILDREN):
                self.attach_s = time.monotonic() - self._started
                return
            time.sleep(0.05)
        msg = f"failed to see the peer attach: nothing after {ATTACH_TIMEOUT_S:g} s"
        raise BenchError(msg)

    def stop(self) -> int:
        """SIGINT, so it writes its summary, as a user's Ctrl-C would."""
        return self.child.stop(first=signal.SIGINT)

    def records(self) -> list[dict[str, Any]]:
        """Parsed JSON lines; a torn last line (a killed peer) is skipped."""
        return json_records(self.out)


@contextlib.contextmanager
def peer_attached(
    venv: Path, pid: int, threshold_ms: float, out: Path, settle_s: float
) -> Iterator[Peer]:
    """Yield the peer watching ``pid`` once attached and settled; stop it after.

    The peer's counterpart of ``procs.attached``: same threshold flag, same
    settle time, same stop signal.
    """
    peer = Peer(venv, ["-t", f"{threshold_ms:g}", str(pid)], out)
    try:
        peer.wait_attached()
        time.sleep(settle_s)
        yield peer
    finally:
        code = peer.stop()
        if code not in CLEAN_EXITS:
            sys.stderr.write(f"bench: peer exited {code}: {peer.stderr.text()[-500:]}\n")


def wall_minus_mono_ns() -> int:
    """Offset between CLOCK_REALTIME and CLOCK_MONOTONIC now (best of a few reads)."""
    best: tuple[int, int] | None = None
    for _ in range(5):
        a = time.monotonic_ns()
        wall = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, wall - (a + b) // 2)
    assert best is not None  # noqa: S101 - the loop ran
    return best[1]


def run_peer_timed(
    venv: Path, app: TimedApp, threshold_ms: float, raw: Path
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Launch ``app`` under the peer until it exits; the peer's counterpart of run_timed_app."""
    with tempfile.TemporaryDirectory(prefix="blocksnoop-bench-") as tmp:
        app_out = Path(tmp) / "injected.json"
        argv = [*python_argv(app.python), str(APPS / app.script), f"--out={app_out}", *app.args]
        offset_before = wall_minus_mono_ns()
        peer = Peer(
            venv, ["-t", f"{threshold_ms:g}", "--", *argv], raw.parent / f"{raw.name}.jsonl"
        )
        try:
            code = peer.child.wait(timeout=60 + 3 * app.expected_s)
        finally:
            peer.child.stop()
        offset_after = wall_minus_mono_ns()
        if code != 0 or not app_out.exists():
            msg = f"failed to run the {app.what} under the peer (exit {code}): "
            raise BenchError(msg + peer.stderr.text()[-800:])
        timings = app_out.read_text()
    (raw.parent / f"{raw.name}-injected.json").write_text(timings)
    if abs(offset_after - offset_before) > NS_PER_S // 1000:
        sys.stderr.write(
            "bench: the wall clock moved against the monotonic one by "
            f"{(offset_after - offset_before) / 1e6:.1f} ms during the peer's run\n"
        )
    return json.loads(timings), peer.records(), (offset_before + offset_after) // 2
