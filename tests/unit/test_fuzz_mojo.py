"""The fuzz properties of ``harness/fuzz/mojo.py``: a small fixed budget, a seed corpus.

Each ``@example`` is an input that once found a bug (its comment says which) or
sits at a bound; ``bench/fuzz.py`` runs the same properties for minutes.
"""

from __future__ import annotations

from hypothesis import example, given

from harness.fuzz.mojo import (
    FRAME,
    FRAME_REF,
    HEADER,
    METRIC_TIME,
    STACK,
    STACK_REPEAT,
    STRING,
    check_bounded,
    check_stream,
    cuts,
    streams,
    strings,
    text,
    thread_ids,
    varint,
)
from otel_blocksnoop.stacks import mojo
from otel_blocksnoop.stacks.mojo import MojoDecoder


@given(streams(), cuts)
@example(HEADER + bytes([STRING]) + varint(1) + b"x" * 300_000, [])
@example(HEADER + bytes([METRIC_TIME]) + b"\xff" * 200_000 + b"\x01", [7])
@example(  # a frame at line 2**63: an OTLP export of it failed ("Value out of range")
    HEADER
    + bytes([STACK, 1, 0])
    + text("a")
    + bytes([STRING, 2])
    + text("/app.py")
    + bytes([FRAME, 5, 2, 2])
    + varint(2**63)
    + bytes([0, 0, 0, FRAME_REF, 5, METRIC_TIME])
    + varint(-7),
    [],
)
def test_any_stream_is_decoded_or_refused_within_bounds(data: bytes, at: list[int]) -> None:
    check_stream(data, at)


@given(strings)
@example("1_0")
@example("-5")
@example(" 12")
@example("ffffffffff")
def test_a_thread_id_is_the_hex_of_its_thread_string_or_zero(thread: str) -> None:
    thread_ids(thread)


def test_a_stream_that_defines_endless_strings_keeps_a_bounded_table() -> None:
    # GIVEN a stream that defines many more strings and frames than any app has
    count = mojo.MAX_STRINGS + 1000
    parts = [HEADER]
    for key in range(count):
        parts.append(bytes([STRING]) + varint(key) + text(f"s{key}"))
        parts.append(bytes([FRAME]) + b"".join(varint(f) for f in (key, key, key, 1, 0, 0, 0)))
    decoder = MojoDecoder()

    # WHEN it is decoded
    decoder.feed(b"".join(parts))

    # THEN the tables stop at their caps
    check_bounded(decoder)
    assert len(decoder._strings) == mojo.MAX_STRINGS


def test_a_stack_that_repeats_itself_forever_stays_capped() -> None:
    # GIVEN one thread whose every sample repeats the last one and adds a frame
    stack = bytes([STACK]) + varint(1) + varint(0) + text("a")
    frame = bytes([FRAME]) + b"".join(varint(f) for f in (5, 2, 2, 3, 0, 0, 0))
    parts = [HEADER, stack, bytes([STRING]) + varint(2) + text("/app.py"), frame]
    sample = stack + bytes([STACK_REPEAT, FRAME_REF]) + varint(5)
    parts.extend([sample] * (mojo.MAX_STACK + 500))
    decoder = MojoDecoder()

    # WHEN it is decoded
    samples = list(decoder.decode_all(b"".join(parts)))

    # THEN no stack is deeper than the cap, and the innermost frames are those kept
    assert max(len(s.frames) for s in samples) == mojo.MAX_STACK
    assert samples[-1].frames[-1].file == "/app.py"
