"""Running the sidecar for real and reading what it said."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def run_raw(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run the sidecar to completion; stdout as text."""
    return subprocess.run(
        [*SIDECAR, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def run_sidecar(*args: str, timeout: float = RUN_TIMEOUT_S) -> SidecarRun:
    """Run the sidecar to completion; stdout parsed as JSON lines."""
    result = run_raw(*args, timeout=timeout)
    records = parse_json_lines(result.stdout) if "--json" in args else []
    return SidecarRun(result.returncode, records, result.stderr)


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
