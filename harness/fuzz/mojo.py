"""Austin's MOJO stream, fuzzed: whatever bytes arrive, the decoder stays bounded and honest.

Streams are built from MOJO events with random fields (keys from a small
range so that references hit definitions, integers from tiny to far past 64
bits), sometimes with bytes flipped, and fed in random chunks. Whatever
comes in, only ``MojoError`` may leave the decoder; every table, stack and
pending buffer stays under its cap; a sample's thread id is the one its
thread string spells in hex, or 0; and the chunking never changes the
result.

The unit tests (``tests/unit/test_fuzz_*.py``) run these properties on a
small fixed budget with their seed corpus; ``bench/fuzz.py`` for minutes.
"""

from __future__ import annotations

import itertools
import re

from hypothesis import strategies as st

from harness.fuzz import Target
from otel_blocksnoop.stacks import mojo
from otel_blocksnoop.stacks.mojo import MojoDecoder, MojoError, RawSample


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


# The decoder's event ids and string cut, as the stream spells them.
STACK = mojo._STACK
FRAME = mojo._FRAME
FRAME_REF = mojo._FRAME_REF
METRIC_TIME = mojo._METRIC_TIME
METRIC_MEMORY = mojo._METRIC_MEMORY
STRING_REF = mojo._STRING_REF
STRING = mojo._STRING
METADATA = mojo._METADATA
TASK_STACK = mojo._TASK_STACK
TASK_WAITER = mojo._TASK_WAITER
TASK_RUNNING = mojo._TASK_RUNNING
FRAME_KERNEL = mojo._FRAME_KERNEL
STACK_REPEAT = mojo._STACK_REPEAT
MAX_STRING = mojo._MAX_STRING

HEADER = b"MOJ" + varint(3)

keys = st.integers(0, 8)
numbers = st.one_of(
    st.integers(-5, 300),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63)]),
)
strings = st.one_of(
    st.text(max_size=20).map(lambda s: s.replace("\0", "")),
    st.sampled_from(["3b25", "3B25", "0", "-5", "1_0", " 12", "+7", "ffffffffff", "<module>"]),
    st.sampled_from(["/app/main.py", "<frozen runpy>", "libc.so.6", "x" * 5000]),
)


@st.composite
def events(draw: st.DrawFn) -> bytes:  # noqa: C901, PLR0911 (one branch per event kind)
    kind = draw(st.integers(0, 17))
    if kind == STACK:
        pid, iid, thread = draw(numbers), draw(numbers), draw(strings)
        return bytes([kind]) + varint(pid) + varint(iid) + text(thread)
    if kind == FRAME:
        fields = [draw(keys), draw(keys), draw(keys), draw(numbers), 0, 0, 0]
        return bytes([kind]) + b"".join(varint(f) for f in fields)
    if kind in (FRAME_REF, METRIC_TIME, METRIC_MEMORY, STRING_REF):
        return bytes([kind]) + varint(draw(st.one_of(keys, numbers)))
    if kind == STRING:
        return bytes([kind]) + varint(draw(keys)) + text(draw(strings))
    if kind == METADATA:
        return bytes([kind]) + text(draw(strings)) + text(draw(strings))
    if kind == TASK_STACK:
        return bytes([kind]) + varint(draw(keys)) + varint(draw(keys)) + varint(draw(numbers))
    if kind == TASK_WAITER:
        return bytes([kind]) + varint(draw(keys)) + varint(draw(keys))
    if kind == TASK_RUNNING:
        return bytes([kind]) + varint(draw(keys))
    if kind == FRAME_KERNEL:
        return bytes([kind]) + text(draw(strings))
    if kind == 17:
        return draw(st.binary(max_size=16))
    return bytes([kind])  # no payload: idle, gc, stack repeat, invalid frame; or unknown


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    body = bytearray(HEADER + b"".join(draw(st.lists(events(), max_size=60))))
    for _ in range(draw(st.integers(0, 3))):  # flip a few bytes past the header
        if len(body) > len(HEADER):
            at = draw(st.integers(len(HEADER), len(body) - 1))
            body[at] = draw(st.integers(0, 255))
    return bytes(body)


cuts = st.lists(st.integers(0, 4000), max_size=8).map(sorted)

PENDING_BOUND = mojo.MAX_PENDING_STRING + 64
"""The most a decoder may keep of an unfinished event: one string at most, and a few ints."""


def expected_tid(thread: str) -> int:
    return int(thread, 16) if re.fullmatch(r"[0-9a-fA-F]{1,8}", thread) else 0


def check_sample(sample: RawSample) -> None:
    assert 0 <= sample.tid <= 0xFFFFFFFF
    assert len(sample.frames) <= mojo.MAX_STACK
    assert sample.delta_us >= 0
    for frame in sample.frames:
        assert len(frame.function) <= MAX_STRING
        assert len(frame.file) <= MAX_STRING
        assert 0 <= frame.line < 2**31


def check_bounded(decoder: MojoDecoder) -> None:
    assert len(decoder._strings) <= mojo.MAX_STRINGS
    assert len(decoder._frames) <= mojo.MAX_FRAMES
    assert len(decoder._previous) <= mojo.MAX_THREADS
    assert len(decoder.metadata) <= mojo.MAX_METADATA
    assert len(decoder._buffer) - decoder._pos <= PENDING_BOUND
    if decoder._current is not None:
        assert len(decoder._current.frames) <= 2 * mojo.MAX_STACK


def decode(data: bytes, at: list[int]) -> list[RawSample] | None:
    """Every sample of ``data`` fed in chunks cut ``at``; None when it is refused."""
    decoder = MojoDecoder()
    samples: list[RawSample] = []
    bounds = [0, *(cut for cut in at if cut < len(data)), len(data)]
    try:
        for start, end in itertools.pairwise(bounds):
            samples.extend(decoder.feed(data[start:end]))
            check_bounded(decoder)
        samples.extend(decoder.flush())
    except MojoError:
        return None
    for sample in samples:
        check_sample(sample)
    return samples


def check_stream(data: bytes, at: list[int]) -> None:
    """Only MojoError escapes; chunks change nothing; everything stays bounded."""
    chunked = decode(data, at)
    whole = decode(data, [])
    if chunked is not None and whole is not None:
        assert chunked == whole


def thread_ids(thread: str) -> None:
    """A sample's tid is what its thread string spells in hex (a u32), never another number."""
    data = HEADER + bytes([STACK]) + varint(1) + varint(0) + text(thread)
    data += bytes([METRIC_TIME]) + varint(10)
    decoder = MojoDecoder()
    samples = list(decoder.decode_all(data))
    assert [s.tid for s in samples] == [expected_tid(thread)]


TARGETS: dict[str, Target] = {
    "mojo stream": Target(st.tuples(streams(), cuts), lambda args: check_stream(*args)),
    "mojo thread id": Target(strings, thread_ids),
}
