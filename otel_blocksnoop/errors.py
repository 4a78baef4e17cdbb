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
    STOPPED_AT_ONCE = 11
    PID_NAMESPACE = 12
    LOOP_BLOCKED = 13  # --fail-on: a block at least that long happened
    EVENTS_LOST = 14  # --fail-on-loss: a block, or its call site, may have gone unseen
    BAD_RECORDING = 20
    INTERRUPTED = 130


class BlocksnoopError(Exception):
    """Base of every error the command line reports without a traceback."""

    exit_code: ExitCode = ExitCode.FAILURE
    hint: str = ""
    container_hint: str = ""
    """The fix when the sidecar runs in a container, where `make setup` cannot help."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self._own_hint = hint is not None
        if hint is not None:
            self.hint = hint

    def hint_for(self, in_container: bool) -> str:
        """The hint that fits where the sidecar runs: one given when raised wins."""
        if in_container and self.container_hint and not self._own_hint:
            return self.container_hint
        return self.hint


class NoSuchProcessError(BlocksnoopError, ProcessLookupError):
    """The PID names no running process."""

    exit_code = ExitCode.NO_SUCH_PROCESS
    hint = "check the PID with `ps`; the process may have exited"
    container_hint = (
        "this container sees only its own PID namespace: share the app's "
        '(compose `pid: "service:app"`, Kubernetes `shareProcessNamespace: true`, '
        "or the host's for a per-node sidecar: `pid: host` / `hostPID: true`)"
    )


class NotPythonError(BlocksnoopError):
    """The PID is a process, but not a Python interpreter."""

    exit_code = ExitCode.NOT_PYTHON
    hint = "pass the PID of the Python process that runs the event loop"


class BadTargetError(BlocksnoopError):
    """The PID names something that is not a process to watch: the sidecar itself, a thread."""

    exit_code = ExitCode.USAGE
    hint = "pass the PID of the Python process that runs the event loop"


class NoPrivilegesError(BlocksnoopError, PermissionError):
    """Loading BPF or reading the target needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE)."""

    exit_code = ExitCode.NO_PRIVILEGES
    hint = "run as root, e.g. `sudo otel-blocksnoop ...`"
    container_hint = (
        "give the container SYS_ADMIN and SYS_PTRACE (`docker run --cap-add SYS_ADMIN "
        "--cap-add SYS_PTRACE`, compose `cap_add`, Kubernetes "
        "`securityContext.capabilities.add`)"
    )


class BccMissingError(BlocksnoopError):
    """The ``bcc`` Python module cannot be imported."""

    exit_code = ExitCode.BCC_MISSING
    hint = "run `make setup` (installs python3-bpfcc and links it into the venv)"
    container_hint = "run the otel-blocksnoop image (Dockerfile), which has BCC"


class HeadersMissingError(BlocksnoopError):
    """BCC compiles at run time and needs the kernel headers."""

    exit_code = ExitCode.HEADERS_MISSING
    hint = "run `make setup` (installs linux-headers-amd64 and links /lib/modules/$(uname -r))"
    container_hint = (
        "mount the host's kernel headers read-only: `-v /lib/modules:/lib/modules:ro "
        "-v /usr/src:/usr/src:ro` (the host needs headers for its running kernel)"
    )


class TracefsMissingError(BlocksnoopError):
    """Tracepoints are found through tracefs."""

    exit_code = ExitCode.TRACEFS_MISSING
    hint = "mount it: `mount -t tracefs tracefs /sys/kernel/tracing` (or run `make setup`)"
    container_hint = (
        "mount the host's tracefs: `-v /sys/kernel/tracing:/sys/kernel/tracing:ro` "
        "(on the host first: `mount -t tracefs tracefs /sys/kernel/tracing`)"
    )


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


class RecordingError(BlocksnoopError):
    """A recording given to ``report`` cannot be read, or the report cannot be written."""

    exit_code = ExitCode.BAD_RECORDING
    hint = "give the JSON lines a run wrote with --json (`otel-blocksnoop --json ... > run.jsonl`)"
