"""The fuzz properties of ``harness/fuzz/context_reader.py``: a small fixed budget, a seed corpus.

Each ``@example`` is an input that once found a bug (its comment says which) or
sits at a bound; ``bench/fuzz.py`` runs the same properties for minutes.
"""

from __future__ import annotations

from hypothesis import given

from harness.fuzz.context_reader import (
    Corruption,
    attacks,
    check_memory,
)


@given(attacks())
def test_corrupted_memory_gives_the_right_span_or_none(
    drawn: tuple[str, list[Corruption], list[Corruption]],
) -> None:
    check_memory(drawn)
