"""One BPF map by its fd: elements in and out as bytes, through ``bpf_syscall``.

Keys and values are the bytes of the C structs (``bytes(ctypes_struct)`` in,
``Struct.from_buffer_copy(...)`` out). A per-CPU map's value is one slot per
possible CPU, each rounded up to 8 bytes, as the kernel copies them.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass

from otel_blocksnoop.kernel import bpf_syscall
from otel_blocksnoop.kernel.bpf_syscall import BPF_ANY, PER_CPU_MAP_TYPES

BATCH_CHUNK = 256
"""Elements per batched read: buffers of a few tens of KiB, a few calls for a full table."""
NO_BATCH_ERRNOS = frozenset({errno.EINVAL, errno.EOPNOTSUPP, 524})
"""What a kernel without batch operations (or without them for this map) answers (524: ENOTSUPP)."""


def u32(value: int) -> bytes:
    """A u32 key or value as the kernel stores it (the maps keyed by tid, pid or index)."""
    return bytes(ctypes.c_uint32(value))


def u64(value: int) -> bytes:
    return bytes(ctypes.c_uint64(value))


@dataclass(frozen=True, slots=True)
class MapSpec:
    """A map's name (as the C names it) and what the kernel says of it."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0

    @property
    def per_cpu(self) -> bool:
        return self.type in PER_CPU_MAP_TYPES

    @property
    def slot_size(self) -> int:
        """Bytes of one CPU's value in a per-CPU map (value_size rounded up to 8)."""
        return (self.value_size + 7) & ~7


def _error(what: str, spec: MapSpec) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"failed to {what} map {spec.name}: {os.strerror(code)}")


class BpfMap:
    """A map fd (not owned: whoever loaded the program closes it) and its ``MapSpec``."""

    def __init__(self, fd: int, spec: MapSpec, cpus: int | None = None) -> None:
        self.fd = fd
        self.spec = spec
        self._cpus = cpus if cpus is not None else bpf_syscall.possible_cpus()
        self._value_bytes = spec.slot_size * self._cpus if spec.per_cpu else max(spec.value_size, 1)
        self._batch_refused = False

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.spec.key_size:
            msg = f"map {self.spec.name}: key of {len(key)} bytes, want {self.spec.key_size}"
            raise ValueError(msg)
        return ctypes.create_string_buffer(key, len(key))

    def lookup(self, key: bytes) -> bytes | None:
        """The value under ``key`` (all CPUs' slots for a per-CPU map); None if absent."""
        raw_key = self._key(key)
        value = ctypes.create_string_buffer(self._value_bytes)
        if bpf_syscall.lookup_elem(self.fd, ctypes.addressof(raw_key), ctypes.addressof(value)):
            if ctypes.get_errno() == errno.ENOENT:
                return None
            raise _error("look up in", self.spec)
        return value.raw

    def lookup_per_cpu(self, key: bytes) -> list[bytes]:
        """A per-CPU map's value under ``key``, one ``value_size`` slice per CPU."""
        raw = self.lookup(key)
        if raw is None:
            return []
        step, size = self.spec.slot_size, self.spec.value_size
        return [raw[cpu * step : cpu * step + size] for cpu in range(self._cpus)]

    def sum_u64(self, key: bytes) -> int:
        """Sum over CPUs of a per-CPU u64 value (the kernel's counters); 0 if absent."""
        return sum(int.from_bytes(slot, "little") for slot in self.lookup_per_cpu(key))

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        raw_key = self._key(key)
        if len(value) != self._value_bytes:
            msg = f"map {self.spec.name}: value of {len(value)} bytes, want {self._value_bytes}"
            raise ValueError(msg)
        raw_value = ctypes.create_string_buffer(value, len(value))
        address = ctypes.addressof
        if bpf_syscall.update_elem(self.fd, address(raw_key), address(raw_value), flags):
            raise _error("update", self.spec)

    def zero(self, key: bytes) -> None:
        """Write zeros under ``key`` (every CPU's slot): how an array's element is cleared."""
        self.update(key, bytes(self._value_bytes))

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; False if it was not there."""
        raw_key = self._key(key)
        if bpf_syscall.delete_elem(self.fd, ctypes.addressof(raw_key)):
            if ctypes.get_errno() == errno.ENOENT:
                return False
            raise _error("delete from", self.spec)
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key, in the kernel's order; a key deleted meanwhile restarts the walk."""
        key = ctypes.create_string_buffer(self.spec.key_size)
        following = ctypes.create_string_buffer(self.spec.key_size)
        current: int | None = None
        for _ in range(2 * self.spec.max_entries + 1):
            if bpf_syscall.get_next_key(self.fd, current, ctypes.addressof(following)):
                if ctypes.get_errno() == errno.ENOENT:
                    return
                raise _error("walk", self.spec)
            yield following.raw
            ctypes.memmove(key, following, self.spec.key_size)
            current = ctypes.addressof(key)

    def items_batched(self, chunk: int = BATCH_CHUNK) -> list[tuple[bytes, bytes]]:
        """Every (key, value), ``chunk`` elements per bpf() call (Linux 5.6+).

        OSError (EINVAL on kernels without batch operations) when the kernel
        refuses. A hash bucket holding more than ``chunk`` elements doubles it.
        """
        key_size, value_size = self.spec.key_size, self._value_bytes
        # The cursor is opaque: a bucket or an index for hashes and arrays, at most a key.
        cursors = [ctypes.create_string_buffer(max(key_size, 8)) for _ in range(2)]
        found: dict[bytes, bytes] = {}
        start: int | None = None
        while True:
            room = min(chunk, self.spec.max_entries)
            keys = ctypes.create_string_buffer(room * key_size)
            values = ctypes.create_string_buffer(room * value_size)
            result, copied = bpf_syscall.lookup_batch(
                self.fd,
                start,
                ctypes.addressof(cursors[1]),
                (ctypes.addressof(keys), ctypes.addressof(values)),
                room,
            )
            code = ctypes.get_errno() if result else 0
            if code == errno.ENOSPC and not copied and room < self.spec.max_entries:
                chunk *= 2
                continue
            if result and code != errno.ENOENT:
                raise _error("batch read", self.spec)
            raw_keys = ctypes.string_at(keys, copied * key_size)
            raw_values = ctypes.string_at(values, copied * value_size)
            for index in range(copied):
                key = raw_keys[index * key_size : (index + 1) * key_size]
                found[key] = raw_values[index * value_size : (index + 1) * value_size]
            if result or not copied:
                return list(found.items())
            ctypes.memmove(cursors[0], cursors[1], len(cursors[0]))
            start = ctypes.addressof(cursors[0])

    def items(self, batched: bool = False) -> list[tuple[bytes, bytes]]:
        """Every (key, value) present now; keys gone between the walk and the read are left out.

        ``batched``: in ``items_batched``'s few calls where the kernel can (a
        whole array or a well-filled table), else key by key (2 calls each).
        """
        if batched and not self._batch_refused:
            try:
                return self.items_batched()
            except OSError as exc:
                if exc.errno not in NO_BATCH_ERRNOS:
                    raise
                self._batch_refused = True
        found = {}
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                found[key] = value
        return list(found.items())
