"""The watched app's identity, read from /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from otel_blocksnoop.events import PodIdentity
from otel_blocksnoop.process import identity as identity_module
from otel_blocksnoop.process.container import Placement
from otel_blocksnoop.process.identity import (
    app_hostname,
    environ_bounds,
    parse_environ,
    parse_resource_attributes,
    pod_identity,
    read_environ,
    read_identity,
)


def test_resource_attributes_follow_the_spec_format_with_percent_decoding() -> None:
    text = "deployment.environment=prod, team=a%2Cb ,broken,=x,k=v=w"
    assert parse_resource_attributes(text) == {
        "deployment.environment": "prod",
        "team": "a,b",
        "k": "v=w",
    }


def test_environ_entries_are_split_on_nul_and_the_first_equals_sign() -> None:
    assert parse_environ(b"A=1\0B=x=y\0junk\0") == {"A": "1", "B": "x=y"}


# A /proc/PID/stat line (Linux 6.x, 52 fields) whose command holds ") " and a space.
STAT_WITH_ODD_COMMAND = (
    "4242 (my) app) S 1 4242 4242 0 -1 4194560 820 0 0 0 3 1 0 0 20 0 1 0 123456 "
    "12345678 2000 18446744073709551615 94000000000000 94000000004096 140730000000000 "
    "0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0 94000000008192 94000000012288 "
    "94000001000000 140730000001000 140730000001100 140730000001100 140730000004000 0\n"
)


def test_environ_bounds_are_stat_fields_50_and_51_after_the_command() -> None:
    assert environ_bounds(STAT_WITH_ODD_COMMAND) == (140730000001100, 140730000004000)


def test_environ_bounds_hidden_by_the_kernel_or_missing_are_none() -> None:
    # The kernel shows 0 for both without ptrace access to the process.
    hidden = STAT_WITH_ODD_COMMAND.replace("140730000001100 140730000004000 0", "0 0 0")
    assert environ_bounds(hidden) is None
    assert environ_bounds("4242 (short) S 1 4242") is None
    assert environ_bounds("") is None


def test_an_environ_closed_to_us_is_read_from_the_process_memory_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a /proc whose environ file refuses us (as a uid's 0400 file refuses root
    # without CAP_DAC_READ_SEARCH) and whose stat is this process's own
    pid = os.getpid()
    (tmp_path / str(pid)).mkdir()
    (tmp_path / str(pid) / "stat").write_text(Path("/proc/self/stat").read_text())
    (tmp_path / str(pid) / "environ").write_bytes(b"")
    real_read_head = identity_module._read_head  # noqa: SLF001 - root opens any file here

    def refuse_environ(path: Path, limit: int) -> bytes:
        if path.name == "environ":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_head(path, limit)

    monkeypatch.setattr(identity_module, "_read_head", refuse_environ)
    # WHEN the environment is read
    raw = read_environ(pid, proc=tmp_path)
    # THEN it holds what the kernel's own environ file holds
    assert raw == Path("/proc/self/environ").read_bytes()
    assert raw


def test_an_environ_that_cannot_be_read_either_way_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a refused environ file and a stat that hides the bounds
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "stat").write_text(
        STAT_WITH_ODD_COMMAND.replace("140730000001100 140730000004000 0", "0 0 0")
    )

    def refuse(path: Path, _limit: int) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(identity_module, "_read_head", refuse)
    # THEN nothing is read, and nothing raises
    assert read_environ(4242, proc=tmp_path) == b""
    # AND a process that is gone has no environment either
    assert read_environ(2**22 + 12345) == b""


def test_a_process_is_known_by_its_own_otel_settings_executable_and_version() -> None:
    # GIVEN a Python process started with its own OpenTelemetry settings
    env = {
        **os.environ,
        "OTEL_SERVICE_NAME": "checkout",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        # WHEN its identity is read from outside
        identity = read_identity(child.pid)
        again = read_identity(child.pid)
    finally:
        child.communicate(b"")
    # THEN it carries the app's settings, not ours
    assert identity.service_name == "checkout"
    assert dict(identity.resource_attributes) == {"deployment.environment": "staging"}
    assert identity.executable_path == str(Path(sys.executable).resolve())
    assert identity.runtime_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert identity.instance_id == again.instance_id
    # AND it runs where we do: our hostname, our container (if any), no pod unless we are in one
    ours = read_identity(os.getpid())
    assert identity.host_name == socket.gethostname()
    assert (identity.container_id, identity.pod) == (ours.container_id, ours.pod)


def test_a_process_gone_still_gets_an_identity_with_what_is_known() -> None:
    identity = read_identity(2**22 + 12345)
    assert identity.service_name is None
    assert identity.executable_path is None


def fake_proc(tmp_path: Path, *, app_uts: str, hostname_file: str | Path | None) -> Path:
    """A /proc with the sidecar (self) in UTS namespace 1 and app 7 in ``app_uts``."""
    for pid, uts in (("self", "uts:[1]"), ("7", app_uts)):
        (tmp_path / pid / "ns").mkdir(parents=True)
        (tmp_path / pid / "ns" / "uts").symlink_to(uts)
    etc = tmp_path / "7" / "root" / "etc"
    etc.mkdir(parents=True)
    if isinstance(hostname_file, Path):
        (etc / "hostname").symlink_to(hostname_file)
    elif hostname_file is not None:
        (etc / "hostname").write_text(hostname_file)
    return tmp_path


def test_an_app_in_the_sidecars_uts_namespace_has_the_sidecars_hostname_whatever_its_env(
    tmp_path: Path,
) -> None:
    proc = fake_proc(tmp_path, app_uts="uts:[1]", hostname_file="elsewhere\n")
    assert app_hostname(7, {"HOSTNAME": "stale"}, proc) == socket.gethostname()


def test_an_app_in_its_own_uts_namespace_is_named_by_its_hostname_variable_first(
    tmp_path: Path,
) -> None:
    proc = fake_proc(tmp_path, app_uts="uts:[2]", hostname_file="from-file\n")
    assert app_hostname(7, {"HOSTNAME": " web-7f9c "}, proc) == "web-7f9c"


def test_without_the_variable_its_own_etc_hostname_names_it(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, app_uts="uts:[2]", hostname_file="c0ffee12ab34\nignored\n")
    assert app_hostname(7, {"HOSTNAME": "not a name"}, proc) == "c0ffee12ab34"


def test_the_sidecars_own_etc_hostname_seen_through_the_apps_root_names_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an app with its own UTS namespace but the sidecar's files (unshare --uts)
    ours = tmp_path / "sidecar-hostname"
    ours.write_text("sidecar-host\n")
    proc = fake_proc(tmp_path, app_uts="uts:[2]", hostname_file=ours)
    monkeypatch.setattr(identity_module, "HOSTNAME_FILE", ours)
    # THEN that file says nothing of the app's hostname
    assert app_hostname(7, {}, proc) is None


def test_an_app_whose_namespace_cannot_be_read_has_no_hostname(tmp_path: Path) -> None:
    assert app_hostname(7, {}, tmp_path) is None


IN_POD = Placement(
    container_id="c" * 64, pod_uid="6a1f0e3c-7b2d-4c5e-9f80-1a2b3c4d5e6f", in_kubepods=True
)


def test_pod_variables_are_read_only_where_the_app_runs_in_kubernetes() -> None:
    env = {"POD_NAME": "batch-1", "POD_NAMESPACE": "jobs"}
    assert pod_identity(env, Placement()) is None
    assert pod_identity({**env, "KUBERNETES_SERVICE_HOST": "10.96.0.1"}, Placement()) == (
        PodIdentity(name="batch-1", namespace="jobs")
    )


def test_the_pod_uid_comes_from_the_cgroups_before_the_environment() -> None:
    env = {
        "K8S_POD_NAME": "checkout-5d8f",
        "POD_NAME": "second-choice",
        "MY_POD_NAMESPACE": "shop",
        "K8S_CONTAINER_NAME": "app",
        "K8S_POD_UID": "00000000-0000-0000-0000-000000000000",
    }
    assert pod_identity(env, IN_POD) == PodIdentity(
        uid=IN_POD.pod_uid, name="checkout-5d8f", namespace="shop", container_name="app"
    )


def test_a_pod_with_nothing_readable_is_no_pod() -> None:
    assert (
        pod_identity({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "POD_NAME": " "}, Placement()) is None
    )
