"""Who a watched process is: the resource its blocks are reported under.

A block belongs to the app, not to the sidecar, so its resource is the
app's: the OpenTelemetry settings the app was started with (read from
/proc/PID/environ, or the same bytes from its memory where that file is
closed to us: the environment at exec, not later changes made in Python),
its executable, its Python version, an instance id that is
stable for the life of the process, and where it runs: its hostname, its
container (from its cgroups) and, in Kubernetes, its pod. Whatever cannot
be read is left out: never the sidecar's value in place of the app's.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from urllib.parse import unquote

from otel_blocksnoop.events import PodIdentity, ProcessIdentity
from otel_blocksnoop.process.container import Placement, placement
from otel_blocksnoop.process.context.interpreter import (
    UnsupportedInterpreterError,
    interpreter_image,
)
from otel_blocksnoop.process.pidns import NamespaceIds
from otel_blocksnoop.process.remote_memory import MAX_TABLE, RemoteMemory

PROC = Path("/proc")
HOSTNAME_FILE = Path("/etc/hostname")
ENV_SERVICE_NAME = "OTEL_SERVICE_NAME"
ENV_RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
ENV_HOSTNAME = "HOSTNAME"
"""Set to the container's hostname by Docker, Podman and the kubelet (the pod's)."""
ENV_KUBERNETES = "KUBERNETES_SERVICE_HOST"
"""Set in every container of every pod: the app runs in Kubernetes."""
ENV_POD_NAME = ("K8S_POD_NAME", "POD_NAME", "MY_POD_NAME")
"""Where the downward API usually puts ``metadata.name`` (the user names the variable)."""
ENV_POD_NAMESPACE = ("K8S_NAMESPACE", "K8S_POD_NAMESPACE", "POD_NAMESPACE", "MY_POD_NAMESPACE")
"""Where the downward API usually puts ``metadata.namespace``."""
ENV_POD_UID = ("K8S_POD_UID", "POD_UID", "MY_POD_UID")
"""Where the downward API usually puts ``metadata.uid`` (used when the cgroups do not tell)."""
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""The pod's namespace, in every container that mounts its service account token (the default)."""
ENV_CONTAINER_NAME = ("K8S_CONTAINER_NAME",)
"""The container's name in the pod spec: the downward API has no field for it, users set it."""
MAX_ENVIRON_BYTES = 1 << 20
"""Larger environments are read only this far: a bound on what a target can make us read."""
STAT_ENV_START_FIELD = 50
"""/proc/PID/stat's ``env_start`` (proc(5), counted from 1); ``env_end`` is the next."""
MAX_SMALL_FILE_BYTES = 64 << 10
"""/proc/PID/cgroup and /etc/hostname are read only this far."""
MAX_HOSTNAME_CHARS = 253
"""The longest DNS name; anything longer (or with blanks) is not a hostname."""
_INSTANCE_NAMESPACE = uuid.UUID("8f0a4c7e-2f7b-4c55-9a39-6f1f8c2b7d41")


def parse_resource_attributes(text: str) -> dict[str, str]:
    """``key=value,key2=value2`` as the OpenTelemetry spec defines it (values percent-encoded)."""
    attributes = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    return attributes


def parse_environ(raw: bytes) -> dict[str, str]:
    """/proc/PID/environ: NUL-separated ``NAME=value`` entries."""
    env = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep:
            env[name.decode(errors="replace")] = value.decode(errors="replace")
    return env


def app_settings(raw_environ: bytes) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """The service name and resource attributes an app's environment (/proc/PID/environ) gives."""
    env = parse_environ(raw_environ)
    attributes = parse_resource_attributes(env.get(ENV_RESOURCE_ATTRIBUTES, ""))
    service = env.get(ENV_SERVICE_NAME) or attributes.get("service.name") or None
    return service, tuple(sorted(attributes.items()))


def _read_head(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        return handle.read(limit)


def environ_bounds(stat: str) -> tuple[int, int] | None:
    """``env_start`` and ``env_end`` from a /proc/PID/stat text, or None.

    None when the kernel shows them as 0 (no ptrace access to the process, or
    a kernel thread) or the text is not a stat line.
    """
    # Fields are counted from 1; field 3 is the first after the command's ")".
    fields = stat.rpartition(")")[2].split()
    index = STAT_ENV_START_FIELD - 3
    try:
        start, end = int(fields[index]), int(fields[index + 1])
    except (IndexError, ValueError):
        return None
    return (start, end) if 0 < start < end else None


def read_environ(pid: int, proc: Path = PROC) -> bytes:
    """``pid``'s environment at exec (at most MAX_ENVIRON_BYTES); empty if it cannot be read.

    /proc/PID/environ is mode 0400 to the app's user: a sidecar that runs as
    root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (the hardened layouts)
    cannot open it. With CAP_SYS_PTRACE it may still read the app's memory,
    and the kernel itself takes that file from there: the bytes between
    ``env_start`` and ``env_end`` (/proc/PID/stat), read the same way.
    """
    where = proc / str(pid)
    try:
        return _read_head(where / "environ", MAX_ENVIRON_BYTES)
    except PermissionError:
        pass
    except OSError:
        return b""
    try:
        bounds = environ_bounds((where / "stat").read_text(errors="replace"))
    except OSError:
        return b""
    if bounds is None:
        return b""
    start, end = bounds
    size = min(end - start, MAX_ENVIRON_BYTES, MAX_TABLE)
    return RemoteMemory(pid).read_table(start, size) or b""


def runtime_version(pid: int) -> str | None:
    """major.minor of the target's Python, as the context and frame readers find it."""
    return runtime(pid)[0]


def runtime(pid: int) -> tuple[str | None, bool | None]:
    """major.minor of the target's Python and whether it is a free-threaded build.

    Both as the context and frame readers find them; (None, None) when not known.
    """
    try:
        image = interpreter_image(pid)
    except (UnsupportedInterpreterError, OSError):
        return None, None
    major, minor = image.version
    return f"{major}.{minor}", image.free_threaded


def _start_ticks(pid: int) -> str:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return "0"
    # Field 22 (starttime), counted after the parenthesised command name.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else "0"


def _hostname(value: str | None) -> str | None:
    """``value`` if it can be a hostname: one word, not empty, not too long."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_HOSTNAME_CHARS or not value.isprintable() or " " in value:
        return None
    return value


def _same_uts(pid: int, proc: Path) -> bool:
    """Whether ``pid`` shares the sidecar's UTS namespace (False if that cannot be told)."""
    uts = Path("ns") / "uts"
    try:
        return (proc / str(pid) / uts).readlink() == (proc / "self" / uts).readlink()
    except OSError:
        return False


def _file_key(path: Path) -> tuple[int, int] | None:
    """What makes a file the same file: its device and inode (None if it cannot be seen)."""
    try:
        seen = path.stat()
    except OSError:
        return None
    return seen.st_dev, seen.st_ino


def _own_hostname_file(pid: int, proc: Path) -> str | None:
    """The app's /etc/hostname, if it has one of its own (not the very file the sidecar sees)."""
    theirs = proc / str(pid) / "root" / HOSTNAME_FILE.relative_to("/")
    try:
        if _file_key(theirs) == _file_key(HOSTNAME_FILE):
            return None
        first_line = _read_head(theirs, MAX_SMALL_FILE_BYTES).decode(errors="replace")
    except OSError:
        return None
    return _hostname(first_line.partition("\n")[0])


def app_hostname(pid: int, env: dict[str, str], proc: Path = PROC) -> str | None:
    """The hostname the app sees (``uname -n`` in its UTS namespace), read without entering it.

    In the sidecar's own UTS namespace that is the sidecar's hostname, exactly;
    the app's ``HOSTNAME`` is only a copy made when it started (stale after a
    rename, or inherited from whoever started it), so there it is not asked.
    In another namespace, no file shows the name to an outsider
    (/proc/sys/kernel/hostname answers for the reader's namespace), so it is
    taken from what the engines leave behind: the ``HOSTNAME`` they put in the
    app's environment, else the app's own /etc/hostname (Docker and Podman
    mount one per container). That file is not trusted when it is the
    sidecar's own: a process given its own UTS namespace without its own
    mount namespace (``unshare --uts``) sees the host's file, whatever name it
    was given. Entering the namespace (``setns``) would read the name exactly,
    but would change a thread of the sidecar; what is not known is left out.
    """
    if _same_uts(pid, proc):
        return _hostname(socket.gethostname())
    return _hostname(env.get(ENV_HOSTNAME)) or _own_hostname_file(pid, proc)


def _first(env: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((env[name].strip() for name in names if env.get(name, "").strip()), None)


def pod_identity(env: dict[str, str], where: Placement) -> PodIdentity | None:
    """The pod an app runs in: its uid from its cgroups, the rest from its environment.

    Read only where the app runs in Kubernetes (its cgroups are the
    kubelet's, or the kubelet gave it ``KUBERNETES_SERVICE_HOST``): a
    ``POD_NAME`` elsewhere names something else.
    """
    if not (where.in_kubepods or ENV_KUBERNETES in env):
        return None
    pod = PodIdentity(
        uid=pod_uid(env, where),
        name=_first(env, ENV_POD_NAME),
        namespace=_first(env, ENV_POD_NAMESPACE),
        container_name=_first(env, ENV_CONTAINER_NAME),
    )
    return pod if pod != PodIdentity() else None


def pod_uid(env: dict[str, str], where: Placement) -> str | None:
    """The pod's uid: from its cgroups, else the downward API's variable."""
    return where.pod_uid or _first(env, ENV_POD_UID)


def pod_name(env: dict[str, str], where: Placement) -> str | None:
    """The pod's name: the downward API's variable, else ``HOSTNAME`` in a pod.

    The kubelet names each container's host after its pod (unless the pod
    sets ``spec.hostname``), and the runtime puts that in ``HOSTNAME``.
    """
    named = _first(env, ENV_POD_NAME)
    if named is not None or not (where.in_kubepods or ENV_KUBERNETES in env):
        return named
    return _hostname(env.get(ENV_HOSTNAME))


def pod_namespace(pid: int, env: dict[str, str], proc: Path = PROC) -> str | None:
    """The pod's namespace: the downward API's variable, else the service account's file."""
    named = _first(env, ENV_POD_NAMESPACE)
    if named is not None:
        return named
    path = proc / str(pid) / "root" / SERVICE_ACCOUNT_NAMESPACE.relative_to("/")
    try:
        text = _read_head(path, MAX_HOSTNAME_CHARS + 1).decode(errors="replace").strip()
    except OSError:
        return None
    return _hostname(text)


def read_placement(pid: int, proc: Path = PROC) -> Placement:
    """``pid``'s container and pod, from its cgroups (nothing if they cannot be read)."""
    try:
        text = _read_head(proc / str(pid) / "cgroup", MAX_SMALL_FILE_BYTES).decode(errors="replace")
    except OSError:
        return Placement()
    return placement(text)


def read_identity(pid: int) -> ProcessIdentity:
    """What /proc says about ``pid``; whatever cannot be read is left out."""
    proc = PROC / str(pid)
    env = parse_environ(read_environ(pid))
    try:
        executable: str | None = str((proc / "exe").readlink())
    except OSError:
        executable = None
    attributes = parse_resource_attributes(env.get(ENV_RESOURCE_ATTRIBUTES, ""))
    service = env.get(ENV_SERVICE_NAME) or attributes.get("service.name") or None
    instance = uuid.uuid5(_INSTANCE_NAMESPACE, f"{socket.gethostname()}/{pid}/{_start_ticks(pid)}")
    where = read_placement(pid)
    app_pid = NamespaceIds().app_pid(pid)
    version, free_threaded = runtime(pid)
    return ProcessIdentity(
        pid=pid,
        service_name=service,
        resource_attributes=tuple(sorted(attributes.items())),
        executable_path=executable,
        runtime_version=version,
        instance_id=str(instance),
        host_name=app_hostname(pid, env),
        container_id=where.container_id,
        pod=pod_identity(env, where),
        app_pid=app_pid if app_pid != pid else None,
        free_threaded=free_threaded,
    )
