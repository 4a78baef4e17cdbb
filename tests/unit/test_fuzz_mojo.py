"""Austin's MOJO stream, fuzzed: whatever bytes arrive, the decoder stays honest.

A sample's thread id is the one its thread string spells in hex, or 0.
``bench/fuzz.py`` runs the same properties for minutes.
"""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from otel_blocksnoop.stacks import mojo
from otel_blocksnoop.stacks.mojo import MojoDecoder
from tests.unit.fuzzing import Target


def varint(value: int) -> bytes:
    """Austin's integer encoding: 6 bits, a sign bit and a "more" bit, then 7 bits a byte."""
    negative, value = value < 0, abs(value)
    first = value & 0x3F | (0x40 if negative else 0)
    value >>= 6
    out = bytearray([first | (0x80 if value else 0)])
    while value:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
    return bytes(out)


def text(value: str) -> bytes:
    return value.encode() + b"\0"


# The decoder's event ids, as the stream spells them.
STACK = mojo._STACK
METRIC_TIME = mojo._METRIC_TIME

HEADER = b"MOJ" + varint(3)

strings = st.one_of(
    st.text(max_size=20).map(lambda s: s.replace("\0", "")),
    st.sampled_from(["3b25", "3B25", "0", "-5", "1_0", " 12", "+7", "ffffffffff", "<module>"]),
    st.sampled_from(["/app/main.py", "<frozen runpy>", "libc.so.6", "x" * 5000]),
)


def expected_tid(thread: str) -> int:
    return int(thread, 16) if re.fullmatch(r"[0-9a-fA-F]{1,8}", thread) else 0


def thread_ids(thread: str) -> None:
    """A sample's tid is what its thread string spells in hex (a u32), never another number."""
    data = HEADER + bytes([STACK]) + varint(1) + varint(0) + text(thread)
    data += bytes([METRIC_TIME]) + varint(10)
    decoder = MojoDecoder()
    samples = list(decoder.decode_all(data))
    assert [s.tid for s in samples] == [expected_tid(thread)]


TARGETS: dict[str, Target] = {
    "mojo thread id": Target(strings, thread_ids),
}


@given(strings)
@example("1_0")
@example("-5")
@example(" 12")
@example("ffffffffff")
def test_a_thread_id_is_the_hex_of_its_thread_string_or_zero(thread: str) -> None:
    thread_ids(thread)
