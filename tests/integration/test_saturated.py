"""Right answers on a machine whose every CPU is busy with other work.

On a saturated machine the loop thread waits for a CPU inside its blocks,
the sidecar's own reads and Austin's samples come late, and evidence may
land after its block: it must then be dropped, never attached to another
block. One busy process per CPU runs for each test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import BLOCKER, matching_block, run_sidecar, truth
from tests.integration import test_burst as bursts
from tests.integration.conftest import target_python
from tests.integration.test_stacks import CALL_SITES
from tests.integration.test_trace_link import hex_ids

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

WEB_INTERPRETER = "py3.12"


@pytest.fixture
def saturated() -> Iterator[None]:
    """Every CPU busy with a process of its own for the test's length."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@pytest.mark.usefixtures("saturated")
def test_each_kind_of_block_names_the_blocking_call_on_a_saturated_machine(
    tmp_path: Path,
) -> None:
    # GIVEN an app blocking seven known ways, ~120 ms each, all CPUs busy elsewhere
    out = tmp_path / "truth.jsonl"
    target = [sys.executable, str(BLOCKER), "all", "--delay", "1", "--out", str(out)]
    run = run_sidecar("--json", "-q", "-t", "50", "--", *target)
    assert run.returncode == 0, run.stderr
    # THEN each block still names the code that blocked it, down to the line
    expected = truth(out)
    assert [r["scenario"] for r in expected] == list(CALL_SITES)
    for true_block in expected:
        block = matching_block(run.blocks, true_block)
        function, snippet = CALL_SITES[true_block["scenario"]]
        site = block["call_site"]
        assert site is not None, (true_block["scenario"], "no stack")
        assert site["function"].endswith(function), (true_block["scenario"], site)
        line = Path(site["file"]).read_text().splitlines()[site["line"] - 1]
        assert snippet in line, (true_block["scenario"], line)


@pytest.mark.usefixtures("saturated")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_requests_blocking_back_to_back_keep_their_own_parents_on_a_saturated_machine(
    tmp_path: Path, loop: str
) -> None:
    # GIVEN N requests whose handlers block one after another in one loop
    # iteration (N = 2, 4, 8; 4 on uvloop), all CPUs busy elsewhere
    python = target_python(WEB_INTERPRETER, web=True)
    run = bursts.run_bursts(python, loop, tmp_path / "truth.jsonl")
    for size in bursts.BURSTS[loop]:
        burst = run.burst(size)
        # THEN no block is in another request's trace
        bursts.test_no_block_in_the_iteration_has_a_wrong_parent(burst)
        # AND most requests still get their own block under their own server span (a
        # request whose sightings a CPU wait hid is left without a parent, not misplaced)
        linked = [
            true_block
            for true_block in burst.truth
            if burst.record_for(true_block)["parent_span_id"] == hex_ids(true_block)[1]
        ]
        assert len(linked) * 2 >= size, (size, len(linked))
