"""User-facing failures, each with a one-line message, a hint and an exit code.

Only ``cli.main`` prints these; everything below it raises.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes (README, "Exit codes")."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    NO_SUCH_PROCESS = 3
    NOT_PYTHON = 4
    NO_PRIVILEGES = 5
    BCC_MISSING = 6
    HEADERS_MISSING = 7
    TRACEFS_MISSING = 8
    BPF_LOAD_FAILED = 9
    LAUNCH_FAILED = 10
    PID_NAMESPACE = 11
    INTERRUPTED = 130


class BlocksnoopError(Exception):
    """Base of every error the command line reports without a traceback."""

    exit_code: ExitCode = ExitCode.FAILURE
    hint: str = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class NoSuchProcessError(BlocksnoopError, ProcessLookupError):
    """The PID names no running process."""

    exit_code = ExitCode.NO_SUCH_PROCESS
    hint = "check the PID with `ps`; the process may have exited"


class NotPythonError(BlocksnoopError):
    """The PID is a process, but not a Python interpreter."""

    exit_code = ExitCode.NOT_PYTHON
    hint = "pass the PID of the Python process that runs the event loop"


class NoPrivilegesError(BlocksnoopError, PermissionError):
    """Loading BPF or reading the target needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE)."""

    exit_code = ExitCode.NO_PRIVILEGES
    hint = "run as root, e.g. `sudo otel-blocksnoop ...`"


class BccMissingError(BlocksnoopError):
    """The ``bcc`` Python module cannot be imported."""

    exit_code = ExitCode.BCC_MISSING
    hint = "run `make setup` (installs python3-bpfcc and links it into the venv)"


class HeadersMissingError(BlocksnoopError):
    """BCC compiles at run time and needs the kernel headers."""

    exit_code = ExitCode.HEADERS_MISSING
    hint = "run `make setup` (installs linux-headers-amd64 and links /lib/modules/$(uname -r))"


class TracefsMissingError(BlocksnoopError):
    """Tracepoints are found through tracefs."""

    exit_code = ExitCode.TRACEFS_MISSING
    hint = "mount it: `mount -t tracefs tracefs /sys/kernel/tracing` (or run `make setup`)"


class BpfLoadError(BlocksnoopError):
    """The BPF program did not compile, load or attach."""

    exit_code = ExitCode.BPF_LOAD_FAILED
    hint = "run `otel-blocksnoop doctor`; rerun with -v for the compiler output"


class LaunchError(BlocksnoopError):
    """The command given after ``--`` could not be started."""

    exit_code = ExitCode.LAUNCH_FAILED
    hint = "check the command after `--` runs on its own"


class PidNamespaceError(BlocksnoopError):
    """The target runs in a PID namespace the kernel's helpers cannot name from ours."""

    exit_code = ExitCode.PID_NAMESPACE
    hint = (
        "run the sidecar in the app's PID namespace (docker `pid: service:app`, "
        "k8s shareProcessNamespace) or in the host's (`pid: host`, hostPID)"
    )


class ConfigError(BlocksnoopError):
    """An environment variable (``OTEL_*``) has a value the sidecar cannot use."""

    exit_code = ExitCode.USAGE
    hint = "see README, 'OpenTelemetry export', for the variables and their values"
