"""How long a process's cgroup was held off the CPU by a CPU quota (``cpu.stat``).

A cgroup over its quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) is
throttled: its threads stay runnable but get no CPU until the next period.
The kernel counts it in the cgroup's ``cpu.stat`` (``nr_throttled``, and
``throttled_usec`` in v2 or ``throttled_time`` in ns in v1), only for the
cgroup whose quota ran out, and in ``cpu.stat.local`` (Linux 6.6+) for every
cgroup that was throttled while it had runnable threads, whichever quota
on its path ran out: its own or a parent's.

So the time comes from the process's own cgroup's ``cpu.stat.local``: a
parent's quota (a Kubernetes pod's, around the container's) throttles the
process as much as its own, and summing the path's ``cpu.stat`` files would
count one stretch once per level. The number of periods that ran out comes
from ``cpu.stat`` of each cgroup on the path that has a quota (the most of
them); on a kernel without ``cpu.stat.local`` the time does too. Both
files add up the CPUs: a cgroup throttled on two CPUs at once counts twice.

The cgroup is found from /proc/PID/cgroup (the v1 hierarchy with the ``cpu``
controller, else the v2 one) and the sidecar's own mount table. A process
whose cgroup cannot be read (no ``cpu`` controller, not mounted here, gone)
has no reading: never a zero.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
MAX_STAT_BYTES = 4096
MAX_MOUNTINFO_BYTES = 1 << 20
NS_PER_US = 1000
LOCAL_STAT = "cpu.stat.local"
STAT = "cpu.stat"
V2_QUOTA = "cpu.max"  # "max 100000": no quota
V1_QUOTA = "cpu.cfs_quota_us"  # -1: no quota
THROTTLED_FIELDS = {"throttled_usec": NS_PER_US, "throttled_time": 1}
PERIODS_FIELD = "nr_throttled"
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class CpuStat:
    """The throttling fields of one ``cpu.stat`` (or ``cpu.stat.local``) file."""

    throttled_ns: int | None
    periods: int | None  # nr_throttled; not in cpu.stat.local


@dataclass(frozen=True, slots=True)
class CgroupFiles:
    """Where a process's throttling is read: its cgroup's local file and its quotas' files."""

    local: Path | None  # the process's cgroup's cpu.stat.local, if the kernel has it
    limited: tuple[Path, ...]  # cpu.stat of each cgroup on its path that has a quota


@dataclass(frozen=True, slots=True)
class Reading:
    """The cumulative counters of a process's cgroup files at one instant."""

    local_ns: int | None
    limited: tuple[tuple[Path, int, int], ...]  # (file, throttled ns, periods)


@dataclass(frozen=True, slots=True)
class Mount:
    """A cgroup hierarchy mounted in the sidecar's mount namespace."""

    root: str  # the cgroup the mount shows
    point: str  # where it is mounted
    v2: bool


def parse_cpu_stat(text: str) -> CpuStat:
    """``key value`` lines; the throttled time in ns whichever unit the file uses."""
    throttled_ns = periods = None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if not (value.isascii() and value.isdigit()):  # "²".isdigit() too, and int() refuses it
            continue
        if key in THROTTLED_FIELDS:
            throttled_ns = int(value) * THROTTLED_FIELDS[key]
        elif key == PERIODS_FIELD:
            periods = int(value)
    return CpuStat(throttled_ns=throttled_ns, periods=periods)


def cpu_cgroup(proc_cgroup: str) -> tuple[bool, str] | None:
    """From /proc/PID/cgroup: (v2?, path) of the hierarchy that has the ``cpu`` controller.

    A v1 line naming ``cpu`` wins: the controller is bound to one hierarchy,
    and where v1 has it, the v2 hierarchy's files have no throttling.
    """
    unified = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:  # hierarchy-id:controllers:path
            continue
        _, controllers, path = parts
        if "cpu" in controllers.split(","):
            return False, path
        if parts[0] == "0" and not controllers:
            unified = path
    return None if unified is None else (True, unified)


def _unescape(field: str) -> str:
    r"""A mountinfo field, whose space, tab, newline and backslash are escaped as ``\ooo``."""
    return _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), field)


def cgroup_mounts(mountinfo: str) -> list[Mount]:
    """The v2 mounts and the v1 mounts with the ``cpu`` controller, from a mountinfo text."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or len(fields) < sep + 4:  # mountinfo(5)'s fixed fields
            continue
        fstype, options = fields[sep + 1], fields[sep + 3].split(",")
        if fstype == "cgroup2" or (fstype == "cgroup" and "cpu" in options):
            mounts.append(
                Mount(
                    root=_unescape(fields[3]),
                    point=_unescape(fields[4]),
                    v2=fstype == "cgroup2",
                )
            )
    return mounts


def own_mounts() -> list[Mount]:
    """The cgroup mounts the sidecar sees (its own mount namespace)."""
    try:
        with Path("/proc/self/mountinfo").open(encoding="utf-8", errors="replace") as handle:
            return cgroup_mounts(handle.read(MAX_MOUNTINFO_BYTES))
    except OSError:
        return []


def cgroup_dir(path: str, mounts: list[Mount], *, v2: bool) -> Path | None:
    """Where ``path`` of a hierarchy is in the sidecar's file tree, if it is mounted here."""
    if "/.." in path or not path.startswith("/"):
        return None  # outside the sidecar's cgroup namespace
    for mount in mounts:
        if mount.v2 != v2:
            continue
        root = mount.root.rstrip("/")
        if path == root or path.startswith(root + "/"):
            return Path(mount.point + path[len(root) :])
    return None


def _read(path: Path) -> str | None:
    """A small file in one read (os.open: half the cost of ``open``, twice per block)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, MAX_STAT_BYTES).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _has_quota(directory: Path, v2: bool) -> bool:
    text = _read(directory / (V2_QUOTA if v2 else V1_QUOTA))
    if text is None:
        return False
    quota = text.split()[0] if text.split() else ""
    return quota not in {"", "max", "-1"}


def locate(pid: int, mounts: list[Mount], proc: Path = PROC) -> CgroupFiles | None:
    """The files that tell how long ``pid``'s cgroup was throttled; None if none can be read."""
    text = _read(proc / str(pid) / "cgroup")
    found = cpu_cgroup(text) if text is not None else None
    if found is None:
        return None
    v2, path = found
    leaf = cgroup_dir(path, mounts, v2=v2)
    if leaf is None or not (leaf / STAT).exists():
        return None
    local = leaf / LOCAL_STAT
    limited = []
    # Up to the hierarchy's root, which has no quota of its own.
    for directory in (leaf, *leaf.parents):
        if not (directory / STAT).exists():
            break
        if _has_quota(directory, v2):
            limited.append(directory / STAT)
    files = CgroupFiles(local=local if local.exists() else None, limited=tuple(limited))
    if files.local is None and not _throttling_counted(leaf / STAT):
        return None  # a v2 cgroup without the cpu controller: nothing counts throttling
    return files


def _throttling_counted(stat: Path) -> bool:
    text = _read(stat)
    return text is not None and parse_cpu_stat(text).throttled_ns is not None


def read(files: CgroupFiles) -> Reading | None:
    """The counters now; None if the cgroup is gone (or the process moved out of it)."""
    local_ns = None
    if files.local is not None:
        text = _read(files.local)
        if text is None:
            return None
        local_ns = parse_cpu_stat(text).throttled_ns
    limited = []
    for path in files.limited:
        text = _read(path)
        if text is None:
            return None
        stat = parse_cpu_stat(text)
        limited.append((path, stat.throttled_ns or 0, stat.periods or 0))
    return Reading(local_ns=local_ns, limited=tuple(limited))


def delta(start: Reading, end: Reading) -> tuple[int, int]:
    """Throttled time (ns) and quota periods that ran out between two readings.

    The local time when both have it; else the most any one quota held the
    cgroup back (its stretches overlap a parent's: they are not added).
    Counters that went backwards (a cgroup recreated under the same name)
    give nothing rather than a negative.
    """
    ends = {path: (ns, periods) for path, ns, periods in end.limited}
    time_ns = periods = 0
    for path, ns, count in start.limited:
        if path in ends:
            time_ns = max(time_ns, ends[path][0] - ns)
            periods = max(periods, ends[path][1] - count)
    if start.local_ns is not None and end.local_ns is not None:
        time_ns = end.local_ns - start.local_ns
    return max(0, time_ns), max(0, periods)
