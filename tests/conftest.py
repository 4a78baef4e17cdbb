"""Fixtures shared by the unit and integration tests, and the CI rule: no skips under CI."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from otel_blocksnoop import preflight
from tests.helpers import IN_CI, NotApplicable

pytest_plugins = ["pytester"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI (CI=true), a skipped test fails: whatever it lacks, CI must have.

    A skip hides a missing interpreter, Austin or tool as a pass. Only a test
    that does not apply to this kind of machine at all says so with
    ``tests.helpers.not_applicable`` (e.g. the cgroup version it is not).
    """
    report = yield
    if not (IN_CI and report.skipped) or hasattr(report, "wasxfail"):
        return report
    excinfo = call.excinfo
    if excinfo is not None and isinstance(excinfo.value, NotApplicable):
        return report
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"{item.nodeid} skipped under CI=true, where nothing may be missing: {reason}"
    return report


@pytest.fixture(scope="session")
def bpf_host() -> None:
    """Root, BCC, headers and tracefs: present, or skip (outside CI) / fail (in CI)."""
    missing = [c for c in preflight.run_checks() if c.required and not c.ok]
    if missing:
        reason = "; ".join(f"{c.name}: {c.detail}" for c in missing)
        if IN_CI:
            pytest.fail(f"integration tests need BPF, and CI must have it: {reason}")
        pytest.skip(f"needs root and BPF: {reason}")
