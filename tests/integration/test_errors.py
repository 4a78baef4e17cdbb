"""Bad input and missing host parts: one line on stderr, a distinct exit code, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_blocksnoop.errors import ExitCode
from tests.helpers import ROOT, SIDECAR, run_sidecar

pytestmark = pytest.mark.integration


def assert_one_line_error(stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("otel-blocksnoop: ")
    assert "Traceback" not in stderr


@pytest.fixture
def gone_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def non_python() -> Iterator[int]:
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def test_no_such_pid(gone_pid: int) -> None:
    run = run_sidecar(str(gone_pid))
    assert run.returncode == ExitCode.NO_SUCH_PROCESS
    assert_one_line_error(run.stderr)
    assert "no such process" in run.stderr


def test_pid_that_is_not_python(non_python: int) -> None:
    run = run_sidecar(str(non_python))
    assert run.returncode == ExitCode.NOT_PYTHON
    assert_one_line_error(run.stderr)
    assert "not a Python interpreter" in run.stderr


@pytest.mark.parametrize("value", ["0", "-5", "abc", "nan", "inf", ""])
def test_threshold_must_be_a_positive_number(value: str) -> None:
    run = run_sidecar("-t", value, "1")
    assert run.returncode == ExitCode.USAGE
    assert_one_line_error(run.stderr)
    assert "--threshold" in run.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["1", "--", "true"], "not both"),
        ([], "give a PID"),
        (["--tid", "5", "--", "true"], "--tid needs exactly one PID"),
        (["-v", "-q", "1"], "not allowed with"),
        (["notapid"], "not a whole number"),
    ],
)
def test_conflicting_or_missing_arguments(args: list[str], complaint: str) -> None:
    run = run_sidecar(*args)
    assert run.returncode == ExitCode.USAGE
    assert_one_line_error(run.stderr)
    assert complaint in run.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["-t", "1e14", "1"], "--threshold: must be from 0.001 to 3.6e+06 milliseconds"),
        (["--sample-interval", "0.0001", "1"], "--sample-interval: must be from 0.001 to 1000"),
        (["99999999999"], "not a process id"),
    ],
)
def test_values_out_of_range_are_refused_before_anything_is_loaded(
    args: list[str], complaint: str
) -> None:
    run = run_sidecar(*args)
    assert run.returncode == ExitCode.USAGE
    assert_one_line_error(run.stderr)
    assert complaint in run.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_EXPORTER_OTLP_PROTOCOL", "foo"), ("OTEL_SERVICE_NAME", "x" * 300)],
)
def test_a_bad_otel_variable_is_one_line_not_a_traceback(variable: str, value: str) -> None:
    env = {**os.environ, variable: value}
    result = subprocess.run(
        [*SIDECAR, "1"], capture_output=True, text=True, env=env, check=False, timeout=60
    )
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert_one_line_error(result.stderr)
    assert variable in result.stderr


def test_a_kernel_thread_is_called_one_not_gone() -> None:
    # GIVEN kthreadd, the kernel thread every other one is forked from
    assert "kthreadd" in Path("/proc/2/status").read_text()
    # WHEN it is given as the PID
    run = run_sidecar("2")
    # THEN it is named a kernel thread (it did not exit), with the not-Python code
    assert run.returncode == ExitCode.NOT_PYTHON
    assert_one_line_error(run.stderr)
    assert "process 2 (kthreadd) is a kernel thread, not a user process" in run.stderr


def test_the_sidecar_pointed_at_itself_refuses() -> None:
    # GIVEN a shell that becomes the sidecar (exec), given the shell's own PID
    command = " ".join(SIDECAR) + ' "$$"'
    result = subprocess.run(
        ["sh", "-c", f"exec {command}"], capture_output=True, text=True, check=False, timeout=60
    )
    # THEN it refuses in one line with the usage code
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert_one_line_error(result.stderr)
    assert "it is this otel-blocksnoop itself" in result.stderr


def test_launching_a_missing_command() -> None:
    run = run_sidecar("--", "/nonexistent/app")
    assert run.returncode == ExitCode.LAUNCH_FAILED
    assert_one_line_error(run.stderr)
    assert "command not found" in run.stderr


def test_no_privileges() -> None:
    # GIVEN the sidecar run as an unprivileged user with no capabilities
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    result = subprocess.run(
        [*drop, *SIDECAR, "--", "true"], capture_output=True, text=True, check=False, timeout=60
    )
    # THEN it says so in one line
    assert result.returncode == ExitCode.NO_PRIVILEGES, result.stderr
    assert_one_line_error(result.stderr)
    assert "missing CAP_BPF and CAP_PERFMON" in result.stderr


def test_bcc_missing(tmp_path: Path) -> None:
    # GIVEN a Python where importing bcc fails (a package of that name shadows
    # the real one and raises, as a missing or broken install does)
    fake = tmp_path / "bcc"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("No module named bcc")\n')
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    result = subprocess.run(
        [sys.executable, "-m", "otel_blocksnoop", "--", "true"],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == ExitCode.BCC_MISSING, result.stderr
    assert_one_line_error(result.stderr)
    assert "bcc" in result.stderr


def in_private_mount_namespace(*hide: str) -> subprocess.CompletedProcess[str]:
    """Run the sidecar where each of ``hide`` is covered by an empty tmpfs (this test only)."""
    mounts = " && ".join(f"mount -t tmpfs none {path}" for path in hide)
    script = f'{mounts} && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         *SIDECAR, "--", "true"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


@pytest.mark.usefixtures("bpf_host")
def test_kernel_headers_missing() -> None:
    result = in_private_mount_namespace("/lib/modules")
    assert result.returncode == ExitCode.HEADERS_MISSING, result.stderr
    assert_one_line_error(result.stderr)
    assert "kernel headers" in result.stderr


@pytest.mark.usefixtures("bpf_host")
def test_tracefs_not_mounted() -> None:
    # tracefs is also found under debugfs, where the machine has it mounted
    result = in_private_mount_namespace("/sys/kernel/tracing", "/sys/kernel/debug")
    assert result.returncode == ExitCode.TRACEFS_MISSING, result.stderr
    assert_one_line_error(result.stderr)
    assert "tracefs" in result.stderr


@pytest.mark.usefixtures("bpf_host")
@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "inf"}, "OTEL_BSP_MAX_QUEUE_SIZE must be a positive number"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "0.5"}, "OTEL_METRIC_EXPORT_INTERVAL must be"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TIMEOUT": "abc"},
            "failed to set up OTLP export (grpc)",
        ),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_COMPRESSION": "zzz"},
            "compression",
        ),
    ],
)
def test_an_otel_value_that_cannot_be_used_ends_the_start_in_one_line(
    env: dict[str, str], complaint: str
) -> None:
    # GIVEN OTLP export on, with a value found by fuzzing that once ended in a traceback
    full_env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", **env}
    # WHEN the sidecar starts
    result = subprocess.run(
        [*SIDECAR, "-q", "--", "true"],
        capture_output=True, text=True, env=full_env, check=False, timeout=60,
    )  # fmt: skip
    # THEN it stops with exit 2 and one line saying which value (after any start-up warning)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "Traceback" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("otel-blocksnoop: ")
    assert complaint in last
