"""What the report shows, computed from the recorded blocks; the page only draws it.

Everything here is plain data (numbers, strings, lists, dicts) that the
template writes into the page as JSON or as table rows.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from otel_blocksnoop.export.names import DURATION_BUCKETS_S
from otel_blocksnoop.export.report.recording import CodeFrame, RecordedBlock

NO_STACK: Final = "(no Python stack)"
"""The frame blocked time with no stack is drawn under, so the graph's total is all of it."""
NOT_SAMPLED: Final = "(not sampled)"
"""A block's time that none of its call sites' samples stands for."""
ROOT: Final = "all blocks"
TOP_CALL_SITES: Final = 25
TIMELINE_MAX: Final = 5_000
"""Bars drawn in the timeline: the longest blocks, beyond which an SVG page gets slow."""


@dataclass(frozen=True, slots=True)
class WeightedStack:
    """A Python stack (outermost first) and the milliseconds of blocked time it stands for."""

    frames: tuple[str, ...]
    ms: float


def frame_name(frame: CodeFrame) -> str:
    """A flame-graph frame: the function and its file, so lines of one function merge."""
    return f"{frame.function} ({frame.file.rsplit('/', 1)[-1]})"


def weighted_stacks(block: RecordedBlock) -> list[WeightedStack]:
    """Where a block's time went, as stacks whose weights add up to its duration.

    A block whose record lists its call sites gives each its share: under
    the frames of its dominant stack that call its dominant call site (the
    handler all of them run in), the call site itself; the time no sample
    stands for goes under those frames as NOT_SAMPLED. A block without call
    sites is its dominant stack, whole.
    """
    frames = tuple(map(frame_name, block.stack)) or (NO_STACK,)
    if not block.call_sites:
        return [WeightedStack(frames, block.duration_ms)]
    outer = frames[: _call_site_depth(block)]
    stacks = [
        WeightedStack((*outer, frame_name(site.frame)), site.share_ms) for site in block.call_sites
    ]
    rest = block.duration_ms - sum(site.share_ms for site in block.call_sites)
    if rest > 0:
        stacks.append(WeightedStack((*outer, NOT_SAMPLED), rest))
    return stacks


def _call_site_depth(block: RecordedBlock) -> int:
    """How many of the dominant stack's frames are outside its call site."""
    for depth in range(len(block.stack) - 1, -1, -1):
        if block.stack[depth] == block.call_site:
            return depth
    return max(0, len(block.stack) - 1)


def flame_tree(blocks: Iterable[RecordedBlock]) -> dict[str, Any]:
    """The ``{name, value, children}`` tree d3-flame-graph draws; values are milliseconds."""
    root: dict[str, Any] = {"name": ROOT, "value": 0.0, "children": {}}
    for block in blocks:
        for stack in weighted_stacks(block):
            root["value"] += stack.ms
            node = root
            for name in stack.frames:
                child = node["children"].setdefault(
                    name, {"name": name, "value": 0.0, "children": {}}
                )
                child["value"] += stack.ms
                node = child
    return _as_lists(root)


def _as_lists(node: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": node["name"],
        "value": round(node["value"], 3),
        "children": [_as_lists(child) for child in node["children"].values()],
    }


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of values sorted ascending (none: 0)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(round(fraction * len(sorted_values), 9)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class CallSiteRow:
    """One line of the table: a call site and the blocks made there."""

    function: str
    location: str  # file:line, or why there is none
    count: int
    total_ms: float
    p50_ms: float
    p99_ms: float
    causes: tuple[tuple[str, int], ...]  # most frequent first


def call_site_rows(
    blocks: Iterable[RecordedBlock], limit: int = TOP_CALL_SITES
) -> list[CallSiteRow]:
    """The call sites that cost most blocked time, with how often and why they blocked.

    A block that lists its call sites counts once for each, with its share
    and its cause; one that does not, for its dominant call site, whole.
    """
    durations: dict[CodeFrame | None, list[float]] = defaultdict(list)
    causes: dict[CodeFrame | None, Counter[str]] = defaultdict(Counter)
    for block in blocks:
        parts: list[tuple[CodeFrame | None, float, str]] = [
            (site.frame, site.share_ms, site.cause_text) for site in block.call_sites
        ]
        for site, ms, cause in parts or [(block.call_site, block.duration_ms, block.cause_text)]:
            durations[site].append(ms)
            causes[site][cause] += 1
    rows = []
    for site, values in durations.items():
        values.sort()
        rows.append(
            CallSiteRow(
                function=site.function if site else NO_STACK,
                location=f"{site.file}:{site.line}" if site else "no stack was sampled",
                count=len(values),
                total_ms=round(sum(values), 3),
                p50_ms=percentile(values, 0.5),
                p99_ms=percentile(values, 0.99),
                causes=tuple(causes[site].most_common()),
            )
        )
    rows.sort(key=lambda row: (-row.total_ms, row.function))
    return rows[:limit]


@dataclass(frozen=True, slots=True)
class Bucket:
    label: str  # "20-50 ms"
    count: int


def _edge(seconds: float) -> str:
    return f"{seconds:g} s" if seconds >= 1 else f"{seconds * 1000:g} ms"


def histogram(blocks: Iterable[RecordedBlock]) -> list[Bucket]:
    """Blocked loop iterations by duration, in the buckets of the exported histogram.

    One count per iteration, as the ``blocksnoop.eventloop.block.duration``
    metric: the segments of one iteration count once, at its whole duration.
    Empty buckets below the first and above the last used one are left out.
    """
    iterations = {block.iteration_id: block.iteration_ms for block in blocks}
    edges = [0.0, *DURATION_BUCKETS_S]
    counts = [0] * (len(edges))
    for ms in iterations.values():
        seconds = ms / 1000
        index = sum(1 for edge in DURATION_BUCKETS_S if seconds > edge)
        counts[index] += 1
    labels = [f"{_edge(low)}-{_edge(high)}" for low, high in itertools.pairwise(edges)]
    labels.append(f"> {_edge(edges[-1])}")
    used = [index for index, count in enumerate(counts) if count]
    if not used:
        return []
    return [Bucket(labels[i], counts[i]) for i in range(used[0], used[-1] + 1)]


def timeline(blocks: Sequence[RecordedBlock], limit: int = TIMELINE_MAX) -> list[dict[str, Any]]:
    """One bar per block (the longest ``limit``), with what its tooltip says."""
    shown = sorted(blocks, key=lambda block: -block.duration_ms)[:limit]
    shown.sort(key=lambda block: block.start_unix_ns)
    return [
        {
            "lane": lane_name(block),
            "start": block.start_unix_ns / 1e6,  # ms since the epoch: what JS dates take
            "end": block.end_unix_ns / 1e6,
            "ms": round(block.duration_ms, 3),
            "cause": block.cause,
            "cause_text": block.cause_text,
            "task": block.task,
            "call_site": block.call_site.label if block.call_site else None,
            "trace_id": block.trace_id,
            "delayed_tasks": block.delayed_tasks,
            "delayed_requests": block.delayed_requests,
            "in_progress": block.in_progress,
        }
        for block in shown
    ]


def lane_name(block: RecordedBlock) -> str:
    """A loop thread, as the timeline labels its row."""
    name = f" {block.thread_name}" if block.thread_name else ""
    return f"{block.pid}/{block.tid}{name}"


def iterations(blocks: Iterable[RecordedBlock]) -> int:
    """Blocked loop iterations: the segments of one count once."""
    return len({block.iteration_id for block in blocks})
