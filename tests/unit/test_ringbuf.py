"""Ring buffer records parsed over a fake memory area laid out as the kernel lays out a real one."""

from __future__ import annotations

import ctypes

import pytest

from otel_blocksnoop.kernel.layout import BlockEventC
from otel_blocksnoop.kernel.ringbuf import (
    BPF_RINGBUF_BUSY_BIT,
    BPF_RINGBUF_DISCARD_BIT,
    BPF_RINGBUF_HDR_SZ,
    RingMemory,
    RingReader,
    record_as,
    record_span,
)


class FakeRing:
    """Consumer and producer positions and a data area in ctypes buffers; a kernel-like producer."""

    def __init__(self, size: int = 64) -> None:
        self.consumer = ctypes.c_uint64(0)
        self.producer = ctypes.c_uint64(0)
        self.data = (ctypes.c_uint8 * size)()
        self.size = size
        self.memory = RingMemory(
            consumer=ctypes.addressof(self.consumer),
            producer=ctypes.addressof(self.producer),
            data=ctypes.addressof(self.data),
            size=size,
        )

    def _write(self, offset: int, payload: bytes) -> None:
        for index, byte in enumerate(payload):
            self.data[(offset + index) % self.size] = byte

    def reserve(self, payload: bytes) -> int:
        """Write a record still being written (busy); return where its header is."""
        position = self.producer.value
        assert position + record_span(len(payload)) - self.consumer.value <= self.size
        header = len(payload) | BPF_RINGBUF_BUSY_BIT
        self._write(position % self.size, header.to_bytes(4, "little") + bytes(4))
        self._write((position + BPF_RINGBUF_HDR_SZ) % self.size, payload)
        self.producer.value = position + record_span(len(payload))
        return position

    def commit(self, position: int, discard: bool = False) -> None:
        offset = position % self.size
        header = int.from_bytes(bytes(self.data[offset : offset + 4]), "little")
        header &= ~BPF_RINGBUF_BUSY_BIT
        if discard:
            header |= BPF_RINGBUF_DISCARD_BIT
        self._write(offset, header.to_bytes(4, "little"))

    def output(self, payload: bytes) -> None:
        """Reserve and commit at once, as bpf_ringbuf_output does."""
        self.commit(self.reserve(payload))


def reader(ring: FakeRing) -> tuple[RingReader, list[bytes]]:
    got: list[bytes] = []
    return RingReader(ring.memory, got.append), got


def test_committed_records_arrive_in_order_and_the_consumer_catches_up() -> None:
    # GIVEN three committed records of lengths that need padding to 8 bytes
    ring = FakeRing()
    for payload in (b"a", b"bcdefghij", b"12345678"):
        ring.output(payload)
    consume, got = reader(ring)
    # WHEN they are consumed
    handed = consume.consume()
    # THEN each arrives whole, in order, without its header or padding
    assert handed == 3
    assert got == [b"a", b"bcdefghij", b"12345678"]
    assert ring.consumer.value == ring.producer.value == 16 + 24 + 16
    # AND nothing is handed twice
    assert consume.consume() == 0


def test_a_record_still_being_written_stops_the_reader_until_it_is_committed() -> None:
    # GIVEN a committed record, one still busy, and one committed after it
    ring = FakeRing()
    ring.output(b"first")
    busy = ring.reserve(b"second")
    ring.output(b"third")
    consume, got = reader(ring)
    # WHEN consumed: only the first, and the consumer stops at the busy one
    assert consume.consume() == 1
    assert got == [b"first"]
    assert ring.consumer.value == busy
    # THEN once it is committed, it and the one behind it arrive
    ring.commit(busy)
    assert consume.consume() == 2
    assert got == [b"first", b"second", b"third"]


def test_a_discarded_record_is_skipped_and_its_space_given_back() -> None:
    ring = FakeRing()
    ring.commit(ring.reserve(b"dropped by the program"), discard=True)
    ring.output(b"kept")
    consume, got = reader(ring)
    assert consume.consume() == 1
    assert got == [b"kept"]
    assert ring.consumer.value == ring.producer.value


def test_a_record_that_wraps_past_the_end_of_the_data_area_arrives_whole() -> None:
    # GIVEN a 64-byte ring whose positions have gone round once, with a record across its end
    ring = FakeRing(size=64)
    consume, got = reader(ring)
    ring.output(bytes(range(40)))  # 48 bytes in the ring
    consume.consume()
    got.clear()
    payload = bytes(range(100, 130))  # header at 48, payload from 56 to 86: wraps at 64
    ring.output(payload)
    # WHEN consumed
    assert consume.consume() == 1
    # THEN the two pieces are joined
    assert got == [payload]
    assert ring.consumer.value == 48 + 40


def test_positions_keep_growing_past_the_size_and_are_masked_into_the_area() -> None:
    ring = FakeRing(size=32)
    consume, got = reader(ring)
    for index in range(20):
        ring.output(bytes([index]) * 5)  # 16 bytes each: the ring goes round 10 times
        consume.consume()
    assert got == [bytes([index]) * 5 for index in range(20)]
    assert ring.consumer.value == 20 * 16


def test_a_callback_that_raises_consumes_its_record_and_the_next_call_goes_on() -> None:
    ring = FakeRing()
    ring.output(b"bad")
    ring.output(b"good")
    got: list[bytes] = []

    def callback(record: bytes) -> None:
        if record == b"bad":
            raise ValueError(record)
        got.append(record)

    consume = RingReader(ring.memory, callback)
    with pytest.raises(ValueError, match="bad"):
        consume.consume()
    assert consume.consume() == 1
    assert got == [b"good"]


def test_a_block_event_record_decodes_to_the_struct_the_program_wrote() -> None:
    # GIVEN a block_event as the BPF program submits it, with all its segments
    event = BlockEventC(start_ns=1_000, end_ns=51_000, tgid=7, tid=8, comm=b"python")
    ring = FakeRing(size=4096)
    ring.output(bytes(event))
    got: list[BlockEventC] = []
    consume = RingReader(ring.memory, lambda raw: got.append(BlockEventC.from_buffer_copy(raw)))
    # WHEN it is consumed
    consume.consume()
    # THEN the mirror reads the same fields back
    (decoded,) = got
    assert (decoded.start_ns, decoded.end_ns, decoded.tgid, decoded.tid) == (1_000, 51_000, 7, 8)
    assert decoded.comm == b"python"


@pytest.mark.parametrize("size", [0, 48, 100])
def test_a_data_area_that_is_not_a_power_of_two_is_refused(size: int) -> None:
    memory = RingMemory(consumer=0, producer=0, data=0, size=size)
    with pytest.raises(ValueError, match="power of two"):
        RingReader(memory, lambda _: None)


def test_a_record_shorter_than_its_struct_reads_the_rest_as_zeros() -> None:
    # GIVEN a struct of three u32, and a record the kernel sent with only the first two
    class Three(ctypes.Structure):
        _fields_ = (("a", ctypes.c_uint32), ("b", ctypes.c_uint32), ("c", ctypes.c_uint32))

    record = bytes(ctypes.c_uint32(7)) + bytes(ctypes.c_uint32(8))
    # WHEN it is read as the struct
    value = record_as(Three, record)
    # THEN what was sent is there, and the tail left out is zero
    assert (value.a, value.b, value.c) == (7, 8, 0)
