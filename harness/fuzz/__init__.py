"""Fuzz properties of every parser of outside input, shared by the unit tests and the bench.

One module per source: ``mojo`` (Austin's stream), ``austin_where`` (its
``-w`` dump), ``context_reader`` (the target's memory), ``elf`` (its
interpreter's file), ``proc`` (/proc files), ``kernel`` (ring-buffer
records) and ``otel_env`` (the OTEL_* environment).
Each lists its properties in ``TARGETS``: a Hypothesis strategy and a check
that raises when the property does not hold. ``tests/unit/test_fuzz_*.py``
run each on a small fixed budget (the ``unit`` profile,
``tests/unit/conftest.py``) with a committed seed corpus of ``@example``
inputs; ``bench/fuzz.py`` runs them for minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis.strategies import SearchStrategy


@dataclass(frozen=True, slots=True)
class Target:
    """A parser's property: ``check`` raises AssertionError (or worse) when it does not hold."""

    strategy: SearchStrategy[Any]
    check: Callable[[Any], None]
