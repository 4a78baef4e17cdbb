"""Which tasks a block held up: the blocked task's awaited-by chain, on CPython 3.14+.

The target (harness/targets/awaited.py) blocks its loop in a task named
"blocked" that named tasks await in one of five ways (``await task``,
``gather``, a TaskGroup, many awaiting one, a long chain); the reader, from
this process, must give exactly their names, on Debian sid's 3.14 and 3.15,
under asyncio and uvloop (whose tasks are asyncio's C Task too). Before 3.14
the interpreter keeps no such chain: the attribute is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from harness import TARGETS
from harness.interpreters import SID_MINORS
from harness.otlp import OtlpReceiver, attributes
from otel_blocksnoop.process.context import ContextReader
from otel_blocksnoop.process.context.tasks import MAX_AWAITERS
from tests.helpers import SIDECAR, WAIT_S, parse_json_lines
from tests.integration.conftest import TargetPython, sid_python, target_python
from tests.integration.test_export import otlp_env

pytestmark = pytest.mark.integration

AWAITED = TARGETS / "awaited.py"
SID_PYTHONS = [f"py3.{m}" for m in SID_MINORS]
WAITERS = [f"waiter-{i:02}" for i in range(12)]

# Who awaits the blocked task, nearest first (names of one level sorted), and how many more.
EXPECTED: dict[str, tuple[tuple[str, ...], int]] = {
    "await": (("request-1", "root"), 0),
    "gather": (("request-2", "root"), 0),
    "taskgroup": (("request-3", "root"), 0),
    # root awaits hop-1, which awaits hop-2 ... hop-9, which awaits it: eight names, and
    # hop-1 found as hop-2's awaiter, past the cap
    "chain": (tuple(f"hop-{n}" for n in range(9, 1, -1)), 1),
}


@contextmanager
def blocked_target(
    tmp_path: Path, python: TargetPython, shape: str, loop: str
) -> Iterator[dict[str, Any]]:
    """The target, its loop blocked in the task "blocked": its pid and the loop's tid."""
    fifo = tmp_path / "ready.fifo"
    os.mkfifo(fifo)
    extra = ["--uvloop"] if loop == "uvloop" else []
    process = subprocess.Popen(
        python.run(AWAITED, "--ready", str(fifo), "--shape", shape, *extra),
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        with fifo.open() as ready:
            info: dict[str, Any] = json.loads(ready.readline())
        yield info
    finally:
        assert process.stdin is not None
        process.stdin.write("stop\n")
        process.stdin.close()
        process.wait(timeout=30)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("shape", sorted(EXPECTED))
@pytest.mark.parametrize("name", SID_PYTHONS)
def test_the_tasks_awaiting_the_blocked_one_are_named(
    name: str, shape: str, loop: str, tmp_path: Path
) -> None:
    # GIVEN a loop blocked in a task that named tasks await (one of the shapes)
    with blocked_target(tmp_path, sid_python(name), shape, loop) as target:
        # WHEN the reader reads the loop thread from outside
        reader = ContextReader(target["pid"])
        task = reader.thread_context(target["tid"]).task

        # THEN the running task is the blocked one, and its awaiters are named exactly
        assert task is not None
        assert task.name == "blocked"
        assert (task.awaited_by, task.awaited_by_more) == EXPECTED[shape]
        assert reader.awaited_by_unsure == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("name", SID_PYTHONS)
def test_many_awaiters_are_named_up_to_the_cap_and_the_rest_counted(
    name: str, loop: str, tmp_path: Path
) -> None:
    # GIVEN a blocked task that twelve tasks await (a set, with one removed entry: a
    # cancelled thirteenth), themselves gathered by "root"
    with blocked_target(tmp_path, sid_python(name), "shared", loop) as target:
        # WHEN the reader reads the loop thread twice
        reader = ContextReader(target["pid"])
        first = reader.thread_context(target["tid"]).task
        second = reader.thread_context(target["tid"]).task

    # THEN MAX_AWAITERS of the twelve are named, sorted, never the cancelled one
    assert first is not None
    assert first.awaited_by is not None
    assert len(first.awaited_by) == MAX_AWAITERS
    assert list(first.awaited_by) == sorted(first.awaited_by)
    assert set(first.awaited_by) <= set(WAITERS)
    # AND the other four, and root above them, are counted
    assert first.awaited_by_more == len(WAITERS) - MAX_AWAITERS + 1
    # AND each read of the same block says the same
    assert second == first
    assert reader.awaited_by_unsure == 0


@pytest.mark.parametrize("name", ["py3.13", "py3.11"])
def test_before_3_14_the_chain_is_not_read(name: str, tmp_path: Path) -> None:
    # GIVEN the same target on an interpreter that keeps no awaited-by chain
    with blocked_target(tmp_path, target_python(name, web=False), "gather", "asyncio") as target:
        # WHEN the reader reads the loop thread
        task = ContextReader(target["pid"]).thread_context(target["tid"]).task

    # THEN the task is named, and its awaiters are not known (not "none")
    assert task is not None
    assert task.name == "blocked"
    assert task.awaited_by is None


@pytest.mark.usefixtures("bpf_host")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_block_span_says_which_tasks_it_held_up(loop: str) -> None:
    # GIVEN the sidecar launching a 3.14 app whose task, run in a TaskGroup of
    # "request-3", blocks the loop for 300 ms
    python = sid_python("py3.14")
    extra = ["--uvloop"] if loop == "uvloop" else []
    app = python.run(AWAITED, "--shape", "taskgroup", "--block-s", "0.3", *extra)
    with OtlpReceiver() as receiver:
        result = subprocess.run(
            [*SIDECAR, "--json", "-q", "-t", "50", "--", *app],
            capture_output=True, text=True, check=False, timeout=WAIT_S,
            env=otlp_env(receiver.http_endpoint, "http/protobuf"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        spans = receiver.wait_for_spans(
            lambda got: any(s.span.name == "eventloop.block" for s in got)
        )

    # THEN its span names the running task and those awaiting it
    (span,) = [s.span for s in spans if s.span.name == "eventloop.block"]
    found = attributes(span.attributes)
    assert found["blocksnoop.task.name"] == "blocked"
    assert found["blocksnoop.task.awaited_by"] == ["request-3", "root"]
    assert "blocksnoop.task.awaited_by.more" not in found
    # AND so does its JSON line
    (record,) = [r for r in parse_json_lines(result.stdout) if r["type"] == "block"]
    assert (record["task"], record["awaited_by"], record["awaited_by_more"]) == (
        "blocked",
        ["request-3", "root"],
        0,
    )
