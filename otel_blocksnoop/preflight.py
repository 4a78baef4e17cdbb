"""What the sidecar needs from the host, checked before anything is loaded.

``otel-blocksnoop doctor`` prints the whole list; a run stops at the first
required item that is missing, with the fix.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
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
from otel_blocksnoop.stacks.austin import Austin, AustinError

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
KHEADERS = Path("/sys/kernel/kheaders.tar.xz")
MODULES = Path("/lib/modules")
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
"""Files Docker and Podman put in every container they start."""
CONTAINER_CGROUPS = ("/docker", "/kubepods", "/containerd", "/libpod", "/lxc")
"""Parts of PID 1's cgroup path that mean it runs in a container (cgroup v1, or v2
without a cgroup namespace)."""
IMPORT_TIMEOUT_S = 60.0

# Capability bits (linux/capability.h)
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the checklist."""

    name: str
    ok: bool
    detail: str
    error: BlocksnoopError | None = None
    required: bool = True


def _is_dir(path: Path) -> bool:
    """``Path.is_dir`` that answers False, not EACCES, when we may not look."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


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
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges(container: bool = False) -> Check:
    caps = effective_capabilities()

    def has(bit: int) -> bool:
        return bool(caps >> bit & 1)

    bpf_ok = has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))
    # Root on a host reads other processes without CAP_SYS_PTRACE. In a container
    # the app runs as another user, or holds capabilities the sidecar dropped, and
    # the kernel refuses to let it read the app without CAP_SYS_PTRACE.
    if os.geteuid() == 0 and bpf_ok and (has(CAP_SYS_PTRACE) or not container):
        return Check("privileges", ok=True, detail="root, may load BPF")
    if bpf_ok and has(CAP_SYS_PTRACE):
        return Check("privileges", ok=True, detail="CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE")
    missing = [
        name
        for name, bit in (("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON))
        if not has(bit) and not has(CAP_SYS_ADMIN)
    ]
    if not has(CAP_SYS_PTRACE):
        missing.append("CAP_SYS_PTRACE")
    detail = f"missing {', '.join(missing)}"
    hint = None
    if container:
        wanted = [] if bpf_ok else ["SYS_ADMIN"]
        if not has(CAP_SYS_PTRACE):
            wanted.append("SYS_PTRACE")
        flags = " ".join(f"--cap-add {cap}" for cap in wanted)
        hint = f"add {flags} (compose `cap_add`, Kubernetes `securityContext.capabilities.add`)"
    who = "the container lacks capabilities" if container else "not root"
    return Check(
        "privileges",
        ok=False,
        detail=detail,
        error=NoPrivilegesError(f"failed to load BPF: {who} ({detail})", hint=hint),
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


def tracefs_root() -> Path | None:
    for root in TRACEFS_ROOTS:
        if _is_dir(root / "events"):
            return root
    return None


def check_tracefs() -> Check:
    root = tracefs_root()
    if root is None:
        return Check(
            "tracefs",
            ok=False,
            detail="not mounted",
            error=TracefsMissingError("failed to find tracepoints: tracefs is not mounted"),
        )
    if not _is_dir(root / "events" / "syscalls" / "sys_enter_epoll_wait"):
        return Check(
            "tracefs",
            ok=False,
            detail=f"{root} has no syscalls:sys_enter_epoll_wait",
            error=BpfLoadError(
                "failed to find syscalls:sys_enter_epoll_wait: "
                "this kernel lacks syscall tracepoints (CONFIG_FTRACE_SYSCALLS)",
                hint="a kernel with CONFIG_FTRACE_SYSCALLS=y is needed",
            ),
        )
    return Check("tracefs", ok=True, detail=f"{root}, epoll tracepoints present")


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


def run_checks(austin: str | None = None, try_import: bool = False) -> list[Check]:
    """Every check; ``try_import``: also import bcc (in a child), as ``doctor`` does."""
    container = in_container()
    return [
        check_privileges(container),
        check_bcc(try_import),
        check_tracefs(),
        check_headers(container),
        check_austin(austin),
    ]


def require(checks: list[Check]) -> None:
    """Raise the error of the first required check that failed."""
    for check in checks:
        if check.required and not check.ok and check.error is not None:
            raise check.error
