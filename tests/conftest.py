"""Fixtures shared by the unit and integration tests."""

from __future__ import annotations

import pytest

from otel_blocksnoop import preflight
from tests.helpers import IN_CI


@pytest.fixture(scope="session")
def bpf_host() -> None:
    """Root, BCC, headers and tracefs: present, or skip (outside CI) / fail (in CI)."""
    missing = [c for c in preflight.run_checks() if c.required and not c.ok]
    if missing:
        reason = "; ".join(f"{c.name}: {c.detail}" for c in missing)
        if IN_CI:
            pytest.fail(f"integration tests need BPF, and CI must have it: {reason}")
        pytest.skip(f"needs root and BPF: {reason}")
