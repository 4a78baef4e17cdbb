"""Shared test helpers: running the sidecar for real and reading what it said."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otel_blocksnoop import preflight

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "tests" / "targets"
BLOCKER = TARGETS / "blocker.py"
SIDECAR = [sys.executable, "-m", "otel_blocksnoop"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
RUN_TIMEOUT_S = 60


@dataclass(frozen=True)
class SidecarRun:
    """What one run of the sidecar printed and returned."""

    returncode: int
    records: list[dict[str, Any]]
    stderr: str

    @property
    def blocks(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == "block"]

    @property
    def summary(self) -> dict[str, Any]:
        (summary,) = [r for r in self.records if r["type"] == "summary"]
        return summary


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_sidecar(*args: str, timeout: float = RUN_TIMEOUT_S, **kwargs: Any) -> SidecarRun:
    result = subprocess.run(
        [*SIDECAR, *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    return SidecarRun(result.returncode, parse_json_lines(result.stdout), result.stderr)


def truth(path: Path) -> list[dict[str, Any]]:
    """The blocks the target app timed itself."""
    return parse_json_lines(path.read_text()) if path.exists() else []


def matching_block(blocks: list[dict[str, Any]], true_block: dict[str, Any]) -> dict[str, Any]:
    """The reported block on the same thread that overlaps the true one."""
    found = [
        b
        for b in blocks
        if b["tid"] == true_block["tid"]
        and b["start_monotonic_ns"] < true_block["end_ns"]
        and b["end_monotonic_ns"] > true_block["start_ns"]
    ]
    assert len(found) == 1, f"expected one report for {true_block}, got {found}"
    return found[0]


@pytest.fixture(scope="session")
def bpf_host() -> None:
    """Root, BCC, headers and tracefs: present, or skip (outside CI) / fail (in CI)."""
    missing = [c for c in preflight.run_checks()[:4] if not c.ok]
    if missing:
        reason = "; ".join(f"{c.name}: {c.detail}" for c in missing)
        if IN_CI:
            pytest.fail(f"integration tests need BPF, and CI must have it: {reason}")
        pytest.skip(f"needs root and BPF: {reason}")


@pytest.fixture
def ready_fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ready.fifo"
    os.mkfifo(path)
    yield path
