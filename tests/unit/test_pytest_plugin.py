from __future__ import annotations

from typing import Any

from otel_blocksnoop.pytest_plugin import BlockJudge, SeenBlock, Watcher

IN_A_CALLBACK = [
    {"function": "<module>", "file": "/app/run.py", "line": 1},
    {"function": "Runner.run", "file": "/usr/lib/python3.11/asyncio/runners.py", "line": 118},
    {"function": "BaseEventLoop._run_once", "file": "/usr/lib/python3.11/asyncio/base_events.py",
     "line": 1922},
    {"function": "test_x", "file": "/tests/test_x.py", "line": 9},
]  # fmt: skip
BETWEEN_LOOPS = [
    {"function": "<module>", "file": "/venv/bin/pytest", "line": 8},
    {"function": "pytest_pyfunc_call", "file": "/venv/_pytest/python.py", "line": 166},
    {"function": "test_sync", "file": "/tests/test_x.py", "line": 20},
]


def seen(end_ms: float, ms: float, stack: list[dict[str, Any]], iteration: str = "") -> SeenBlock:
    return SeenBlock.of(
        {
            "end_monotonic_ns": int(end_ms * 1e6),
            "duration_ms": ms,
            "iteration": {"id": iteration or f"it-{end_ms}", "duration_ms": ms},
            "stack": stack,
            "call_site": stack[-1] if stack else None,
        }
    )


def judge() -> BlockJudge:
    return BlockJudge(Watcher(100, 1), threshold_ms=100)


def test_a_block_belongs_to_the_window_it_ended_in_end_included_start_excluded() -> None:
    blocks = [seen(1000, 150, IN_A_CALLBACK), seen(2000, 150, IN_A_CALLBACK)]
    found = judge()._ended_in(blocks, start_ns=int(1000e6), end_ns=int(2000e6))  # noqa: SLF001
    assert [b.end_ns for b in found] == [int(2000e6)]


def test_blocks_under_the_limit_and_stretches_with_no_loop_running_fail_nothing() -> None:
    blocks = [seen(10, 99.9, IN_A_CALLBACK), seen(20, 400, BETWEEN_LOOPS), seen(30, 100, [])]
    found = judge()._ended_in(blocks, start_ns=0, end_ns=int(1e9))  # noqa: SLF001
    # (a block with no stack sampled cannot be told apart: it counts)
    assert [b.end_ns for b in found] == [int(30e6)]


def test_an_iterations_segments_fail_once_and_a_block_is_judged_in_one_window_only() -> None:
    parts = [seen(50, 120, IN_A_CALLBACK, "it-1"), seen(50, 120, IN_A_CALLBACK, "it-1")]
    judging = judge()
    assert len(judging._ended_in(parts, start_ns=0, end_ns=int(1e9))) == 1  # noqa: SLF001
    assert judging._ended_in(parts, start_ns=0, end_ns=int(1e9)) == []  # noqa: SLF001
