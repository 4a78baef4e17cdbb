"""The fuzz properties of ``harness/fuzz/kernel.py``: a small fixed budget, a seed corpus.

Each ``@example`` is an input that once found a bug (its comment says which) or
sits at a bound; ``bench/fuzz.py`` runs the same properties for minutes.
"""

from __future__ import annotations

from hypothesis import example, given

from harness.fuzz.kernel import (
    blocks,
    check_block,
    check_segments,
    check_thread_state,
    check_trigger,
    consistent_sightings,
    thread_states,
    triggers,
)
from otel_blocksnoop.kernel.layout import SegmentsC


@given(blocks)
def test_any_block_record_decodes_naming_only_its_own_contexts(drawn: tuple[bytes, bool]) -> None:
    check_block(drawn)


@given(triggers)
@example(bytes(24) + (9).to_bytes(4, "little"))  # a reason this side does not know: KeyError
def test_any_trigger_record_decodes(raw: bytes) -> None:
    check_trigger(raw)


@given(thread_states)
def test_any_thread_state_gives_an_activity(drawn: tuple[bytes, int, int]) -> None:
    check_thread_state(drawn)


@given(consistent_sightings())
def test_consistent_sightings_give_ordered_segments_around_them(
    drawn: tuple[SegmentsC, int, int],
) -> None:
    check_segments(drawn)
