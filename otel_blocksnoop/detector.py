"""Kernel side of detection: load bpf/detector.bpf.c with BCC, feed it PIDs, read blocks.

Every epoll variant the kernel has (epoll_wait, epoll_pwait, epoll_pwait2)
gets the same enter/exit programs, so loops built on any of them (asyncio's
selector loop, uvloop/libuv) are timed alike. Threshold, thread filter and
mode are compile-time constants, so the kernel drops short iterations itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otel_blocksnoop import histogram
from otel_blocksnoop.errors import BccMissingError, BpfLoadError, NoPrivilegesError
from otel_blocksnoop.events import BlockEvent

log = logging.getLogger(__name__)

EPOLL_SYSCALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
COMM_LEN = 16
WATCH_ROOT = 1

# enum counter in bpf/detector.h
COUNTER_LOST_EVENTS = 0
COUNTER_ITERATIONS = 1
COUNTER_BUSY_NS = 2
COUNTER_STATE_FULL = 3


def bpf_dir() -> Path:
    """Directory holding the C sources: inside the wheel, else the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "bpf", here.parent / "bpf"):
        if (candidate / "detector.bpf.c").is_file():
            return candidate
    msg = f"BPF sources not found next to {here}"
    raise BpfLoadError(msg)


class BlockEventC(ctypes.Structure):
    """Mirror of ``struct block_event`` in bpf/detector.h."""

    _fields_ = (
        ("start_ns", ctypes.c_uint64),
        ("end_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
    )


class ThreadStateC(ctypes.Structure):
    """Mirror of ``struct thread_state`` in bpf/detector.h."""

    _fields_ = (
        ("left_epoll_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    )


class IterExtremesC(ctypes.Structure):
    """Mirror of ``struct iter_extremes`` in bpf/detector.h."""

    _fields_ = (("min_ns", ctypes.c_uint64), ("max_ns", ctypes.c_uint64))


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """What the kernel side is compiled for."""

    threshold_ns: int
    tid: int = 0
    stats: bool = False
    max_threads: int = 16384
    max_watched: int = 8192
    ringbuf_pages: int = 256  # 1 MiB: ~25,000 blocks queued before loss


@dataclass(frozen=True, slots=True)
class Counters:
    """Kernel counters, summed over CPUs."""

    lost_events: int
    iterations: int
    busy_ns: int
    untracked_threads: int


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Cumulative iteration histogram plus the extremes since the last read."""

    counts: tuple[int, ...]
    min_ns: int
    max_ns: int


def program_source() -> str:
    """The C text BCC compiles, with the shared header inlined."""
    directory = bpf_dir()
    header = (directory / "detector.h").read_text()
    source = (directory / "detector.bpf.c").read_text()
    return source.replace('#include "detector.h"', header, 1)


def program_cflags(config: DetectorConfig) -> list[str]:
    return [
        f"-DTHRESHOLD_NS={config.threshold_ns}ULL",
        f"-DTARGET_TID={config.tid}",
        f"-DSTATS_MODE={int(config.stats)}",
        f"-DMAX_THREADS={config.max_threads}",
        f"-DMAX_WATCHED={config.max_watched}",
        f"-DRINGBUF_PAGES={config.ringbuf_pages}",
    ]


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Path]:
    """Collect what libbcc's compiler writes to fd 2 (it bypasses sys.stderr)."""
    with tempfile.NamedTemporaryFile(prefix="blocksnoop-cc-", suffix=".log") as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield Path(sink.name)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _first_error(compiler_output: str) -> str:
    for line in compiler_output.splitlines():
        if "error:" in line:
            return re.sub(r"^.*?error:\s*", "", line).strip()
    lines = [line for line in compiler_output.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


class Detector:
    """Owns the BPF object: load, watch PIDs, poll blocks, read counters, close."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self._bpf: Any = None
        self._pending: list[BlockEvent] = []
        self.attached: tuple[str, ...] = ()

    def load(self) -> None:
        try:
            from bcc import BPF  # noqa: PLC0415 - optional system package, checked here
        except ImportError as exc:
            msg = f"failed to import bcc: {exc}"
            raise BccMissingError(msg) from exc

        with _captured_stderr() as output:
            try:
                self._bpf = BPF(text=program_source(), cflags=program_cflags(self.config))
            except Exception as exc:
                text = output.read_text(errors="replace")
                log.debug("compiler output:\n%s", text)
                if "Operation not permitted" in text or isinstance(exc, PermissionError):
                    msg = "failed to load BPF program: operation not permitted"
                    raise NoPrivilegesError(msg) from exc
                msg = f"failed to compile BPF program: {_first_error(text)}"
                raise BpfLoadError(msg) from exc
            text = output.read_text(errors="replace")
            if text.strip():
                log.debug("compiler output:\n%s", text)
        self._attach(BPF)
        if not self.config.stats:
            self._bpf["events"].open_ring_buffer(self._on_event)

    def _attach(self, bpf_class: Any) -> None:  # noqa: ANN401 - bcc has no type hints
        attached = []
        for name in EPOLL_SYSCALLS:
            if not bpf_class.tracepoint_exists("syscalls", f"sys_enter_{name}"):
                log.debug("kernel has no %s tracepoints", name)
                continue
            try:
                self._bpf.attach_tracepoint(
                    tp=f"syscalls:sys_enter_{name}", fn_name="on_epoll_enter"
                )
                self._bpf.attach_tracepoint(tp=f"syscalls:sys_exit_{name}", fn_name="on_epoll_exit")
            except Exception as exc:
                msg = f"failed to attach syscalls:sys_enter_{name}: {exc}"
                raise BpfLoadError(msg) from exc
            attached.append(name)
        if not attached:
            msg = "failed to attach tracepoints: no syscalls:sys_enter_epoll_* tracepoint"
            raise BpfLoadError(msg)
        self.attached = tuple(attached)
        log.debug("attached to %s", ", ".join(attached))

    def watch(self, pid: int) -> None:
        self._bpf["watched"][ctypes.c_uint32(pid)] = ctypes.c_uint8(WATCH_ROOT)

    def _on_event(self, _ctx: object, data: int, _size: int) -> int:
        raw = ctypes.cast(data, ctypes.POINTER(BlockEventC)).contents
        self._pending.append(
            BlockEvent(
                pid=raw.tgid,
                tid=raw.tid,
                comm=raw.comm.decode(errors="replace"),
                start_ns=raw.start_ns,
                end_ns=raw.end_ns,
            )
        )
        return 0

    def poll(self, timeout_ms: int) -> list[BlockEvent]:
        """Wait up to ``timeout_ms`` for blocks; return those that arrived."""
        self._bpf.ring_buffer_poll(timeout_ms)
        events, self._pending = self._pending, []
        return events

    def counters(self) -> Counters:
        table = self._bpf["counters"]

        def total(index: int) -> int:
            return int(table.sum(ctypes.c_int(index)).value)

        return Counters(
            lost_events=total(COUNTER_LOST_EVENTS),
            iterations=total(COUNTER_ITERATIONS),
            busy_ns=total(COUNTER_BUSY_NS),
            untracked_threads=total(COUNTER_STATE_FULL),
        )

    def histogram(self) -> HistogramSnapshot:
        """Read the stats-mode histogram and reset the extremes."""
        counts = [0] * histogram.BUCKETS
        for key, value in self._bpf["iter_hist"].items():
            counts[key.value] = value.value
        extremes = self._bpf["iter_extremes"]
        per_cpu = extremes[ctypes.c_int(0)]
        mins = [cpu.min_ns for cpu in per_cpu if cpu.min_ns]
        maxes = [cpu.max_ns for cpu in per_cpu]
        extremes.clear()
        return HistogramSnapshot(
            counts=tuple(counts),
            min_ns=min(mins) if mins else 0,
            max_ns=max(maxes) if maxes else 0,
        )

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
