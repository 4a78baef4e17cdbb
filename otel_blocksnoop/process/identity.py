"""Who a watched process is: the resource its blocks are reported under.

A block belongs to the app, not to the sidecar, so its resource is the
app's: the OpenTelemetry settings the app was started with (read from
/proc/PID/environ: the environment at exec, not later changes made in
Python), its executable, its Python version, and an instance id that is
stable for the life of the process.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from urllib.parse import unquote

from otel_blocksnoop.events import ProcessIdentity
from otel_blocksnoop.process.pythons import mapped_libpythons, python_name

ENV_SERVICE_NAME = "OTEL_SERVICE_NAME"
ENV_RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
MAX_ENVIRON_BYTES = 1 << 20
"""Larger environments are read only this far: a bound on what a target can make us read."""
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


def runtime_version(pid: int, executable: str | None) -> str | None:
    """major.minor of the target's Python, from its executable or its libpython."""
    name = python_name(executable) if executable else None
    version = name.version if name is not None else None
    if version is None:
        try:
            maps = _read_head(Path("/proc") / str(pid) / "maps", MAX_ENVIRON_BYTES).decode(
                errors="replace"
            )
        except OSError:
            return None
        version = next((lib.version for lib in mapped_libpythons(maps) if lib.version), None)
    return f"{version[0]}.{version[1]}" if version is not None else None


def _start_ticks(pid: int) -> str:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return "0"
    # Field 22 (starttime), counted after the parenthesised command name.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else "0"


def read_identity(pid: int) -> ProcessIdentity:
    """What /proc says about ``pid``; whatever cannot be read is left out."""
    proc = Path("/proc") / str(pid)
    try:
        service, attributes = app_settings(_read_head(proc / "environ", MAX_ENVIRON_BYTES))
    except OSError:
        service, attributes = None, ()
    try:
        executable: str | None = str((proc / "exe").readlink())
    except OSError:
        executable = None
    instance = uuid.uuid5(_INSTANCE_NAMESPACE, f"{socket.gethostname()}/{pid}/{_start_ticks(pid)}")
    return ProcessIdentity(
        pid=pid,
        service_name=service,
        resource_attributes=attributes,
        executable_path=executable,
        runtime_version=runtime_version(pid, executable),
        instance_id=str(instance),
    )
