"""The fuzz property of ``harness/fuzz/austin_where.py``: a small fixed budget, a seed corpus.

Each ``@example`` is an input that once found a bug (its comment says which) or
sits at a bound; ``bench/fuzz.py`` runs the same property for minutes.
"""

from __future__ import annotations

from hypothesis import example, given

from harness.fuzz.austin_where import Stacks, check_where, dumps
from otel_blocksnoop.events import Frame

SPOOF = Frame("main", "/app/Process 1 Thread 0:4242.py", 3)


@given(dumps)
@example((7, {100: (SPOOF, Frame("work", "/app/main.py", 9))}, True))  # frames went to tid 4242
@example((7, {100: (SPOOF,)}, False))
def test_a_dump_reads_back_as_the_stacks_it_shows(drawn: tuple[int, Stacks, bool]) -> None:
    check_where(drawn)
