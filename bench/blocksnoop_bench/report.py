# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright 2026 otel-blocksnoop developers
"""Markdown tables and the small statistics every benchmark reports.

Numbers are formatted here only; the benchmarks keep raw values, so the
JSON next to each table has full precision.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass(frozen=True, slots=True)
class Section:
    """One benchmark's result: a markdown body and the raw data behind it."""

    slug: str
    title: str
    body: str
    data: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        """Render as a level-2 section, so sections concatenate into one document."""
        return f"## {self.title}\n\n{self.body.rstrip()}\n"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Render a padded GitHub table, readable as plain text too; ``right`` marks numbers."""
    widths = [max([len(headers[i]), *(len(row[i]) for row in rows)]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if is_right else cell.ljust(width)
            for cell, width, is_right in zip(cells, widths, right, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if is_right else "-" * (w + 2)
            for w, is_right in zip(widths, right, strict=True)
        )
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(row) for row in rows)]) + "\n"


def num(value: float | None, digits: int = 1) -> str:
    """Format a number with thousands separators; a missing value says so."""
    return "n/a" if value is None else f"{value:,.{digits}f}"


def pct(value: float | None, digits: int = 1, *, sign: bool = False) -> str:
    """Format a percentage; ``sign`` for changes, where the direction matters."""
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}%" if sign else f"{value:.{digits}f}%"


def median(values: Sequence[float]) -> float | None:
    """Median that tolerates an empty series (a benchmark that got no samples)."""
    return statistics.median(values) if values else None


def spread(values: Sequence[float], digits: int = 0) -> str:
    """Show the lowest and highest round, so the noise is visible next to the median."""
    if not values:
        return "n/a"
    return f"{num(min(values), digits)} to {num(max(values), digits)}"
