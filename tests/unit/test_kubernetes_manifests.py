"""deploy/kubernetes/: valid against the Kubernetes API schemas, and least privilege.

The schemas are those kubernetes-validate ships (offline), in strict mode: a
misspelt or misplaced field fails here, not at `kubectl apply`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from otel_blocksnoop.cli import parse_arguments
from tests.helpers import ROOT

MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes still in wide use, and the newest the schemas know.
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
HOST_MOUNTS = {"/sys/kernel/tracing", "/lib/modules", "/usr/src"}
TMP = "/tmp"  # noqa: S108 - the container's in-memory mount point, no file is made


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_spec(name: str) -> dict[str, Any]:
    (workload,) = documents(ROOT / "deploy" / "kubernetes" / name)
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def sidecar_container(spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in spec["containers"] if c["name"] == "otel-blocksnoop"]
    found: dict[str, Any] = container
    return found


def test_there_is_a_daemonset_and_a_sidecar_example() -> None:
    assert {p.name for p in MANIFESTS} >= {"daemonset.yaml", "sidecar.yaml"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    for document in documents(path):
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name} ({document['kind']}) invalid for {version}: {error.message}")


def test_the_validator_refuses_a_misplaced_field() -> None:
    # GIVEN the DaemonSet with hostPID misplaced into the container
    (daemonset,) = documents(ROOT / "deploy" / "kubernetes" / "daemonset.yaml")
    sidecar_container(daemonset["spec"]["template"]["spec"])["hostPID"] = True
    # THEN strict validation fails, so the test above can fail too
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, VERSIONS[-1], strict=True)


def test_the_daemonset_sees_every_pid_of_the_node() -> None:
    (daemonset,) = documents(ROOT / "deploy" / "kubernetes" / "daemonset.yaml")
    assert daemonset["kind"] == "DaemonSet"
    assert daemonset["spec"]["template"]["spec"]["hostPID"] is True


def kubelet_expanded(container: dict[str, Any]) -> list[str]:
    """The container's command and args with ``$(NAME)`` replaced as the kubelet does."""
    values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return [
        re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values[m.group(1)], part)
        for part in [*container["command"], *container.get("args", [])]
    ]


def test_the_daemonset_runs_node_mode_on_the_apps_command_line() -> None:
    # GIVEN the DaemonSet's command line, as the kubelet expands it
    argv = kubelet_expanded(sidecar_container(pod_spec("daemonset.yaml")))
    # THEN it runs the sidecar itself (no shell, no pgrep), which reads it as node mode
    assert argv[0] == "otel-blocksnoop"
    config = parse_arguments(argv[1:])
    assert config.select is not None
    assert config.select.pattern is not None
    assert config.pids == ()
    assert config.threshold_ns == 50_000_000
    # AND its pattern picks the usual asyncio servers' command lines, as pgrep -f would
    assert config.select.wants_command("python3 -m uvicorn shop:app --port 8000")
    assert config.select.wants_command("/usr/local/bin/python3.12 /usr/local/bin/gunicorn -k x")
    assert not config.select.wants_command("python3 -m http.server")


def test_the_sidecar_example_shares_the_pods_pid_namespace_with_a_separate_app_image() -> None:
    spec = pod_spec("sidecar.yaml")
    assert spec["shareProcessNamespace"] is True
    assert not spec.get("hostPID", False)
    (app,) = [c for c in spec["containers"] if c["name"] != "otel-blocksnoop"]
    assert app["image"] != sidecar_container(spec)["image"]
    # The pattern the sidecar looks for is the app image's command line.
    script = " ".join(sidecar_container(spec)["command"])
    (pattern,) = re.findall(r"pgrep -o -f '([^']+)'", script)
    dockerfile = (ROOT / "Dockerfile.app").read_text()
    (cmd,) = re.findall(r"^CMD \[(.*)\]$", dockerfile, re.MULTILINE)
    assert re.search(pattern, " ".join(part.strip(' "') for part in cmd.split(",")))
    assert not re.search(pattern, script)


@pytest.mark.parametrize("name", ["daemonset.yaml", "sidecar.yaml"])
def test_the_sidecar_has_two_capabilities_a_read_only_root_and_read_only_host_mounts(
    name: str,
) -> None:
    spec = pod_spec(name)
    container = sidecar_container(spec)
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN", "SYS_PTRACE"]}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert not security.get("privileged", False)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert all(mounts[path].get("readOnly") for path in HOST_MOUNTS)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in HOST_MOUNTS:
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    # The only writable place is an in-memory /tmp.
    writable = {p for p, m in mounts.items() if not m.get("readOnly")}
    assert writable == {TMP}
    assert volumes[mounts[TMP]["name"]]["emptyDir"]["medium"] == "Memory"
