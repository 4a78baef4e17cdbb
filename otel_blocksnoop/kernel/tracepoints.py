"""Attaching a loaded BPF program to a tracepoint or to the cpu-clock, without libbcc.

As BCC does it: ``perf_event_open`` of an event for every task (pid -1) on
a CPU, then the PERF_EVENT_IOC_SET_BPF and PERF_EVENT_IOC_ENABLE ioctls;
closing the perf event fd detaches the program. A tracepoint event (its id
read from tracefs) runs its programs wherever it fires, whatever the CPU it
was opened on: one event is enough. A cpu-clock event samples only its own
CPU: one per online CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from otel_blocksnoop.kernel.bpf_syscall import (
    libc_syscall,
    load_noop_program,
    parse_cpu_list,
    syscall_number,
)

TRACEFS_EVENTS = (Path("/sys/kernel/tracing/events"), Path("/sys/kernel/debug/tracing/events"))
"""Where tracepoint ids are found: tracefs, then tracefs under debugfs."""

ONLINE_CPUS = Path("/sys/devices/system/cpu/online")
MOUNTS = Path("/proc/self/mounts")
PERF_EVENT_PARANOID = Path("/proc/sys/kernel/perf_event_paranoid")
BPF_PROG_TYPE_TRACEPOINT = 5

PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_ATTR_DISABLED = 1 << 0  # the first bit of perf_event_attr's flag word

# ioctl numbers: _IO('$', 0) and _IOW('$', 8, __u32).
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408

PERF_ATTR_SIZE = 128
"""PERF_ATTR_SIZE_VER7: the kernel reads this much and needs nothing past it here."""


class PerfEventAttr(ctypes.Structure):
    """The head of ``struct perf_event_attr``, zero-padded to ``PERF_ATTR_SIZE``."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("rest", ctypes.c_uint8 * (PERF_ATTR_SIZE - 56)),
    )


def tracepoint_id(category: str, event: str) -> int | None:
    """The kernel's id of tracepoint ``category:event``; None if it has none (or no tracefs)."""
    for root in TRACEFS_EVENTS:
        with contextlib.suppress(OSError, ValueError):
            return int((root / category / event / "id").read_text())
    return None


def tracepoint_exists(category: str, event: str) -> bool:
    return tracepoint_id(category, event) is not None


def tracefs_mounts(mounts: str) -> set[Path]:
    """Mount points of tracefs in a /proc/PID/mounts text (octal escapes undone)."""
    points = set()
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "tracefs":
            points.add(Path(fields[1].encode().decode("unicode_escape")))
    return points


@dataclass(frozen=True, slots=True)
class TracefsAccess:
    """Whether this process can read a tracepoint's files, and if not, why."""

    events: Path | None = None
    """The readable ``events`` directory that holds the tracepoint."""
    denied: Path | None = None
    """A tracefs mounted where this process may not read it (its permissions, not its absence)."""
    without_event: Path | None = None
    """A readable ``events`` directory without the tracepoint (a kernel without it)."""


def tracefs_access(category: str, event: str) -> TracefsAccess:
    """Read the files of ``category:event`` where ``tracepoint_id`` and BCC do.

    The id (read to attach) and the format (read by BCC to compile) are both
    read, so a tracefs that is mounted but closed to this user (mode 0700,
    owned by root, as mounted by default) is told apart from one not mounted.
    """
    try:
        mounted = tracefs_mounts(MOUNTS.read_text(errors="replace"))
    except OSError:
        mounted = set()
    denied = without_event = None
    for events in TRACEFS_EVENTS:
        directory = events / category / event
        try:
            int((directory / "id").read_text())
            (directory / "format").read_bytes()
        except PermissionError:
            if denied is None and events.parent in mounted:
                denied = events.parent
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                if without_event is None and events.is_dir() and any(events.iterdir()):
                    without_event = events
        else:
            return TracefsAccess(events=events)
    return TracefsAccess(denied=denied, without_event=without_event)


def perf_event_paranoid() -> int | None:
    """kernel.perf_event_paranoid (2 on most distributions), None if unreadable."""
    try:
        return int(PERF_EVENT_PARANOID.read_text())
    except (OSError, ValueError):
        return None


def probe_attach(category: str, event: str) -> tuple[str, OSError] | None:
    """Load a program that does nothing and attach it to ``category:event``, as a run does.

    The same steps and calls as loading and ``attach_tracepoint``, so the same
    refusals: None when the kernel allowed both, else the step refused and why.
    The program is detached and freed before returning.
    """
    try:
        prog_fd = load_noop_program(BPF_PROG_TYPE_TRACEPOINT)
    except OSError as exc:
        return "load a tracepoint BPF program", exc
    try:
        fd = attach_tracepoint(prog_fd, category, event)
    except OSError as exc:
        return f"open a perf event on {category}:{event} for every process", exc
    finally:
        os.close(prog_fd)
    os.close(fd)
    return None


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int, group_fd: int, flags: int) -> int:
    """The perf_event_open syscall: a new fd, or OSError."""
    fd = int(
        libc_syscall(
            ctypes.c_long(syscall_number("perf_event_open")),
            ctypes.byref(attr),
            ctypes.c_long(pid),
            ctypes.c_long(cpu),
            ctypes.c_long(group_fd),
            ctypes.c_ulong(flags),
        )
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return fd


def _open_with_program(attr: PerfEventAttr, cpu: int, prog_fd: int) -> int:
    """Open the event for every task on ``cpu`` and run ``prog_fd`` on it; OSError if refused."""
    fd = perf_event_open(attr, pid=-1, cpu=cpu, group_fd=-1, flags=PERF_FLAG_FD_CLOEXEC)
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def attach_tracepoint(prog_fd: int, category: str, event: str) -> int:
    """Run program ``prog_fd`` at tracepoint ``category:event``; the perf event fd holds it.

    OSError when the tracepoint does not exist or the kernel refuses.
    """
    found = tracepoint_id(category, event)
    if found is None:
        msg = f"no tracepoint {category}:{event} under {' or '.join(map(str, TRACEFS_EVENTS))}"
        raise FileNotFoundError(msg)
    attr = PerfEventAttr(
        type=PERF_TYPE_TRACEPOINT,
        size=ctypes.sizeof(PerfEventAttr),
        config=found,
        sample_period=1,
        wakeup_events=1,
        flags=PERF_ATTR_DISABLED,
    )
    return _open_with_program(attr, 0, prog_fd)


def attach_cpu_clock(prog_fd: int, period_ns: int) -> list[int]:
    """Run ``prog_fd`` after every ``period_ns`` of busy time of each online CPU.

    Returns one perf event fd per CPU (all or none: OSError when the kernel
    refuses one).
    """
    fds: list[int] = []
    try:
        for cpu in parse_cpu_list(ONLINE_CPUS.read_text()):
            attr = PerfEventAttr(
                type=PERF_TYPE_SOFTWARE,
                size=ctypes.sizeof(PerfEventAttr),
                config=PERF_COUNT_SW_CPU_CLOCK,
                sample_period=period_ns,
                flags=PERF_ATTR_DISABLED,
            )
            fds.append(_open_with_program(attr, cpu, prog_fd))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds
