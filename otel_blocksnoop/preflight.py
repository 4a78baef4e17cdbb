"""What the sidecar needs from the host, checked before anything is loaded.

``otel-blocksnoop doctor [PID...]`` prints the whole list and the verdict; a
run makes the same checks, in the same order, and stops at the first
required one that failed with the same one-line message and exit code. So
the checks do what the run does, not what usually goes with it: they read
the effective capabilities (not the uid), read tracefs's files (not only
look for the mount), load and attach a program that does nothing (as the
kernel will judge the real one), and read the target's memory.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from otel_blocksnoop.errors import (
    BccMissingError,
    BlocksnoopError,
    BpfLoadError,
    HeadersMissingError,
    NoPrivilegesError,
    TracefsMissingError,
)
from otel_blocksnoop.kernel.tracepoints import perf_event_paranoid, probe_attach, tracefs_access
from otel_blocksnoop.process.remote_memory import access_error
from otel_blocksnoop.process.target import inspect_target
from otel_blocksnoop.stacks.austin import Austin, AustinError

KHEADERS = Path("/sys/kernel/kheaders.tar.xz")
MODULES = Path("/lib/modules")
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
"""Files Docker and Podman put in every container they start."""
CONTAINER_CGROUPS = ("/docker", "/kubepods", "/containerd", "/libpod", "/lxc")
"""Parts of PID 1's cgroup path that mean it runs in a container (cgroup v1, or v2
without a cgroup namespace)."""
IMPORT_TIMEOUT_S = 60.0
PROBE_TRACEPOINT = ("syscalls", "sys_enter_epoll_wait")
"""The first tracepoint the detector attaches to: what tracefs and attaching are checked on."""

# Capability bits (linux/capability.h)
CAP_DAC_READ_SEARCH = 2
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
CAPABILITY_NAMES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
"""Every capability by its bit (linux/capability.h)."""
USED_CAPABILITIES = (CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF)
"""The capabilities a run may use: what ``doctor`` lists."""
PRIVILEGES_HINT = "see README, 'Privileges', for what a run needs and how to grant it"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the checklist."""

    name: str
    ok: bool
    detail: str
    error: BlocksnoopError | None = None
    required: bool = True
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who this process is to the kernel: effective uid and capabilities."""

    uid: int
    caps: int

    def has(self, bit: int) -> bool:
        return bool(self.caps >> bit & 1)

    @property
    def may_load_bpf(self) -> bool:
        return self.has(CAP_SYS_ADMIN) or (self.has(CAP_BPF) and self.has(CAP_PERFMON))


def status_field(status: str, name: str) -> str | None:
    """The value of ``name:`` in a /proc/PID/status text."""
    for line in status.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            return value.strip()
    return None


def capability_set(status: str, name: str = "CapEff") -> int:
    """A capability mask (``CapEff``, ``CapPrm``, ...) of a /proc/PID/status text; 0 if absent."""
    value = status_field(status, name)
    try:
        return int(value, 16) if value else 0
    except ValueError:
        return 0


def own_credentials() -> Credentials:
    """Our uid and capabilities: what the kernel checks when we load BPF or read a process."""
    return Credentials(os.geteuid(), effective_capabilities())


def in_container(root: Path = Path("/")) -> bool:
    """Whether the sidecar runs in a container, where the fix is a mount or a capability.

    Inside one, "run `make setup`" is no help: what is missing comes from the
    host through the container's options.
    """
    if any(_is_file(root / marker.lstrip("/")) for marker in CONTAINER_MARKERS):
        return True
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    try:
        cgroup = (root / "proc" / "1" / "cgroup").read_text()
    except OSError:
        return False
    return any(marker in cgroup for marker in CONTAINER_CGROUPS)


def effective_capabilities() -> int:
    """CapEff of this process: what the kernel checks, whatever the uid."""
    return capability_set(Path("/proc/self/status").read_text())


def capability_names(caps: int, only: tuple[int, ...] | None = None) -> list[str]:
    """The names of the capabilities in ``caps`` (of those in ``only``, if given)."""
    bits = range(caps.bit_length()) if only is None else only
    return [
        CAPABILITY_NAMES[bit] if bit < len(CAPABILITY_NAMES) else f"capability {bit}"
        for bit in bits
        if caps >> bit & 1
    ]


def _cap_add_hint(*caps: str) -> str:
    """The container options that grant ``caps`` (e.g. ``SYS_PTRACE``)."""
    flags = " ".join(f"--cap-add {cap}" for cap in caps)
    return f"add {flags} (compose `cap_add`, Kubernetes `securityContext.capabilities.add`)"


def check_capabilities(
    creds: Credentials, container: bool = False, attaching: bool = True
) -> Check:
    """CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN: what loading a tracing program asks (any uid).

    In a container, to attach, also CAP_SYS_PTRACE: there the app runs as
    another user, or holds capabilities the sidecar dropped, and cannot be
    read without it (a command the sidecar launches can).
    """
    held = capability_names(creds.caps, USED_CAPABILITIES)
    detail = f"uid {creds.uid}, {', '.join(held) if held else 'no capabilities'}"
    no_ptrace = container and attaching and not creds.has(CAP_SYS_PTRACE)
    if creds.may_load_bpf and not no_ptrace:
        return Check("capabilities", ok=True, detail=detail)
    if creds.may_load_bpf:
        missing = "CAP_SYS_PTRACE"
        msg = "failed to read the app: the container lacks capabilities: missing CAP_SYS_PTRACE"
    else:
        missing = f"{_missing_for_bpf(creds)} (or CAP_SYS_ADMIN)"
        who = "the container lacks capabilities: " if container else ""
        msg = f"failed to load BPF: {who}missing {missing}; has {detail}"
    hint = PRIVILEGES_HINT
    if container:
        wanted = [] if creds.may_load_bpf else ["SYS_ADMIN"]
        hint = _cap_add_hint(*wanted, *(["SYS_PTRACE"] if no_ptrace else []))
    return Check(
        "capabilities",
        ok=False,
        detail=f"{detail}; missing {missing}",
        error=NoPrivilegesError(msg, hint=hint),
    )


def check_privileges(container: bool = False) -> Check:
    """``check_capabilities`` of this process."""
    return check_capabilities(own_credentials(), container)


def _missing_for_bpf(creds: Credentials) -> str:
    """Which of CAP_BPF and CAP_PERFMON ``creds`` lacks, e.g. ``CAP_BPF and CAP_PERFMON``."""
    bits = ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"))
    return " and ".join(name for bit, name in bits if not creds.has(bit))


def check_interpreter() -> Check:
    """Whether we may run this interpreter, as the compiler process and a launch's holder do."""
    if os.access(sys.executable, os.X_OK, effective_ids=True):
        return Check("interpreter", ok=True, detail=sys.executable)
    msg = f"failed to run {sys.executable}: permission denied (the BPF compiler runs in it)"
    return Check(
        "interpreter",
        ok=False,
        detail=f"{sys.executable} is not executable by uid {os.geteuid()}",
        error=NoPrivilegesError(
            msg, hint="install the sidecar where this user may run its Python (not under /root)"
        ),
    )


def check_bcc(try_import: bool = False) -> Check:
    """Find the module; with ``try_import``, import it in a child process (``doctor``).

    Never imported here: it maps libbcc, LLVM and clang into the importer for
    good. A run needs no import here either: the compiler process imports it
    first thing, and a found but broken bcc fails there with this same error.
    """
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        return Check(
            "bcc",
            ok=False,
            detail="the bcc module is not importable",
            error=BccMissingError("failed to import bcc: not installed in this Python"),
        )
    failure = _import_in_child("bcc") if try_import else None
    if failure is not None:
        return Check(
            "bcc",
            ok=False,
            detail=f"bcc does not import: {failure}",
            error=BccMissingError(f"failed to import bcc: {failure}"),
        )
    return Check("bcc", ok=True, detail=str(Path(spec.origin).parent))


def _import_in_child(module: str) -> str | None:
    """Why ``module`` does not import in a fresh interpreter like this one; None if it does."""
    try:
        child = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=IMPORT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if child.returncode == 0:
        return None
    lines = child.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {child.returncode}"


def _mode(path: Path) -> str:
    """``mode 0700, owner uid 0`` of ``path``, or '' if it cannot be seen."""
    try:
        info = path.stat()
    except OSError:
        return ""
    return f"mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}"


def check_tracefs() -> Check:
    """The tracepoint's id (read to attach) and format (read by BCC), where the run reads them."""
    category, event = PROBE_TRACEPOINT
    access = tracefs_access(category, event)
    if access.events is not None:
        return Check(
            "tracefs", ok=True, detail=f"{access.events.parent}, {category}:{event} readable"
        )
    if access.denied is not None:
        mode = _mode(access.denied)
        reason = f"permission denied ({mode})" if mode else "permission denied"
        msg = f"failed to read tracefs at {access.denied}: {reason}"
        return Check(
            "tracefs",
            ok=False,
            detail=f"{access.denied} is mounted but not readable: {reason}",
            error=NoPrivilegesError(
                msg,
                hint="add CAP_DAC_READ_SEARCH, or run as the owner of tracefs; "
                "see README, 'Privileges'",
            ),
        )
    if access.without_event is not None:
        return Check(
            "tracefs",
            ok=False,
            detail=f"{access.without_event} has no {category}:{event}",
            error=BpfLoadError(
                f"failed to find {category}:{event}: "
                "this kernel lacks syscall tracepoints (CONFIG_FTRACE_SYSCALLS)",
                hint="a kernel with CONFIG_FTRACE_SYSCALLS=y is needed",
            ),
        )
    return Check(
        "tracefs",
        ok=False,
        detail="not mounted",
        error=TracefsMissingError("failed to find tracepoints: tracefs is not mounted"),
    )


def check_attach(creds: Credentials) -> Check:
    """Load a do-nothing tracing program and attach it where the detector's first one goes."""
    category, event = PROBE_TRACEPOINT
    paranoid = perf_event_paranoid()
    failure = probe_attach(category, event)
    setting = f"perf_event_paranoid {paranoid}" if paranoid is not None else "perf_event_paranoid ?"
    if failure is None:
        return Check("attach", ok=True, detail=f"{category}:{event} attached ({setting})")
    step, exc = failure
    reason = exc.strerror or str(exc)
    msg = f"failed to {step}: {reason}"
    if not isinstance(exc, PermissionError):
        return Check("attach", ok=False, detail=msg, error=BpfLoadError(msg))
    if creds.may_load_bpf:
        hint = "the kernel refused despite the capabilities (lockdown, seccomp or an LSM?)"
    else:
        hint = f"add {_missing_for_bpf(creds)} (or CAP_SYS_ADMIN); {PRIVILEGES_HINT}"
    return Check(
        "attach",
        ok=False,
        detail=f"{msg} ({setting})",
        error=NoPrivilegesError(msg, hint=hint),
    )


def check_headers(container: bool = False, modules_root: Path = MODULES) -> Check:
    modules = modules_root / os.uname().release
    build = modules / "build"
    # Debian splits headers into the -amd64 tree (generated config) and the
    # -common tree (the sources); BCC needs both.
    generated = build / "include" / "generated" / "autoconf.h"
    common = modules / "source" / "include" / "linux" / "kconfig.h"
    if _is_file(generated) and _is_file(common):
        return Check("kernel headers", ok=True, detail=f"{build} -> {build.resolve()}")
    if _is_file(KHEADERS):
        return Check("kernel headers", ok=True, detail=str(KHEADERS))
    return Check(
        "kernel headers",
        ok=False,
        detail=f"{build} or {modules / 'source'} is missing",
        error=HeadersMissingError(
            f"failed to find kernel headers under {modules}",
            hint=_headers_mount_hint(modules_root, modules) if container else None,
        ),
    )


def _is_file(path: Path) -> bool:
    """``Path.is_file`` that answers False, not EACCES, when we may not look."""
    try:
        return path.is_file()
    except OSError:
        return False


def _is_dir(path: Path) -> bool:
    """``Path.is_dir`` that answers False, not EACCES, when we may not look."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _why_denied(pid: int, creds: Credentials) -> str:
    """What keeps this process from reading ``pid``: the kernel's ptrace access rules."""
    if creds.has(CAP_SYS_PTRACE):
        return "denied despite CAP_SYS_PTRACE (not dumpable, or an LSM)"
    try:
        status = (Path("/proc") / str(pid) / "status").read_text(errors="replace")
    except OSError:
        return "no CAP_SYS_PTRACE"
    return denial_reason(status, creds)


def denial_reason(status: str, creds: Credentials) -> str:
    """Why a process without CAP_SYS_PTRACE may not read the one of /proc/PID/status ``status``.

    The kernel lets it only when the target's real, effective and saved uids
    are all its own and the target holds no capability it lacks.
    """
    uids = [int(uid) for uid in (status_field(status, "Uid") or "").split()[:3] if uid.isdigit()]
    other = next((uid for uid in uids if uid != creds.uid), None)
    if other is not None:
        return f"no CAP_SYS_PTRACE, and it runs as uid {other}, this process as uid {creds.uid}"
    extra = capability_set(status, "CapPrm") & ~creds.caps
    if extra:
        names = capability_names(extra)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return f"no CAP_SYS_PTRACE, and it holds capabilities this process lacks: {shown}"
    return "no CAP_SYS_PTRACE"


def check_target(pid: int, creds: Credentials, container: bool = False) -> Check:
    """What a run checks of ``pid`` (a live Python process), then a read of its memory."""
    name = f"process {pid}"
    fix = _cap_add_hint("SYS_PTRACE") if container else f"add CAP_SYS_PTRACE; {PRIVILEGES_HINT}"
    try:
        info = inspect_target(pid)
    except NoPrivilegesError:
        why = _why_denied(pid, creds)
        msg = f"failed to inspect process {pid}: permission denied ({why})"
        error = NoPrivilegesError(msg, hint=fix)
        return Check(name, ok=False, detail=f"permission denied ({why})", error=error)
    except BlocksnoopError as exc:
        return Check(name, ok=False, detail=str(exc), error=exc)
    problem = access_error(pid)
    if problem is None:
        return Check(name, ok=True, detail=f"{Path(info.exe).name}, memory readable")
    if isinstance(problem, PermissionError):
        why = _why_denied(pid, creds)
        msg = f"failed to read the memory of process {pid}: permission denied ({why})"
        error = NoPrivilegesError(msg, hint=fix)
        return Check(name, ok=False, detail=f"memory not readable ({why})", error=error)
    msg = f"failed to read the memory of process {pid}: {problem.strerror or problem}"
    return Check(name, ok=False, detail=msg, error=NoPrivilegesError(msg))


def check_ptrace(creds: Credentials) -> Check:
    """Without a PID: which processes this one may read (a warning only: launch mode needs none)."""
    if creds.has(CAP_SYS_PTRACE):
        return Check(
            "ptrace", ok=True, detail="CAP_SYS_PTRACE: may read any process", required=False
        )
    return Check(
        "ptrace",
        ok=False,
        detail=f"no CAP_SYS_PTRACE: may read only the commands it launches and processes "
        f"of uid {creds.uid} without capabilities it lacks (`doctor PID` checks one)",
        required=False,
    )


def _headers_mount_hint(modules_root: Path, modules: Path) -> str | None:
    """Which of the host's directories the container lacks; None when both are there."""
    if not _is_dir(modules):
        return (
            f"{modules} is not in the container: mount the host's "
            f"`-v {modules_root}:{modules_root}:ro` (and `-v /usr/src:/usr/src:ro`)"
        )
    for link in (modules / "build", modules / "source"):
        if link.is_symlink() and not link.exists():
            target = link.readlink()
            return (
                f"{link} points to {target}, which is not in the container: "
                f"mount the host's `-v /usr/src:/usr/src:ro`"
            )
    return None


def check_austin(explicit: str | None = None) -> Check:
    try:
        austin = Austin.find(explicit)
        version = austin.version()
    except AustinError as exc:
        return Check("austin", ok=False, detail=str(exc), required=False)
    return Check("austin", ok=True, detail=f"{austin.path} ({version})", required=False)


def _skipped(name: str, because: str) -> Check:
    return Check(name, ok=False, detail=f"not tried: {because}", required=False, skipped=True)


def run_checks(
    pids: Sequence[int] = (), austin: str | None = None, doctor: bool = False
) -> list[Check]:
    """Every check, in the order a run stops at them.

    ``doctor``: also import bcc (in a child) and run Austin, which a run
    does later on its own (a broken bcc fails the compiler process with the
    same error; a missing Austin is a warning).
    """
    creds = own_credentials()
    container = in_container()
    checks = [check_target(pid, creds, container) for pid in pids]
    capabilities = check_capabilities(creds, container, attaching=bool(pids))
    tracefs = check_tracefs()
    checks += [capabilities, check_interpreter(), check_bcc(try_import=doctor), tracefs]
    if not tracefs.ok:
        checks.append(_skipped("attach", "tracefs is not readable"))
    else:
        checks.append(check_attach(creds))
    checks.append(check_headers(container))
    if not pids:
        checks.append(check_ptrace(creds))
    if doctor:
        checks.append(check_austin(austin))
    return checks


def first_failure(checks: list[Check]) -> BlocksnoopError | None:
    """The error of the first required check that failed: where a run stops."""
    for check in checks:
        if check.required and not check.ok and check.error is not None:
            return check.error
    return None


def require(checks: list[Check]) -> None:
    """Raise the error of the first required check that failed."""
    error = first_failure(checks)
    if error is not None:
        raise error
