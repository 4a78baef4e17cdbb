"""Container id and pod uid from recorded /proc/PID/cgroup texts of each runtime's shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_blocksnoop.process.container import Placement, placement

DATA = Path(__file__).resolve().parent.parent / "data" / "cgroup"
ID = "3f9a1c5e8b2d4f6071829304a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e"
REAL_DOCKER = (
    "aa15983560a0d20ea2ee93ea1e084d4940a7e99f1ef745bb57bdfc1681333f36"  # docker ps --no-trunc
)
POD = "6a1f0e3c-7b2d-4c5e-9f80-1a2b3c4d5e6f"
IN_DOCKER = Placement(container_id=ID)
IN_POD = Placement(container_id=ID, pod_uid=POD, in_kubepods=True)
NOWHERE = Placement()

SHAPES = {
    "host_process_api.txt": NOWHERE,
    "recorded_here_docker_build_v1.txt": Placement(container_id=REAL_DOCKER),
    "recorded_here_docker_cpu_only_v1.txt": IN_DOCKER,
    "recorded_here_kubepods_cpu_only_v1.txt": IN_POD,
    "docker_cgroupfs_v1.txt": IN_DOCKER,
    "docker_systemd_v2.txt": IN_DOCKER,
    "docker_in_docker_v1.txt": IN_DOCKER,  # the innermost container: the app's
    "docker_own_cgroupns_v2.txt": NOWHERE,
    "k8s_containerd_cgroupfs_v1.txt": IN_POD,
    "k8s_containerd_cgroupfs_v2.txt": IN_POD,
    "k8s_containerd_systemd_v1.txt": IN_POD,
    "k8s_containerd_systemd_v2.txt": IN_POD,
    "k8s_containerd_guaranteed_systemd_v2.txt": IN_POD,
    "k8s_crio_cgroupfs_v1.txt": IN_POD,
    "k8s_crio_systemd_v2.txt": IN_POD,
    "k8s_crio_conmon_systemd_v2.txt": Placement(pod_uid=POD, in_kubepods=True),
    "k8s_seen_from_another_container_v2.txt": IN_DOCKER,
    "podman_rootless_v2.txt": IN_DOCKER,
    "podman_cgroupfs_v1.txt": IN_DOCKER,
    "podman_conmon_v2.txt": NOWHERE,
    "two_containers_disagree_v1.txt": NOWHERE,
    "unknown_parent_bare_id_v2.txt": NOWHERE,
    "docker_short_id_v1.txt": NOWHERE,
    "docker_uppercase_id_v1.txt": NOWHERE,
}


def test_every_recorded_shape_has_an_expectation() -> None:
    assert {path.name for path in DATA.glob("*.txt")} == set(SHAPES)


@pytest.mark.parametrize(("name", "expected"), SHAPES.items(), ids=list(SHAPES))
def test_each_runtime_shape_gives_its_container_and_pod_and_nothing_else(
    name: str, expected: Placement
) -> None:
    # GIVEN the cgroups of a process as one runtime lays them out
    text = (DATA / name).read_text()
    # WHEN they are read
    found = placement(text)
    # THEN the container id and pod uid are exactly the ones that shape names, or none
    assert found == expected


def test_a_pod_uid_outside_the_kubelets_cgroups_is_not_taken() -> None:
    assert placement(f"0::/system.slice/pod{POD}/docker-{ID}.scope") == IN_DOCKER


def test_lines_that_are_not_cgroup_entries_are_skipped() -> None:
    assert placement(f"garbage\n\n1:cpu\n0::relative/docker-{ID}.scope\n") == NOWHERE
