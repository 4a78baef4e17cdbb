"""The fuzz property of ``harness/fuzz/context_reader.py``: a small fixed budget, a seed corpus.

Each ``@example`` sits at a bound (here: what the reader keeps between reads
of two threads); ``bench/fuzz.py`` runs the same property for minutes.
"""

from __future__ import annotations

from hypothesis import example, given

from harness.forged_heap import TID
from harness.fuzz.context_reader import Step, attacks, check_memory


@given(attacks())
@example(("3.12", [(TID, []), (TID + 1, []), (TID, []), (TID + 1, [])]))
@example(("3.9", [(TID + 1, []), (TID, [])]))
def test_corrupted_memory_gives_each_thread_its_span_or_none(drawn: tuple[str, list[Step]]) -> None:
    check_memory(drawn)
