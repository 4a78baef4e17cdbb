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
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from otel_blocksnoop.errors import BccMissingError, BpfLoadError, NoPrivilegesError
from otel_blocksnoop.events import (
    Activity,
    BlockEvent,
    Counters,
    EndReason,
    HistogramSnapshot,
    InProgress,
    Sleep,
    ThreadSnapshot,
    ThreadTimes,
)
from otel_blocksnoop.kernel import histogram
from otel_blocksnoop.kernel.syscalls import syscall_name

log = logging.getLogger(__name__)

EPOLL_SYSCALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
COMM_LEN = 16
WATCH_ROOT = 1
SLEEP_SLOTS = 4
BLOCK_THREAD_EXITED = 1
BATCH_READ_ABOVE = 32
OFF_ON_CPU = -2
OFF_RUNQ = -3

# enum counter in bpf/detector.h
COUNTER_LOST_EVENTS = 0
COUNTER_ITERATIONS = 1
COUNTER_BUSY_NS = 2
COUNTER_STATE_FULL = 3


def bpf_dir() -> Path:
    """Directory holding the C sources: inside the wheel, else the source tree."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "bpf", package.parent / "bpf"):
        if (candidate / "detector.bpf.c").is_file():
            return candidate
    msg = f"BPF sources not found next to {package}"
    raise BpfLoadError(msg)


class SleepSlotC(ctypes.Structure):
    """Mirror of ``struct sleep_slot`` in bpf/detector.h."""

    _fields_ = (("ns", ctypes.c_uint64), ("nr", ctypes.c_int32), ("count", ctypes.c_uint32))


class ActivityC(ctypes.Structure):
    """Mirror of ``struct activity`` in bpf/detector.h."""

    _fields_ = (
        ("on_cpu_ns", ctypes.c_uint64),
        ("runq_ns", ctypes.c_uint64),
        ("sleep_ns", ctypes.c_uint64),
        ("other_sleep_ns", ctypes.c_uint64),
        ("sibling_cpu_ns", ctypes.c_uint64),
        ("sleeps", SleepSlotC * SLEEP_SLOTS),
    )


class BlockEventC(ctypes.Structure):
    """Mirror of ``struct block_event`` in bpf/detector.h."""

    _fields_ = (
        ("start_ns", ctypes.c_uint64),
        ("end_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("activity", ActivityC),
        ("comm", ctypes.c_char * COMM_LEN),
    )


class ThreadStateC(ctypes.Structure):
    """Mirror of ``struct thread_state`` in bpf/detector.h."""

    _fields_ = (
        ("left_epoll_ns", ctypes.c_uint64),
        ("switched_at", ctypes.c_uint64),
        ("proc_cpu_start", ctypes.c_uint64),
        ("own_cpu_ns", ctypes.c_uint64),
        ("entered_epoll_ns", ctypes.c_uint64),
        ("iterations", ctypes.c_uint64),
        ("busy_ns", ctypes.c_uint64),
        ("idle_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("off_nr", ctypes.c_int32),
        ("activity", ActivityC),
    )


class WatchStateC(ctypes.Structure):
    """Mirror of ``struct watch_state`` in bpf/detector.h."""

    _fields_ = (("cpu_ns", ctypes.c_uint64), ("how", ctypes.c_uint32), ("pad", ctypes.c_uint32))


class IterExtremesC(ctypes.Structure):
    """Mirror of ``struct iter_extremes`` in bpf/detector.h."""

    _fields_ = (("min_ns", ctypes.c_uint64), ("max_ns", ctypes.c_uint64))


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """What the kernel side is compiled for."""

    threshold_ns: int
    tid: int = 0
    stats: bool = False
    activity: bool = True  # book on/off-CPU time per block through sched_switch
    max_threads: int = 16384
    max_watched: int = 8192
    ringbuf_pages: int = 256  # 1 MiB: ~25,000 blocks queued before loss


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
        f"-DTRACK_ACTIVITY={int(config.activity and not config.stats)}",
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


def activity_from_c(raw: ActivityC) -> Activity:
    """The kernel's books of one iteration, with syscall numbers named."""
    return Activity(
        on_cpu_ns=raw.on_cpu_ns,
        runq_ns=raw.runq_ns,
        sleep_ns=raw.sleep_ns,
        sleeps=tuple(
            Sleep(syscall=syscall_name(slot.nr), ns=slot.ns, count=slot.count)
            for slot in raw.sleeps
            if slot.count
        ),
        other_sleep_ns=raw.other_sleep_ns,
        sibling_cpu_ns=raw.sibling_cpu_ns,
    )


def activity_so_far(state: ThreadStateC, process_cpu_ns: int, now_ns: int) -> Activity:
    """What a thread still out of epoll has done up to ``now_ns``.

    The kernel books a stretch on or off CPU when it ends; the current one is
    added here, as the epoll entry program does for a finished block.
    """
    current = max(0, now_ns - state.switched_at)
    done = activity_from_c(state.activity)
    on_cpu, runq, sleeps = done.on_cpu_ns, done.runq_ns, list(done.sleeps)
    sleep_ns, other = done.sleep_ns, done.other_sleep_ns
    if state.off_nr == OFF_ON_CPU:
        on_cpu += current
    elif state.off_nr == OFF_RUNQ:
        runq += current
    else:
        sleep_ns += current
        name = syscall_name(state.off_nr)
        for index, sleep in enumerate(sleeps):
            if sleep.syscall == name:
                sleeps[index] = Sleep(name, sleep.ns + current, sleep.count + 1)
                break
        else:
            if len(sleeps) < SLEEP_SLOTS:
                sleeps.append(Sleep(name, current, 1))
            else:
                other += current
    process = process_cpu_ns - state.proc_cpu_start
    return Activity(
        on_cpu_ns=on_cpu,
        runq_ns=runq,
        sleep_ns=sleep_ns,
        sleeps=tuple(sleeps),
        other_sleep_ns=other,
        sibling_cpu_ns=max(0, process - state.own_cpu_ns),
    )


class ThreadMap:
    """The kernel's thread table, read key by key with the GIL held.

    BCC calls libbcc through ``ctypes.CDLL``, which gives the GIL away around
    every bpf() call; winning it back from a busy thread of the sidecar (the
    stack decoder) may take the 5 ms switch interval each time, several times
    per look, which made the trace linker late for short blocks. A bpf() map
    call takes about a microsecond: holding the GIL through it costs nothing.
    """

    def __init__(self, map_fd: int, library: str, limit: int) -> None:
        lib = ctypes.PyDLL(library, use_errno=True)
        self._fd = map_fd
        self._limit = limit
        self._lookup = lib.bpf_lookup_elem
        self._next_key = lib.bpf_get_next_key
        for function in (self._lookup, self._next_key):
            function.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
            function.restype = ctypes.c_int

    def get(self, tid: int) -> ThreadStateC | None:
        key, state = ctypes.c_uint32(tid), ThreadStateC()
        found = self._lookup(self._fd, ctypes.byref(key), ctypes.byref(state)) == 0
        return state if found else None

    def items(self) -> list[tuple[int, ThreadStateC]]:
        """Every entry; one deleted meanwhile restarts the kernel's walk, hence the dict."""
        found: dict[int, ThreadStateC] = {}
        key, following = ctypes.c_uint32(), ctypes.c_uint32()
        # With no key, the kernel gives the first one.
        more = self._next_key(self._fd, None, ctypes.byref(key)) == 0
        for _ in range(2 * self._limit):
            if not more:
                break
            state = self.get(key.value)
            if state is not None:
                found[key.value] = state
            more = self._next_key(self._fd, ctypes.byref(key), ctypes.byref(following)) == 0
            key.value = following.value
        return list(found.items())


class Detector:
    """Owns the BPF object: load, watch PIDs, poll blocks, read counters, close."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self._bpf: Any = None
        self._pending: list[BlockEvent] = []
        self._table_size = 0
        self._threads: ThreadMap | None = None
        self.attached: tuple[str, ...] = ()

    def load(self) -> None:
        try:
            from bcc import BPF  # noqa: PLC0415 - optional system package, checked here
        except ImportError as exc:
            msg = f"failed to import bcc: {exc}"
            raise BccMissingError(msg) from exc

        try:
            self._bpf = self._compile(BPF)
        except (BpfLoadError, NoPrivilegesError) as exc:
            if not self.tracks_activity:
                raise
            # The cause needs bpf_task_pt_regs and BTF (Linux 5.15+) and kernel reads
            # (denied by lockdown=confidentiality); detection needs neither.
            log.warning("%s; blocks are reported without their cause", exc)
            self.config = replace(self.config, activity=False)
            self._bpf = self._compile(BPF)
        self._attach(BPF)
        from bcc import libbcc  # noqa: PLC0415 - with BPF above

        library = libbcc.lib._name  # noqa: SLF001 (the file BCC loaded: "libbcc.so.0")
        self._threads = ThreadMap(self._bpf["threads"].map_fd, library, self.config.max_threads)
        if not self.config.stats:
            self._bpf["events"].open_ring_buffer(self._on_event)

    def _compile(self, bpf_class: Any) -> Any:  # noqa: ANN401 - bcc has no type hints
        what = "BPF program" if not self.tracks_activity else "BPF program with cause tracking"
        with _captured_stderr() as output:
            try:
                bpf = bpf_class(text=program_source(), cflags=program_cflags(self.config))
            except Exception as exc:
                text = output.read_text(errors="replace")
                log.debug("compiler output:\n%s", text)
                if "Operation not permitted" in text or isinstance(exc, PermissionError):
                    msg = f"failed to load {what}: operation not permitted"
                    raise NoPrivilegesError(msg) from exc
                msg = f"failed to compile {what}: {_first_error(text)}"
                raise BpfLoadError(msg) from exc
            text = output.read_text(errors="replace")
            if text.strip():
                log.debug("compiler output:\n%s", text)
        return bpf

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
        self._bpf["watched"][ctypes.c_uint32(pid)] = WatchStateC(how=WATCH_ROOT)

    @property
    def tracks_activity(self) -> bool:
        return self.config.activity and not self.config.stats

    def _on_event(self, _ctx: object, data: int, _size: int) -> int:
        raw = ctypes.cast(data, ctypes.POINTER(BlockEventC)).contents
        self._pending.append(
            BlockEvent(
                pid=raw.tgid,
                tid=raw.tid,
                comm=raw.comm.decode(errors="replace"),
                start_ns=raw.start_ns,
                end_ns=raw.end_ns,
                activity=activity_from_c(raw.activity) if self.tracks_activity else None,
                end_reason=(
                    EndReason.THREAD_EXITED
                    if raw.flags & BLOCK_THREAD_EXITED
                    else EndReason.RETURNED
                ),
            )
        )
        return 0

    def snapshot(self, min_ns: int, activity: bool = True) -> ThreadSnapshot:
        """Every tracked thread's loop time, and those out of epoll for ``min_ns`` now.

        ``activity``: also what each of those did so far (the cause of a hang);
        the trace linker needs only who is out of epoll.

        Reads the whole thread table, which holds only epoll-calling threads of
        watched processes: key by key while it is small (41 us for one thread,
        measured), in one batched call past BATCH_READ_ABOVE entries (BCC's batch
        read sizes its buffers for the whole map: 441 us even for one entry).
        """
        threads = self._bpf["threads"]
        entries = None
        if self._table_size > BATCH_READ_ABOVE:
            try:
                entries = list(threads.items_lookup_batch())
            except Exception:  # noqa: BLE001 - older kernels: no batch ops; read key by key
                entries = None
        if entries is None:
            entries = self._threads.items() if self._threads else list(threads.items())
        self._table_size = len(entries)
        now = time.monotonic_ns()
        ongoing = []
        times = []
        cpu_of: dict[int, int] = {}
        for key, state in entries:
            tid = key if isinstance(key, int) else key.value
            left = state.left_epoll_ns
            # The stretch in progress counts too, so a hang shows as busy while it lasts.
            busy = state.busy_ns + (now - left if left else 0)
            entered = state.entered_epoll_ns
            idle = state.idle_ns + (now - entered if not left and entered else 0)
            times.append(ThreadTimes(state.tgid, tid, state.iterations, busy, idle))
            if not left or now - left < min_ns:
                continue
            so_far = None
            if activity and self.tracks_activity:
                if state.tgid not in cpu_of:
                    cpu_of[state.tgid] = self._process_cpu_ns(state.tgid)
                so_far = activity_so_far(state, cpu_of[state.tgid], now)
            ongoing.append(InProgress(state.tgid, tid, left, so_far))
        return ThreadSnapshot(ongoing=tuple(ongoing), times=tuple(times))

    def out_since(self, tid: int) -> int:
        """When ``tid`` last left epoll; 0 while it is inside, or untracked. One map lookup."""
        state = self._threads.get(tid) if self._threads else None
        return int(state.left_epoll_ns) if state is not None else 0

    def in_progress(self, min_ns: int) -> list[InProgress]:
        """Threads out of epoll for at least ``min_ns`` now: blocks still going on."""
        return list(self.snapshot(min_ns).ongoing)

    def _process_cpu_ns(self, tgid: int) -> int:
        try:
            return int(self._bpf["watched"][ctypes.c_uint32(tgid)].cpu_ns)
        except KeyError:
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
