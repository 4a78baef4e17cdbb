"""The watched app's resource: where it runs, as it declares it or as it was read, never ours."""

from __future__ import annotations

from dataclasses import replace

from otel_blocksnoop.events import PodIdentity, ProcessIdentity
from otel_blocksnoop.export.otel.resource import process_resource

IN_POD = ProcessIdentity(
    pid=1,
    service_name="checkout",
    resource_attributes=(),
    executable_path=None,
    runtime_version=None,
    instance_id="0c7d1f4e-0000-5000-8000-000000000002",
    host_name="checkout-5d8f",
    container_id="ab" * 32,
    pod=PodIdentity(
        uid="6a1f0e3c-7b2d-4c5e-9f80-1a2b3c4d5e6f",
        name="checkout-5d8f",
        namespace="shop",
        container_name="app",
    ),
)

PLACEMENT_KEYS = (
    "host.name",
    "container.id",
    "k8s.pod.uid",
    "k8s.pod.name",
    "k8s.namespace.name",
    "k8s.container.name",
)


def test_an_app_in_a_pod_is_described_under_the_semantic_conventions_names() -> None:
    resource = dict(process_resource(IN_POD, 4242, None).attributes)
    assert {key: resource.get(key) for key in PLACEMENT_KEYS} == {
        "host.name": "checkout-5d8f",
        "container.id": "ab" * 32,
        "k8s.pod.uid": "6a1f0e3c-7b2d-4c5e-9f80-1a2b3c4d5e6f",
        "k8s.pod.name": "checkout-5d8f",
        "k8s.namespace.name": "shop",
        "k8s.container.name": "app",
    }


def test_what_the_app_declares_in_its_resource_attributes_wins_over_what_was_read() -> None:
    # GIVEN an app that names its own pod and host in OTEL_RESOURCE_ATTRIBUTES
    declared = (("k8s.pod.name", "declared-pod"), ("host.name", "declared-host"))
    identity = replace(IN_POD, resource_attributes=declared)
    # WHEN its resource is made
    resource = dict(process_resource(identity, 4242, None).attributes)
    # THEN its own words stand, and what it did not declare is still read
    assert resource["k8s.pod.name"] == "declared-pod"
    assert resource["host.name"] == "declared-host"
    assert resource["k8s.namespace.name"] == "shop"


def test_what_is_not_known_of_the_app_is_left_out_not_filled_with_the_sidecars() -> None:
    unknown = replace(IN_POD, host_name=None, container_id=None, pod=None)
    resource = dict(process_resource(unknown, 4242, None).attributes)
    assert not set(PLACEMENT_KEYS) & set(resource)
    assert not set(PLACEMENT_KEYS) & set(process_resource(None, 4242, None).attributes)
