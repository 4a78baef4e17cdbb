"""The watched app's identity, read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from otel_blocksnoop.process.identity import parse_environ, parse_resource_attributes, read_identity


def test_resource_attributes_follow_the_spec_format_with_percent_decoding() -> None:
    text = "deployment.environment=prod, team=a%2Cb ,broken,=x,k=v=w"
    assert parse_resource_attributes(text) == {
        "deployment.environment": "prod",
        "team": "a,b",
        "k": "v=w",
    }


def test_environ_entries_are_split_on_nul_and_the_first_equals_sign() -> None:
    assert parse_environ(b"A=1\0B=x=y\0junk\0") == {"A": "1", "B": "x=y"}


def test_a_process_is_known_by_its_own_otel_settings_executable_and_version() -> None:
    # GIVEN a Python process started with its own OpenTelemetry settings
    env = {
        **os.environ,
        "OTEL_SERVICE_NAME": "checkout",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        # WHEN its identity is read from outside
        identity = read_identity(child.pid)
        again = read_identity(child.pid)
    finally:
        child.communicate(b"")
    # THEN it carries the app's settings, not ours
    assert identity.service_name == "checkout"
    assert dict(identity.resource_attributes) == {"deployment.environment": "staging"}
    assert identity.executable_path == str(Path(sys.executable).resolve())
    assert identity.runtime_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert identity.instance_id == again.instance_id


def test_a_process_gone_still_gets_an_identity_with_what_is_known() -> None:
    identity = read_identity(2**22 + 12345)
    assert identity.service_name is None
    assert identity.executable_path is None
