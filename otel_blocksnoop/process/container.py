"""Which container, and which Kubernetes pod, a process runs in: from its /proc/PID/cgroup.

Container engines name each container's cgroup after the container's id,
and the kubelet names each pod's cgroup after the pod's uid, in a few known
shapes (cgroup v1 and v2 alike; the systemd driver makes ``.scope`` and
``.slice`` units, the cgroupfs driver plain directories):

- Docker: ``/docker/<id>`` (cgroupfs), ``/system.slice/docker-<id>.scope`` (systemd);
- containerd under Kubernetes: ``/kubepods/<qos>/pod<uid>/<id>``,
  ``/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/
  cri-containerd-<id>.scope``;
- CRI-O: ``crio-<id>.scope`` (systemd), ``crio-<id>`` (cgroupfs);
- Podman: ``libpod-<id>.scope`` (``.../container`` under it when the
  container has its own cgroup namespace), ``libpod_parent/libpod-<id>``.

Only a full 64-hex id in one of those shapes is taken, never a guess from
any long hex string: other software names cgroups with hashes too (``crio-
conmon-<id>``, ``libpod-conmon-<id>`` hold the runtime's monitor, not the
app; this machine's own session cgroup is ``/process_api/<32 hex>``). When the
hierarchies name different containers (or pods), none is reported.

The paths are as the *reader's* cgroup namespace shows them: a sidecar in
another container of the same pod sees the app's as ``/../<its scope>``,
where the pod's uid is no longer part of the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEX64 = "[0-9a-f]{64}"
_SCOPED_ID = re.compile(rf"(?:docker|cri-containerd|crio|libpod)-({_HEX64})(?:\.scope)?")
_BARE_ID = re.compile(_HEX64)
_BARE_ID_PARENTS = re.compile(r"docker|pod[0-9a-f-]{36}")
"""A bare id is a container's only under docker's or a pod's (cgroupfs) directory."""
_POD_DIR = re.compile(r"pod([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
_POD_SLICE = re.compile(
    r"kubepods(?:-[a-z]+)?-pod([0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12})\.slice"
)
KUBEPODS = "kubepods"
"""The kubelet's top cgroup (``kubepods``, ``kubepods.slice``), under which every pod is."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a process runs, as far as its cgroups tell."""

    container_id: str | None = None
    pod_uid: str | None = None  # with dashes, as the Kubernetes API writes it
    in_kubepods: bool = False  # under the kubelet's cgroups: the process runs in a pod


def _container_id(parts: list[str]) -> str | None:
    """The innermost component that names a container in a known shape."""
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        if scoped := _SCOPED_ID.fullmatch(part):
            return scoped.group(1)
        if _BARE_ID.fullmatch(part) and index > 0 and _BARE_ID_PARENTS.fullmatch(parts[index - 1]):
            return part
    return None


def _pod_uid(parts: list[str]) -> str | None:
    """The pod's uid, from its cgroup under the kubelet's (either driver's form)."""
    if not any(part.startswith(KUBEPODS) for part in parts):
        return None
    for part in reversed(parts):
        if slice_match := _POD_SLICE.fullmatch(part):
            return slice_match.group(1).replace("_", "-")
        if dir_match := _POD_DIR.fullmatch(part):
            return dir_match.group(1)
    return None


def _only(values: set[str]) -> str | None:
    return next(iter(values)) if len(values) == 1 else None


def placement(proc_cgroup: str) -> Placement:
    """Container id and pod uid from a /proc/PID/cgroup text (``id:controllers:path`` lines)."""
    containers: set[str] = set()
    pods: set[str] = set()
    in_kubepods = False
    for line in proc_cgroup.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3 or not fields[2].startswith("/"):
            continue
        parts = [part for part in fields[2].split("/") if part]
        in_kubepods = in_kubepods or any(part.startswith(KUBEPODS) for part in parts)
        if (container := _container_id(parts)) is not None:
            containers.add(container)
        if (pod := _pod_uid(parts)) is not None:
            pods.add(pod)
    return Placement(container_id=_only(containers), pod_uid=_only(pods), in_kubepods=in_kubepods)
