"""Processes seen through /proc: the children a sidecar started (its Austin samplers).

Shared by the integration tests (tests/integration/test_on_demand.py) and the
benchmarks (bench/blocksnoop_bench/procs.py, storm.py).
"""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[tuple[int, str, list[str]]]:
    """(pid, comm, stat fields after comm) of every running child of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == str(pid):
            found.append((int(entry.name), stat[stat.index("(") + 1 : stat.rindex(")")], fields))
    return found
