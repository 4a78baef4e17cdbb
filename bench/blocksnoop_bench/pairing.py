# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Pairing a tool's reports with the blocks an app timed itself, by overlap in time.

Both sides are on CLOCK_MONOTONIC, so nothing depends on order or count: a
missed or extra report shifts nothing. Shared by every section that scores
reports against an app's own truth.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    """A time interval on CLOCK_MONOTONIC, the clock both sides report in."""

    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        """Length in ns; kept integral so sub-microsecond errors are not rounded away."""
        return self.end_ns - self.start_ns

    def overlaps(self, other: Span) -> bool:
        """Pair by overlap, not by order: a missed or extra report shifts nothing."""
        return self.start_ns < other.end_ns and other.start_ns < self.end_ns


@dataclass(frozen=True, slots=True)
class Injected:
    """One block as the app timed it."""

    kind: str
    span: Span


@dataclass(frozen=True, slots=True)
class Pairing:
    """Reports and injected blocks of one run, paired by overlap."""

    hits: dict[int, list[int]]  # injected index -> indexes of reports overlapping it
    false_positives: list[int]  # reports overlapping no injected block
    merged: int  # reports overlapping more than one injected block

    def singles(
        self, injected: list[Injected], reports: list[Span], kind: str
    ) -> list[tuple[Span, Span]]:
        """Return (injected, reported) spans of the blocks reported exactly once.

        A split or merged report has no single length to compare, and is
        counted on its own instead.
        """
        return [
            (injected[i].span, reports[found[0]])
            for i, found in self.hits.items()
            if injected[i].kind == kind and len(found) == 1
        ]


def pair(injected: list[Injected], reports: list[Span]) -> Pairing:
    """Pair every report with the injected blocks it overlaps (quadratic; runs are small)."""
    hits: dict[int, list[int]] = {}
    false_positives: list[int] = []
    merged = 0
    for r, report in enumerate(reports):
        overlapping = [i for i, block in enumerate(injected) if block.span.overlaps(report)]
        if not overlapping:
            false_positives.append(r)
        if len(overlapping) > 1:
            merged += 1
        for i in overlapping:
            hits.setdefault(i, []).append(r)
    return Pairing(hits=hits, false_positives=false_positives, merged=merged)
