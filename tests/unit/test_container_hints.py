"""Inside a container the fix for a missing part is a mount or a capability, not `make setup`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from otel_blocksnoop import cli, preflight
from otel_blocksnoop.errors import (
    BccMissingError,
    BlocksnoopError,
    ExitCode,
    HeadersMissingError,
    NoPrivilegesError,
    NoSuchProcessError,
    TracefsMissingError,
)


@pytest.fixture
def host_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def fake_root(tmp_path: Path, cgroup: str = "0::/\n", marker: str | None = None) -> Path:
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "cgroup").write_text(cgroup)
    if marker:
        (tmp_path / marker).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / marker).write_text("")
    return tmp_path


@pytest.mark.usefixtures("host_env")
@pytest.mark.parametrize("marker", [".dockerenv", "run/.containerenv"])
def test_docker_and_podman_markers_mean_a_container(tmp_path: Path, marker: str) -> None:
    assert preflight.in_container(fake_root(tmp_path, marker=marker))


@pytest.mark.usefixtures("host_env")
@pytest.mark.parametrize(
    "cgroup",
    [
        "12:pids:/docker/3f2a9c\n",
        "0::/kubepods/besteffort/pod1234/abcd\n",
        "1:name=systemd:/system.slice/containerd/abc\n",
    ],
)
def test_a_container_cgroup_of_pid_1_means_a_container(tmp_path: Path, cgroup: str) -> None:
    assert preflight.in_container(fake_root(tmp_path, cgroup=cgroup))


def test_a_pod_is_known_by_its_service_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert preflight.in_container(fake_root(tmp_path))


@pytest.mark.usefixtures("host_env")
def test_a_host_is_not_a_container(tmp_path: Path) -> None:
    assert not preflight.in_container(fake_root(tmp_path, cgroup="0::/init.scope\n"))
    assert not preflight.in_container(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("error", "needle"),
    [
        (NoPrivilegesError("x"), "--cap-add SYS_PTRACE"),
        (TracefsMissingError("x"), "-v /sys/kernel/tracing:/sys/kernel/tracing:ro"),
        (HeadersMissingError("x"), "-v /usr/src:/usr/src:ro"),
        (BccMissingError("x"), "otel-blocksnoop image"),
        (NoSuchProcessError("x"), 'pid: "service:app"'),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "",
)
def test_in_a_container_the_hint_names_the_option_not_make_setup(
    error: BlocksnoopError, needle: str
) -> None:
    container_hint = error.hint_for(in_container=True)
    assert needle in container_hint
    assert "make setup" not in container_hint
    assert error.hint_for(in_container=False) == error.hint


def test_a_hint_given_where_the_error_is_raised_wins_in_a_container() -> None:
    error = HeadersMissingError("x", hint="mount the host's `-v /usr/src:/usr/src:ro`")
    assert error.hint_for(in_container=True) == "mount the host's `-v /usr/src:/usr/src:ro`"


def test_headers_hint_names_lib_modules_when_the_release_is_absent(tmp_path: Path) -> None:
    # GIVEN a container whose /lib/modules has nothing for the running kernel
    check = preflight.check_headers(container=True, modules_root=tmp_path)
    # THEN the fix is to mount the host's /lib/modules
    assert not check.ok
    assert check.error is not None
    assert f"-v {tmp_path}:{tmp_path}:ro" in check.error.hint_for(in_container=True)
    assert check.error.exit_code == ExitCode.HEADERS_MISSING


def test_headers_hint_names_usr_src_when_the_links_dangle(tmp_path: Path) -> None:
    # GIVEN /lib/modules mounted, its build link pointing into a /usr/src the container lacks
    modules = tmp_path / os.uname().release
    modules.mkdir()
    (modules / "build").symlink_to(tmp_path / "usr-src" / "linux-headers-amd64")
    # WHEN the headers are checked
    check = preflight.check_headers(container=True, modules_root=tmp_path)
    # THEN the hint says /usr/src is missing, naming the link
    assert check.error is not None
    hint = check.error.hint_for(in_container=True)
    assert "-v /usr/src:/usr/src:ro" in hint
    assert str(modules / "build") in hint


def test_headers_on_a_host_keep_the_make_setup_hint(tmp_path: Path) -> None:
    check = preflight.check_headers(container=False, modules_root=tmp_path)
    assert check.error is not None
    assert "make setup" in check.error.hint_for(in_container=False)


def test_privileges_hint_in_a_container_names_the_missing_capabilities(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN root in a container with SYS_PTRACE only
    monkeypatch.setattr(preflight, "effective_capabilities", lambda: 1 << preflight.CAP_SYS_PTRACE)
    # WHEN privileges are checked
    check = preflight.check_privileges(container=True)
    # THEN the error asks for SYS_ADMIN alone, as a --cap-add flag
    assert not check.ok
    assert check.error is not None
    hint = check.error.hint_for(in_container=True)
    assert "--cap-add SYS_ADMIN" in hint
    assert "SYS_PTRACE" not in hint
    assert "container lacks capabilities" in str(check.error)


def test_a_container_without_sys_ptrace_is_told_to_add_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN root with SYS_ADMIN but not SYS_PTRACE
    monkeypatch.setattr(preflight, "effective_capabilities", lambda: 1 << preflight.CAP_SYS_ADMIN)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    # WHEN privileges are checked in a container, and on a host
    in_container = preflight.check_privileges(container=True)
    on_host = preflight.check_privileges(container=False)
    # THEN the container is told to add SYS_PTRACE alone; the host's root is enough
    assert not in_container.ok
    assert in_container.error is not None
    hint = in_container.error.hint_for(in_container=True)
    assert "--cap-add SYS_PTRACE" in hint
    assert "SYS_ADMIN" not in hint
    assert on_host.ok


def test_main_prints_the_container_hint_on_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a sidecar in a container that cannot see the PID it is given
    monkeypatch.setattr(preflight, "in_container", lambda: True)

    def no_such_process(_config: object) -> int:
        raise NoSuchProcessError("failed to find process 4242: no such process")

    monkeypatch.setattr(cli, "run", no_such_process)
    # WHEN it runs
    code = cli.main(["4242"])
    # THEN one line says how to share the app's PID namespace, with the documented code
    err = capsys.readouterr().err
    assert code == ExitCode.NO_SUCH_PROCESS
    assert err.count("\n") == 1
    assert 'pid: "service:app"' in err
    assert "shareProcessNamespace" in err
