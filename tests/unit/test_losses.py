"""The bounded mapping and the loss counters every stage shares."""

from __future__ import annotations

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import Loss
from otel_blocksnoop.losses import Losses


def test_a_full_bounded_dict_drops_its_oldest_entry_and_says_which() -> None:
    # GIVEN a table of two entries that reports what it drops
    dropped: list[tuple[str, int]] = []
    table: BoundedDict[str, int] = BoundedDict(2, on_drop=lambda k, v: dropped.append((k, v)))
    table["a"] = 1
    table["b"] = 2
    table["a"] = 10  # an update makes it the newest

    # WHEN a third key comes in
    table["c"] = 3

    # THEN the oldest key went, and was reported with its value
    assert dict(table) == {"a": 10, "c": 3}
    assert dropped == [("b", 2)]


def test_losses_add_up_and_kernel_totals_never_go_back() -> None:
    losses = Losses()
    losses.add(Loss.CONTEXT_LATE)
    losses.add(Loss.CONTEXT_LATE, 2)
    losses.add(Loss.CONTEXT_LATE, 0)
    losses.observe(Loss.KERNEL_EVENTS, 7)
    losses.observe(Loss.KERNEL_EVENTS, 5)  # an older read of the same kernel counter
    snapshot = dict(losses.snapshot())
    assert snapshot[Loss.CONTEXT_LATE] == 3
    assert snapshot[Loss.KERNEL_EVENTS] == 7
    assert set(snapshot) == set(Loss)
