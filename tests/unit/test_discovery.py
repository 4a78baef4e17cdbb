"""Node mode's scan of /proc: which processes it hands out, once each, and which it judges again."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from otel_blocksnoop.cli import parse_arguments
from otel_blocksnoop.process.discovery import Discovery, PodSelector, Selector, has_event_poll
from otel_blocksnoop.process.identity import SERVICE_ACCOUNT_NAMESPACE

OWN_PID = 900
CONTAINER = "ab" * 32
CGROUPS = Path(__file__).resolve().parent.parent / "data" / "cgroup"
POD_UID = "6a1f0e3c-7b2d-4c5e-9f80-1a2b3c4d5e6f"
"""The pod in the recorded Kubernetes cgroup files."""
KUBELET_DRIVERS = (
    "k8s_containerd_cgroupfs_v1.txt",
    "k8s_containerd_cgroupfs_v2.txt",
    "k8s_containerd_systemd_v1.txt",
    "k8s_containerd_systemd_v2.txt",
    "k8s_crio_cgroupfs_v1.txt",
    "k8s_crio_systemd_v2.txt",
)
"""The kubelet's cgroup paths, cgroupfs and systemd drivers, v1 and v2, as /proc/PID/cgroup."""


class FakeProc:
    """A /proc of plain files: stat, cmdline, exe (a symlink), cgroup, maps per PID."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(  # noqa: PLR0913 - one process's files
        self,
        pid: int,
        argv: list[str],
        exe: str = "/usr/bin/python3.11",
        *,
        ppid: int = 1,
        flags: int = 0,
        cgroup: str = "0::/user.slice\n",
        maps: str = "",
        env: dict[str, str] | None = None,
        namespace_file: str | None = None,
    ) -> None:
        base = self.root / str(pid)
        base.mkdir(exist_ok=True)
        name = Path(argv[0]).name[:15] if argv else "kworker/0:1"
        # pid (comm) state ppid pgrp session tty tpgid flags ...
        (base / "stat").write_text(f"{pid} ({name}) S {ppid} {pid} {pid} 0 -1 {flags} 0 0\n")
        (base / "cmdline").write_bytes(b"".join(part.encode() + b"\0" for part in argv))
        exe_link = base / "exe"
        if exe_link.is_symlink():
            exe_link.unlink()
        exe_link.symlink_to(exe)
        (base / "cgroup").write_text(cgroup)
        (base / "maps").write_text(maps)
        environ = "".join(f"{k}={v}\0" for k, v in (env or {}).items())
        (base / "environ").write_bytes(environ.encode())
        if namespace_file is not None:
            path = base / "root" / SERVICE_ACCOUNT_NAMESPACE.relative_to("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(namespace_file)

    def remove(self, pid: int) -> None:
        shutil.rmtree(self.root / str(pid))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def discovery(proc: FakeProc, selector: Selector | None = None) -> tuple[Discovery, Clock]:
    clock = Clock()
    found = Discovery(
        selector or Selector(), proc=proc.root, own_pid=OWN_PID, young_s=5.0, clock=clock
    )
    return found, clock


def test_every_python_process_is_handed_out_once_and_nothing_else(tmp_path: Path) -> None:
    # GIVEN Python apps, a shell, a kernel thread, the sidecar itself and its Austin child
    proc = FakeProc(tmp_path)
    proc.add(10, ["python3", "app.py"])
    proc.add(
        11,
        ["/usr/bin/uwsgi", "--ini", "x"],
        exe="/usr/bin/uwsgi",
        maps=("7f0000000000-7f0000001000 r-xp 00000000 08:01 42 /usr/lib/libpython3.11.so.1.0\n"),
    )
    proc.add(12, ["bash"], exe="/usr/bin/bash")
    proc.add(13, [], exe="/", flags=0x00200000)
    proc.add(OWN_PID, ["python3", "-m", "otel_blocksnoop", "--all"])
    proc.add(901, ["python3", "-c", "loader"], ppid=OWN_PID)
    scan, _ = discovery(proc)
    # WHEN it scans twice
    first = scan.scan()
    second = scan.scan()
    # THEN the two Python processes come once, with their command lines; nothing else ever
    assert [(t.pid, t.cmdline) for t in first] == [
        (10, "python3 app.py"),
        (11, "/usr/bin/uwsgi --ini x"),
    ]
    assert second == []


def test_a_child_that_execs_python_after_its_fork_is_found_at_a_later_scan(
    tmp_path: Path,
) -> None:
    # GIVEN a shell's child, seen while it still runs the shell
    proc = FakeProc(tmp_path)
    proc.add(20, ["bash", "-c", "python3 app.py"], exe="/usr/bin/bash")
    scan, clock = discovery(proc)
    assert scan.scan() == []
    # WHEN it execs Python before it is old
    clock.now += 1.0
    proc.add(20, ["python3", "app.py"])
    # THEN the next scan finds it
    assert [t.pid for t in scan.scan()] == [20]


def test_a_python_child_that_execs_python_again_is_found_at_a_later_scan(
    tmp_path: Path,
) -> None:
    # GIVEN a Python program's child, seen before its exec, when it ran the parent's program
    proc = FakeProc(tmp_path)
    proc.add(25, ["python3", "supervisor.py"])
    scan, clock = discovery(proc, Selector(pattern=re.compile("app[.]py")))
    assert scan.scan() == []
    # WHEN it execs the same interpreter with the app
    clock.now += 1.0
    proc.add(25, ["python3", "app.py"])
    # THEN the next scan finds it
    assert [t.pid for t in scan.scan()] == [25]


def test_an_old_refused_process_is_not_judged_again(tmp_path: Path) -> None:
    # GIVEN a process refused, then left alone past the young age
    proc = FakeProc(tmp_path)
    proc.add(30, ["sleep", "1000"], exe="/usr/bin/sleep")
    scan, clock = discovery(proc)
    assert scan.scan() == []
    clock.now += 6.0
    scan.scan()
    # WHEN it execs Python much later
    proc.add(30, ["python3", "late.py"])
    clock.now += 1.0
    # THEN the scan, which looks only at new PIDs, does not see it
    assert scan.scan() == []


def test_a_pid_that_comes_back_as_another_process_is_judged_afresh(tmp_path: Path) -> None:
    # GIVEN a Python app handed out, that exits
    proc = FakeProc(tmp_path)
    proc.add(40, ["python3", "one.py"])
    scan, _ = discovery(proc)
    assert [t.cmdline for t in scan.scan()] == ["python3 one.py"]
    # WHEN its PID is taken by another app, after the exit was told (forget)
    scan.forget(40)
    proc.add(40, ["python3", "two.py"])
    # THEN that one is handed out too
    assert [t.cmdline for t in scan.scan()] == ["python3 two.py"]


def test_a_pid_gone_from_a_scan_is_judged_afresh_when_it_comes_back(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.add(41, ["python3", "one.py"])
    scan, _ = discovery(proc)
    assert len(scan.scan()) == 1
    proc.remove(41)
    assert scan.scan() == []
    proc.add(41, ["python3", "two.py"])
    assert [t.cmdline for t in scan.scan()] == ["python3 two.py"]


def test_a_pattern_picks_by_command_line_as_pgrep_f_does(tmp_path: Path) -> None:
    # GIVEN two apps and a pattern that spans an argument boundary of one of them
    proc = FakeProc(tmp_path)
    proc.add(50, ["python3", "-m", "uvicorn", "shop:app"])
    proc.add(51, ["python3", "worker.py"])
    scan, _ = discovery(proc, Selector(pattern=re.compile(r"uvicorn shop")))
    # THEN only the matching one is handed out
    assert [t.pid for t in scan.scan()] == [50]


def test_a_container_id_prefix_picks_the_processes_of_that_container(tmp_path: Path) -> None:
    # GIVEN one app in a Docker container, one in another, one on the host
    proc = FakeProc(tmp_path)
    proc.add(60, ["python3", "in.py"], cgroup=f"0::/system.slice/docker-{CONTAINER}.scope\n")
    proc.add(61, ["python3", "other.py"], cgroup=f"12:cpu:/docker/{'cd' * 32}\n")
    proc.add(62, ["python3", "host.py"])
    scan, _ = discovery(proc, Selector(container=CONTAINER[:12]))
    # THEN only the one in that container is handed out
    assert [t.pid for t in scan.scan()] == [60]


def test_an_epoll_fd_is_seen_in_the_fd_table(tmp_path: Path) -> None:
    # GIVEN one process with an eventpoll among its fds and one without
    for pid, target in ((70, "anon_inode:[eventpoll]"), (71, "pipe:[123]")):
        fds = tmp_path / str(pid) / "fd"
        fds.mkdir(parents=True)
        (fds / "0").symlink_to("/dev/null")
        (fds / "3").symlink_to(target)
    # THEN only the first may run an event loop
    assert has_event_poll(70, tmp_path)
    assert not has_event_poll(71, tmp_path)
    assert not has_event_poll(72, tmp_path)  # gone


@pytest.mark.parametrize("recorded", KUBELET_DRIVERS)
def test_a_pod_uid_picks_the_processes_of_that_pod_under_any_cgroup_driver(
    tmp_path: Path, recorded: str
) -> None:
    # GIVEN an app in the pod (its cgroup as the kubelet names it), one in another pod,
    # and one on the node
    proc = FakeProc(tmp_path)
    proc.add(80, ["python3", "app.py"], cgroup=(CGROUPS / recorded).read_text())
    other = (CGROUPS / recorded).read_text().replace("6a1f0e3c", "7b2f0e3c")
    proc.add(81, ["python3", "app.py"], cgroup=other)
    proc.add(82, ["python3", "app.py"])
    # WHEN the scan looks for the pod's uid, as `kubectl get pod -o yaml` shows it
    config = parse_arguments(["--pod", POD_UID.upper()])
    assert config.select is not None
    scan, _ = discovery(proc, config.select)
    # THEN only the app in that pod is handed out
    assert [t.pid for t in scan.scan()] == [80]


@pytest.mark.parametrize("recorded", KUBELET_DRIVERS)
def test_a_pod_name_picks_by_the_downward_api_else_the_hostname_the_kubelet_gave(
    tmp_path: Path, recorded: str
) -> None:
    # GIVEN apps in pods: one with the downward API's POD_NAME, one with only the
    # HOSTNAME the kubelet gave, one in another pod, one on the node with that HOSTNAME
    in_pod = (CGROUPS / recorded).read_text()
    proc = FakeProc(tmp_path)
    proc.add(90, ["python3", "a.py"], cgroup=in_pod, env={"POD_NAME": "checkout-7d9f8-x2x4q"})
    proc.add(91, ["python3", "b.py"], cgroup=in_pod, env={"HOSTNAME": "checkout-7d9f8-x2x4q"})
    proc.add(92, ["python3", "c.py"], cgroup=in_pod, env={"HOSTNAME": "billing-5c4d-abcde"})
    proc.add(93, ["python3", "d.py"], env={"HOSTNAME": "checkout-7d9f8-x2x4q"})
    # WHEN the scan looks for the pod by its name
    scan, _ = discovery(proc, Selector(pod=PodSelector(name="checkout-7d9f8-x2x4q")))
    # THEN the apps of that pod are handed out, and not a host that shares the name
    assert [t.pid for t in scan.scan()] == [90, 91]


def test_a_namespace_and_name_need_both_from_the_environment_or_service_account(
    tmp_path: Path,
) -> None:
    # GIVEN apps in pods named alike in namespaces told by the downward API, by the
    # service account's file, or not at all
    in_pod = (CGROUPS / "k8s_containerd_systemd_v2.txt").read_text()
    name = {"HOSTNAME": "checkout-0"}
    proc = FakeProc(tmp_path)
    proc.add(100, ["python3", "a.py"], cgroup=in_pod, env={**name, "POD_NAMESPACE": "shop"})
    proc.add(101, ["python3", "b.py"], cgroup=in_pod, env=name, namespace_file="shop\n")
    proc.add(102, ["python3", "c.py"], cgroup=in_pod, env=name, namespace_file="staging\n")
    proc.add(103, ["python3", "d.py"], cgroup=in_pod, env=name)
    # WHEN the scan looks for shop/checkout-0, as kubectl names it
    config = parse_arguments(["--pod", "shop/checkout-0", "--match", "python3"])
    assert config.select is not None
    assert config.select.describe() == (
        "Python processes with command lines matching 'python3' in pod shop/checkout-0"
    )
    scan, _ = discovery(proc, config.select)
    # THEN only the two whose namespace is shop are handed out
    assert [t.pid for t in scan.scan()] == [100, 101]
