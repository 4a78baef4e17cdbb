"""A sidecar container that lacks a capability, a mount or the app's PID namespace says which.

Each case runs the real image with the real engine; none gets as far as
loading BPF, so each takes about a second.
"""

from __future__ import annotations

import pytest

from otel_blocksnoop.errors import ExitCode
from tests.containers.conftest import HARDENED, HOST_MOUNTS, SIDECAR_IMAGE, docker

pytestmark = [pytest.mark.containers, pytest.mark.usefixtures("images", "bpf_host")]

TRACEFS, MODULES, USR_SRC = HOST_MOUNTS[1], HOST_MOUNTS[3], HOST_MOUNTS[5]
DEFAULT_CAPS = ("--cap-drop", "ALL", "--cap-add", "SYS_PTRACE")


# PID 1 is a Python process that runs the sidecar on ``pid`` and exits with its code
# (the sidecar refuses to watch itself, which PID 1 would be if it ran alone).
HOLDER = "import subprocess, sys; sys.exit(subprocess.call(['otel-blocksnoop', sys.argv[1]]))"


def sidecar(*options: str, pid: str = "1") -> tuple[int, str]:
    result = docker(
        "run", "--rm", "--network", "none", *options, "--entrypoint", "python3",
        SIDECAR_IMAGE, "-c", HOLDER, pid,
    )  # fmt: skip
    return result.returncode, result.stderr


def assert_one_line_with(stderr: str, *needles: str) -> None:
    assert stderr.count("\n") == 1, stderr
    assert "make setup" not in stderr
    for needle in needles:
        assert needle in stderr, stderr


def test_without_sys_admin_it_asks_for_that_capability() -> None:
    code, stderr = sidecar(*DEFAULT_CAPS, *HOST_MOUNTS)
    assert code == ExitCode.NO_PRIVILEGES
    assert_one_line_with(stderr, "--cap-add SYS_ADMIN", "container lacks")


def test_without_sys_ptrace_it_asks_for_that_capability() -> None:
    # GIVEN SYS_ADMIN alone (PID 1 is the Python process that started it)
    code, stderr = sidecar("--cap-drop", "ALL", "--cap-add", "SYS_ADMIN", *HOST_MOUNTS)
    # THEN it asks for SYS_PTRACE, which reading another container's app needs
    # (another user's, or one holding capabilities the sidecar dropped)
    assert code == ExitCode.NO_PRIVILEGES
    assert_one_line_with(stderr, "--cap-add SYS_PTRACE", "CAP_SYS_PTRACE")
    assert "SYS_ADMIN" not in stderr


def test_without_tracefs_it_asks_for_the_tracefs_mount() -> None:
    code, stderr = sidecar(*HARDENED, "-v", MODULES, "-v", USR_SRC)
    assert code == ExitCode.TRACEFS_MISSING
    assert_one_line_with(stderr, "-v /sys/kernel/tracing:/sys/kernel/tracing:ro")


def test_without_lib_modules_it_asks_for_that_mount() -> None:
    code, stderr = sidecar(*HARDENED, "-v", TRACEFS, "-v", USR_SRC)
    assert code == ExitCode.HEADERS_MISSING
    assert_one_line_with(stderr, "-v /lib/modules:/lib/modules:ro")


def test_without_usr_src_it_names_the_dangling_link_and_asks_for_usr_src() -> None:
    code, stderr = sidecar(*HARDENED, "-v", TRACEFS, "-v", MODULES)
    assert code == ExitCode.HEADERS_MISSING
    assert_one_line_with(stderr, "-v /usr/src:/usr/src:ro", "/build points to /usr/src/")


def test_a_pid_outside_its_namespace_asks_to_share_the_apps() -> None:
    # GIVEN a sidecar with all it needs, in a PID namespace of its own
    # WHEN it is given a PID that namespace does not have
    code, stderr = sidecar(*HARDENED, *HOST_MOUNTS, pid="4242")
    # THEN it says how to join the app's PID namespace
    assert code == ExitCode.NO_SUCH_PROCESS
    assert_one_line_with(stderr, 'pid: "service:app"', "shareProcessNamespace", "hostPID")
