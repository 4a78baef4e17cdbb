"""CPU quota throttling of a block's cgroup: cpu.stat parsing, finding the files, deltas.

The file texts are what Linux 6.18 wrote here (cgroup v1 ``cpu``) and what
its cgroup v2 ``cpu`` controller writes (same kernel code, other units).
"""

from __future__ import annotations

from pathlib import Path

from otel_blocksnoop.analysis.throttle import ThrottleWatch, bounded
from otel_blocksnoop.events import (
    NS_PER_MS,
    Activity,
    BlockEvent,
    Throttling,
    Trigger,
    TriggerReason,
)
from otel_blocksnoop.process import cgroup
from otel_blocksnoop.process.cgroup import CgroupFiles, CpuStat, Mount, Reading

V1_STAT = """nr_periods 15
nr_throttled 15
throttled_time 1149407656
nr_bursts 0
burst_time 0
"""
V2_STAT = """usage_usec 1864512
user_usec 1800201
system_usec 64311
core_sched.force_idle_usec 0
nr_periods 40
nr_throttled 37
throttled_usec 3581030
nr_bursts 0
burst_usec 0
"""
V2_STAT_NO_CPU_CONTROLLER = "usage_usec 1864512\nuser_usec 1800201\nsystem_usec 64311\n"
MOUNTINFO = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
52 40 0:41 /kubepods.slice /host\\040cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_cpu_stat_gives_throttled_time_in_ns_whichever_unit_the_file_uses() -> None:
    assert cgroup.parse_cpu_stat(V1_STAT) == CpuStat(throttled_ns=1_149_407_656, periods=15)
    assert cgroup.parse_cpu_stat(V2_STAT) == CpuStat(throttled_ns=3_581_030_000, periods=37)
    # cpu.stat.local has the time only
    assert cgroup.parse_cpu_stat("throttled_usec 2500\n") == CpuStat(2_500_000, None)


def test_a_v2_cgroup_without_the_cpu_controller_counts_no_throttling() -> None:
    assert cgroup.parse_cpu_stat(V2_STAT_NO_CPU_CONTROLLER) == CpuStat(None, None)
    assert cgroup.parse_cpu_stat("") == CpuStat(None, None)


def test_the_cpu_controllers_hierarchy_is_found_in_proc_pid_cgroup() -> None:
    # GIVEN a docker container on a cgroup v1 host (cpu bound to v1, an empty v2 line)
    hybrid = "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n"
    assert cgroup.cpu_cgroup(hybrid) == (False, "/docker/abc")
    # AND a pod on a pure cgroup v2 host
    unified = "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-2.scope\n"
    assert cgroup.cpu_cgroup(unified) == (
        True,
        "/kubepods.slice/kubepods-pod1.slice/cri-containerd-2.scope",
    )
    # AND nothing usable
    assert cgroup.cpu_cgroup("3:memory:/x\n") is None
    assert cgroup.cpu_cgroup("") is None


def test_cgroup_mounts_are_the_v2_ones_and_the_v1_cpu_one_unescaped() -> None:
    assert cgroup.cgroup_mounts(MOUNTINFO) == [
        Mount(root="/", point="/sys/fs/cgroup/cpu", v2=False),
        Mount(root="/", point="/sys/fs/cgroup/unified", v2=True),
        Mount(root="/kubepods.slice", point="/host cgroup", v2=True),
    ]


def test_a_cgroup_path_maps_to_a_directory_under_the_mount_that_shows_it() -> None:
    mounts = [
        Mount(root="/kubepods.slice", point="/host", v2=True),
        Mount(root="/", point="/sys/fs/cgroup/cpu", v2=False),
    ]
    assert cgroup.cgroup_dir("/docker/abc", mounts, v2=False) == Path(
        "/sys/fs/cgroup/cpu/docker/abc"
    )
    assert cgroup.cgroup_dir("/", mounts, v2=False) == Path("/sys/fs/cgroup/cpu")
    assert cgroup.cgroup_dir("/kubepods.slice/pod/c", mounts, v2=True) == Path("/host/pod/c")
    # outside what the mount shows, or outside the sidecar's cgroup namespace: not here
    assert cgroup.cgroup_dir("/system.slice/x", mounts, v2=True) is None
    assert cgroup.cgroup_dir("/kubepods.slicex", mounts, v2=True) is None
    assert cgroup.cgroup_dir("/../other/c", mounts, v2=True) is None


def _tree(root: Path, limits: dict[str, str], local: bool = True) -> Path:
    """A v2 hierarchy: root/pod/ctr, each with cpu.stat and cpu.max as given."""
    leaf = root / "pod" / "ctr"
    leaf.mkdir(parents=True)
    (root / "cpu.stat").write_text(V2_STAT_NO_CPU_CONTROLLER)
    for directory in (root / "pod", leaf):
        (directory / "cpu.stat").write_text(V2_STAT)
        (directory / "cpu.max").write_text(limits.get(directory.name, "max 100000") + "\n")
        if local:
            (directory / "cpu.stat.local").write_text("throttled_usec 10\n")
    return leaf


def _proc(tmp_path: Path, text: str) -> Path:
    """A /proc with one process, 7, in the cgroup ``text`` names."""
    proc = tmp_path / "proc"
    (proc / "7").mkdir(parents=True)
    (proc / "7" / "cgroup").write_text(text)
    return proc


def test_the_files_are_the_cgroups_local_stat_and_the_stat_of_each_cgroup_with_a_quota(
    tmp_path: Path,
) -> None:
    # GIVEN a pod whose quota is set on the pod, not on its container
    root = tmp_path / "cg"
    leaf = _tree(root, {"pod": "50000 100000"})
    proc = _proc(tmp_path, "0::/pod/ctr\n")
    files = cgroup.locate(7, [Mount(root="/", point=str(root), v2=True)], proc)
    assert files == CgroupFiles(local=leaf / "cpu.stat.local", limited=(root / "pod/cpu.stat",))
    # AND on a kernel without cpu.stat.local (before 6.6), the quotas' files alone
    for local in root.rglob("cpu.stat.local"):
        local.unlink()
    files = cgroup.locate(7, [Mount(root="/", point=str(root), v2=True)], proc)
    assert files == CgroupFiles(local=None, limited=(root / "pod/cpu.stat",))


def test_a_v2_cgroup_with_no_cpu_controller_has_no_files(tmp_path: Path) -> None:
    leaf = tmp_path / "cg" / "app"
    leaf.mkdir(parents=True)
    (leaf / "cpu.stat").write_text(V2_STAT_NO_CPU_CONTROLLER)
    proc = _proc(tmp_path, "0::/app\n")
    mounts = [Mount(root="/", point=str(tmp_path / "cg"), v2=True)]
    assert cgroup.locate(7, mounts, proc) is None


def test_a_process_gone_or_with_no_cgroup_mounted_here_has_no_files() -> None:
    assert cgroup.locate(2**22 + 1, cgroup.own_mounts()) is None  # above pid_max
    assert cgroup.locate(1, []) is None


def _reading(local_ns: int | None, *limited: tuple[str, int, int]) -> Reading:
    return Reading(local_ns, tuple((Path(p), ns, n) for p, ns, n in limited))


def test_the_delta_is_the_local_time_and_the_most_periods_any_quota_ran_out() -> None:
    start = _reading(1_000, ("/pod", 5_000, 3), ("/pod/ctr", 2_000, 1))
    end = _reading(91_000, ("/pod", 95_000, 4), ("/pod/ctr", 2_000, 1))
    assert cgroup.delta(start, end) == (90_000, 1)


def test_without_the_local_file_the_time_is_the_most_any_one_quota_held_it_not_the_sum() -> None:
    # GIVEN a pod and its container both throttled over the same stretch
    start = _reading(None, ("/pod", 0, 0), ("/pod/ctr", 0, 0))
    end = _reading(None, ("/pod", 80_000, 1), ("/pod/ctr", 60_000, 2))
    assert cgroup.delta(start, end) == (80_000, 2)
    # AND a counter that went backwards (the cgroup recreated): nothing, never negative
    assert cgroup.delta(_reading(50), _reading(10)) == (0, 0)


def test_throttling_is_at_most_the_threads_run_queue_time_and_the_blocks_duration() -> None:
    books = Activity(
        on_cpu_ns=20 * NS_PER_MS,
        runq_ns=80 * NS_PER_MS,
        sleep_ns=0,
        sleeps=(),
        other_sleep_ns=0,
        sibling_cpu_ns=0,
    )
    # GIVEN a cgroup throttled on two CPUs at once (counted twice) during a 100 ms block
    assert bounded(190 * NS_PER_MS, 2, 100 * NS_PER_MS, books) == Throttling(80 * NS_PER_MS, 2)
    assert bounded(190 * NS_PER_MS, 2, 100 * NS_PER_MS, None) == Throttling(100 * NS_PER_MS, 2)
    assert bounded(30 * NS_PER_MS, 1, 100 * NS_PER_MS, books) == Throttling(30 * NS_PER_MS, 1)


class FakeCgroup:
    """Cumulative throttled time advanced by the test; ``None`` files: unreadable."""

    def __init__(self, readable: bool = True) -> None:
        self.files = CgroupFiles(local=Path("/cg/cpu.stat.local"), limited=()) if readable else None
        self.throttled_ns = 0
        self.located: list[int] = []
        self.reads = 0

    def locate(self, pid: int) -> CgroupFiles | None:
        self.located.append(pid)
        return self.files

    def read(self, files: CgroupFiles) -> Reading | None:
        assert files == self.files
        self.reads += 1
        return Reading(local_ns=self.throttled_ns, limited=())


def _trigger(reason: TriggerReason = TriggerReason.DUE) -> Trigger:
    return Trigger(pid=7, tid=8, start_ns=1_000, look_ns=50 * NS_PER_MS, reason=reason)


def _event(runq_ms: int) -> BlockEvent:
    books = Activity(
        on_cpu_ns=10 * NS_PER_MS,
        runq_ns=runq_ms * NS_PER_MS,
        sleep_ns=0,
        sleeps=(),
        other_sleep_ns=0,
        sibling_cpu_ns=0,
    )
    return BlockEvent(pid=7, tid=8, comm="python", start_ns=1_000, end_ns=1_000 + 200 * NS_PER_MS,
                      activity=books)  # fmt: skip


def test_a_block_is_read_when_confirmed_and_when_enriched_and_then_forgotten() -> None:
    fake = FakeCgroup()
    watch = ThrottleWatch(locate=fake.locate, read=fake.read)
    # GIVEN a new loop (its cgroup found then, nothing read) and its confirmed block
    watch.follow(_trigger(TriggerReason.NEW_THREAD))
    assert (fake.located, fake.reads) == ([7], 0)
    fake.throttled_ns = 5 * NS_PER_MS
    watch.follow(_trigger())
    watch.follow(_trigger())  # told twice: one reading
    assert fake.reads == 1
    # WHEN the quota holds it back 90 ms, a hang report then the end come
    fake.throttled_ns += 90 * NS_PER_MS
    assert watch.throttling(_event(runq_ms=150), final=False) == Throttling(90 * NS_PER_MS, 0)
    assert watch.throttling(_event(runq_ms=150)) == Throttling(90 * NS_PER_MS, 0)
    # THEN the block is forgotten, and its cgroup was looked up once
    assert watch.throttling(_event(runq_ms=150)) is None
    assert fake.located == [7]


def test_a_block_never_confirmed_or_of_an_unreadable_cgroup_has_no_figure_not_zero() -> None:
    fake = FakeCgroup(readable=False)
    watch = ThrottleWatch(locate=fake.locate, read=fake.read)
    watch.follow(_trigger())
    assert watch.throttling(_event(runq_ms=150)) is None
    assert fake.reads == 0
    readable = ThrottleWatch(locate=FakeCgroup().locate, read=FakeCgroup().read)
    assert readable.throttling(_event(runq_ms=150)) is None  # no trigger, no first reading
