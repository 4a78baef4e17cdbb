"""Resources: the watched app's, one per process (not the sidecar's), and the sidecar's own."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from opentelemetry.sdk.resources import Resource

from otel_blocksnoop.bounded import MAX_WATCHED_PROCESSES, BoundedDict
from otel_blocksnoop.events import ProcessIdentity
from otel_blocksnoop.export import names
from otel_blocksnoop.export.otlp import MAX_SERVICE_NAME

log = logging.getLogger(__name__)
MAX_RESOURCES = MAX_WATCHED_PROCESSES
"""Watched processes whose resource and meters are kept: every one watched at once, so a
process's meter provider lives from its first block until it exits (a provider dropped
and made again would restart its histogram and cost a reader thread and a channel)."""


def placement_attributes(identity: ProcessIdentity) -> dict[str, str]:
    """Where the app runs, under the semantic conventions' names; only what is known."""
    pod = identity.pod
    found = {
        names.HOST_NAME: identity.host_name,
        names.CONTAINER_ID: identity.container_id,
        names.K8S_POD_UID: pod.uid if pod else None,
        names.K8S_POD_NAME: pod.name if pod else None,
        names.K8S_NAMESPACE_NAME: pod.namespace if pod else None,
        names.K8S_CONTAINER_NAME: pod.container_name if pod else None,
    }
    return {key: value for key, value in found.items() if value is not None}


def process_resource(
    identity: ProcessIdentity | None, pid: int, fallback_service: str | None
) -> Resource:
    """The watched app's resource: its own OTel settings first, then ours (DESIGN.md).

    Where the app runs (host, container, pod) is what it declares in its own
    OTEL_RESOURCE_ATTRIBUTES, else what is read of it; never the sidecar's.
    """
    attributes: dict[str, str | int] = {}
    if identity is not None:
        attributes.update(dict(identity.resource_attributes))
        if identity.executable_path:
            attributes[names.PROCESS_EXECUTABLE_PATH] = identity.executable_path
            attributes[names.PROCESS_EXECUTABLE_NAME] = Path(identity.executable_path).name
        if identity.runtime_version:
            attributes[names.PROCESS_RUNTIME_NAME] = "cpython"
            attributes[names.PROCESS_RUNTIME_VERSION] = identity.runtime_version
        attributes[names.SERVICE_INSTANCE_ID] = identity.instance_id
        for key, value in placement_attributes(identity).items():
            attributes.setdefault(key, value)
    service = (identity.service_name if identity else None) or fallback_service
    if service is not None and len(service) > MAX_SERVICE_NAME:
        # Only the app's own can be this long: the sidecar's settings are checked at start.
        log.warning(
            "service.name of PID %d is %d characters long: kept to its first %d",
            pid,
            len(service),
            MAX_SERVICE_NAME,
        )
        service = service[:MAX_SERVICE_NAME]
    attributes[names.SERVICE_NAME] = service or names.UNKNOWN_SERVICE
    # As the app sees itself (in its own PID namespace), like its own telemetry.
    attributes[names.PROCESS_PID] = identity.app_pid or pid if identity is not None else pid
    # Resource.create adds telemetry.sdk.* and the sidecar's OTEL_RESOURCE_ATTRIBUTES,
    # under what is given here.
    return Resource.create(attributes)


def sidecar_resource() -> Resource:
    """The sidecar's own, for its health metrics."""
    return Resource.create(
        {
            names.SERVICE_NAME: names.SCOPE_NAME,
            names.PROCESS_PID: os.getpid(),
            names.HOST_NAME: socket.gethostname(),
        }
    )


class Resources:
    """The resource of each watched process, made once (the oldest forgotten past a limit)."""

    def __init__(self, fallback_service: str | None) -> None:
        self._fallback_service = fallback_service
        self._by_pid: BoundedDict[int, Resource] = BoundedDict(MAX_RESOURCES)

    def forget(self, pid: int) -> None:
        """``pid`` exited: a process that reuses its number gets a resource of its own."""
        self._by_pid.pop(pid, None)

    def __len__(self) -> int:
        return len(self._by_pid)

    def of(self, pid: int, identity: ProcessIdentity | None) -> Resource:
        resource = self._by_pid.get(pid)
        if resource is None:
            resource = self._by_pid[pid] = process_resource(identity, pid, self._fallback_service)
        return resource
