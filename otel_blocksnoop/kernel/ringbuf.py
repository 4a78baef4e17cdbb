"""A BPF ring buffer (BPF_MAP_TYPE_RINGBUF) consumed from user space without libbpf or libbcc.

The map fd is mapped as the kernel lays it out: one writable page holding the
consumer position, then (read-only) one page holding the producer position
followed by the data area. The kernel allows mapping the data area twice in
a row so a record that wraps reads in one piece; here it is mapped once
(half the resident pages) and a wrapping record is read in two pieces.

Each record starts with an 8-byte header: a u32 length whose top bits are
``BPF_RINGBUF_BUSY_BIT`` (still being written: stop there) and
``BPF_RINGBUF_DISCARD_BIT`` (skip it), then the page offset the kernel uses.
Records are 8-byte aligned. After each record the consumer position is
written back, which gives its space back to the producer and re-arms the
kernel's wake-up (it notifies only when the consumer has caught up).

``RingReader`` parses records over any memory (tests hand it ctypes buffers);
``MappedRing`` maps a real map fd for it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8
_LENGTH_MASK = ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT) & 0xFFFFFFFF

RecordCallback = Callable[[bytes], object]
"""Called with a copy of each record's bytes (the header left out)."""

Struct = TypeVar("Struct", bound=ctypes.Structure)


def record_as(struct_type: type[Struct], record: bytes) -> Struct:
    """``record`` as a ``struct_type``; what the kernel left out of its end reads as zeros.

    A record may be sent shorter than its struct: only the used part of a
    variable-length tail (a block's segments).
    """
    size = ctypes.sizeof(struct_type)
    return struct_type.from_buffer_copy(record.ljust(size, b"\0")[:size])


@dataclass(frozen=True, slots=True)
class RingMemory:
    """Where a ring buffer's parts are in this process (addresses)."""

    consumer: int  # u64 consumer position (we write it)
    producer: int  # u64 producer position (the kernel writes it)
    data: int  # the data area, mapped once
    size: int  # bytes of the data area: a power of two


def record_span(header: int) -> int:
    """Bytes a record takes in the ring (header included), from its header's length word."""
    length = header & _LENGTH_MASK
    return (length + BPF_RINGBUF_HDR_SZ + 7) & ~7


class RingReader:
    """Hands each committed record of one ring buffer to ``callback``, in order."""

    def __init__(self, memory: RingMemory, callback: RecordCallback) -> None:
        if memory.size <= 0 or memory.size & (memory.size - 1):
            msg = f"ring buffer data area of {memory.size} bytes: not a power of two"
            raise ValueError(msg)
        self.memory = memory
        self.callback = callback
        self._mask = memory.size - 1
        # Views of the live positions: each ``.value`` is one aligned 8-byte load or store.
        self._consumer = ctypes.c_uint64.from_address(memory.consumer)
        self._producer = ctypes.c_uint64.from_address(memory.producer)

    def _read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` of the data area, wrapping past its end."""
        data, size = self.memory.data, self.memory.size
        if offset + length <= size:
            return ctypes.string_at(data + offset, length)
        first = size - offset
        return ctypes.string_at(data + offset, first) + ctypes.string_at(data, length - first)

    def consume(self) -> int:
        """Hand over every committed record; return how many were handed over.

        Stops at a record still being written (its busy bit set). A callback
        that raises ends the call; its record counts as consumed.
        """
        handed = 0
        position = self._consumer.value
        while True:
            produced = self._producer.value
            if position >= produced:
                return handed
            while position < produced:
                offset = position & self._mask
                header = ctypes.c_uint32.from_address(self.memory.data + offset).value
                if header & BPF_RINGBUF_BUSY_BIT:
                    return handed
                record = None
                if not header & BPF_RINGBUF_DISCARD_BIT:
                    start = (position + BPF_RINGBUF_HDR_SZ) & self._mask
                    record = self._read(start, header & _LENGTH_MASK)
                position += record_span(header)
                self._consumer.value = position
                if record is not None:
                    handed += 1
                    self.callback(record)


_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map(length: int, prot: int, fd: int, offset: int) -> int:
    address = _mmap(None, length, prot, mmap.MAP_SHARED, fd, offset)
    if address is None or address == _MAP_FAILED:
        code = ctypes.get_errno()
        raise OSError(code, f"failed to map ring buffer fd {fd}: {os.strerror(code)}")
    return int(address)


class MappedRing:
    """The pages of a ring buffer map fd, mapped into this process (not the fd: not owned)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        page = mmap.PAGESIZE
        self._consumer = _map(page, mmap.PROT_READ | mmap.PROT_WRITE, fd, 0)
        try:
            self._producer = _map(page + size, mmap.PROT_READ, fd, page)
        except OSError:
            _munmap(self._consumer, page)
            raise
        self.memory = RingMemory(
            consumer=self._consumer,
            producer=self._producer,
            data=self._producer + page,
            size=size,
        )

    def close(self) -> None:
        """Unmap; the reader over ``memory`` must not be used after this."""
        if self._consumer:
            _munmap(self._producer, mmap.PAGESIZE + self.size)
            _munmap(self._consumer, mmap.PAGESIZE)
            self._consumer = self._producer = 0
