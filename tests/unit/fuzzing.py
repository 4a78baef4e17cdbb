"""What the fuzz tests share with ``bench/fuzz.py``: a property and what it is fed.

Each ``tests/unit/test_fuzz_*.py`` module lists its properties in ``TARGETS``;
its tests run each on a small fixed budget (the ``unit`` profile, in
``tests/unit/conftest.py``) plus a committed seed corpus of ``@example``
inputs, and the bench runs the same ones for minutes.
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
