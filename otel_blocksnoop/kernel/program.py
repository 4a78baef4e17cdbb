"""The BPF program: where its C sources are, the cflags it is built with, compiling it.

Threshold, trigger age, thread filter and mode are compile-time constants
(``-D`` cflags), so the kernel drops short iterations itself and says by itself
when a thread has been out of epoll long enough; so are the constants the C
shares with Python (``constants``), which have their one source there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otel_blocksnoop.errors import BpfLoadError, NoPrivilegesError
from otel_blocksnoop.kernel.constants import constant_cflags
from otel_blocksnoop.kernel.syscalls import syscall_number

log = logging.getLogger(__name__)

MIN_TICK_NS = 250_000
"""Shortest period of the cpu-clock tick (4 kHz per busy CPU): see ``DetectorConfig.tick_ns``."""
SEGMENT_TICK_NS = 1_000_000
"""Longest tick period with segments: a context change on CPU is placed within half of it."""


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """What the kernel side is compiled for."""

    threshold_ns: int
    tid: int = 0
    stats: bool = False
    activity: bool = True  # book on/off-CPU time per block through sched_switch
    trigger_ns: int = 0  # age out of epoll at which user space is told to look; 0: never
    segments: bool = False  # record each iteration's contexts (needs triggers and activity)
    max_threads: int = 16384
    max_watched: int = 8192
    max_loops: int = 1024  # loop threads whose contexts are recorded (segments)
    ringbuf_pages: int = 256  # 1 MiB: ~25,000 blocks queued before loss
    trigger_pages: int = 16  # 64 KiB: ~1,600 triggers queued before loss
    # (device, inode) of the sidecar's PID namespace when it is not the host's: user
    # space names processes and threads by their ids there (``process.pidns``).
    pidns: tuple[int, int] | None = None

    @property
    def tracks_activity(self) -> bool:
        """Whether the program books what a thread does (stats mode never does)."""
        return self.activity and not self.stats

    @property
    def triggers(self) -> bool:
        """Whether the kernel tells user space when to look (stats mode never does)."""
        return self.trigger_ns > 0 and not self.stats

    @property
    def tracks_segments(self) -> bool:
        """Whether the program records the contexts each iteration ran in."""
        return self.segments and self.triggers and self.tracks_activity

    @property
    def tick_ns(self) -> int:
        """Period of the cpu-clock tick that finds a loop thread busy on CPU.

        Half the trigger age: a thread running on CPU is told between the
        trigger age and 1.5 times it. With segments, at most SEGMENT_TICK_NS:
        each tick is a sighting of the running context. A tick costs only on
        a busy CPU.
        """
        tick = max(MIN_TICK_NS, self.trigger_ns // 2)
        return min(tick, SEGMENT_TICK_NS) if self.tracks_segments else tick


def bpf_dir() -> Path:
    """Directory holding the C sources: inside the wheel, else the source tree."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "bpf", package.parent / "bpf"):
        if (candidate / "detector.bpf.c").is_file():
            return candidate
    msg = f"BPF sources not found next to {package}"
    raise BpfLoadError(msg)


def program_source() -> str:
    """The C text BCC compiles, with the shared header inlined."""
    directory = bpf_dir()
    header = (directory / "detector.h").read_text()
    source = (directory / "detector.bpf.c").read_text()
    return source.replace('#include "detector.h"', header, 1)


def program_cflags(config: DetectorConfig) -> list[str]:
    """What the C is compiled with: ``config``, then the constants shared with Python."""
    return [
        f"-DTHRESHOLD_NS={config.threshold_ns}ULL",
        f"-DTARGET_TID={config.tid}",
        f"-DSTATS_MODE={int(config.stats)}",
        f"-DTRACK_ACTIVITY={int(config.tracks_activity)}",
        f"-DTRIGGER_NS={config.trigger_ns if config.triggers else 0}ULL",
        f"-DMAX_THREADS={config.max_threads}",
        f"-DMAX_WATCHED={config.max_watched}",
        f"-DRINGBUF_PAGES={config.ringbuf_pages}",
        f"-DTRIGGER_PAGES={config.trigger_pages}",
        f"-DSEGMENTS={int(config.tracks_segments)}",
        f"-DMAX_LOOPS={config.max_loops}",
        f"-DPIDNS={int(config.pidns is not None)}",
        f"-DNR_SCHED_YIELD=({syscall_number('sched_yield')})",
        *(
            [f"-DPIDNS_DEV={config.pidns[0]}ULL", f"-DPIDNS_INO={config.pidns[1]}ULL"]
            if config.pidns is not None
            else []
        ),
        *constant_cflags(),
    ]


def compile_program(
    bpf_class: Any,  # noqa: ANN401 - bcc has no type hints
    config: DetectorConfig,
    source: str | None = None,
    capture_fd: int | None = None,
) -> Any:  # noqa: ANN401 - bcc has no type hints
    """Compile and load ``source`` (default ``program_source()``) for ``config`` with BCC's ``BPF``.

    What the compiler writes to fd 2 goes to ``capture_fd`` (a memfd of this
    process's own when None): a parent that owns it can read the reason even
    when LLVM ends this process with ``exit(1)`` before any exception. Raises
    ``NoPrivilegesError`` when the kernel refuses the program, ``BpfLoadError``
    (with the compiler's first error) when it does not build.
    """
    what = "BPF program with cause tracking" if config.tracks_activity else "BPF program"
    text = program_source() if source is None else source
    failure: Exception | None = None
    # Nothing may log inside: fd 2 is the capture there.
    with captured_stderr(capture_fd) as read_output:
        try:
            bpf = bpf_class(text=text, cflags=program_cflags(config))
        except Exception as exc:  # noqa: BLE001 - whatever BCC raised is told below
            failure = exc
        output = read_output()
    if output.strip():
        log.debug("compiler output:\n%s", output)
    if failure is not None:
        if "Operation not permitted" in output or isinstance(failure, PermissionError):
            msg = f"failed to load {what}: operation not permitted"
            raise NoPrivilegesError(msg) from failure
        msg = f"failed to compile {what}: {first_error(output)}"
        raise BpfLoadError(msg) from failure
    return bpf


@contextlib.contextmanager
def captured_stderr(capture_fd: int | None) -> Iterator[Callable[[], str]]:
    """Send what libbcc's compiler writes to fd 2 (it bypasses sys.stderr) to ``capture_fd``.

    Yields a function that reads what was captured so far. In memory (a memfd):
    nothing is written to a filesystem, which may be read-only.
    """
    fd = os.memfd_create("otel-blocksnoop-cc") if capture_fd is None else capture_fd
    os.ftruncate(fd, 0)
    saved = os.dup(2)
    try:
        os.dup2(fd, 2)
        yield lambda: read_capture(fd)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if capture_fd is None:
            os.close(fd)


def read_capture(fd: int, limit: int = 1 << 20) -> str:
    """What a capture fd holds, from its start (at most ``limit`` bytes)."""
    return os.pread(fd, limit, 0).decode(errors="replace")


def first_error(compiler_output: str) -> str:
    """The compiler's first error line without its location, else its last line."""
    for line in compiler_output.splitlines():
        if "error:" in line or line.startswith("LLVM ERROR"):
            return re.sub(r"^.*?(?:error:|LLVM ERROR:)\s*", "", line).strip()
    lines = [line for line in compiler_output.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"
