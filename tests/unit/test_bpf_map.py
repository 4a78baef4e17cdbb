"""Map elements through the bpf() calls, with an in-memory double of the kernel's side."""

from __future__ import annotations

import ctypes
import errno

import pytest

from otel_blocksnoop.kernel import bpf_syscall
from otel_blocksnoop.kernel.bpf_map import BpfMap, MapSpec, u32


class FakeKernelMap:
    """A map as the kernel keeps it: key bytes to value bytes (all CPUs' slots for per-CPU)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, key_size: int) -> None:
        self.key_size = key_size
        self.entries: dict[bytes, bytes] = {}
        monkeypatch.setattr(bpf_syscall, "lookup_elem", self.lookup_elem)
        monkeypatch.setattr(bpf_syscall, "get_next_key", self.get_next_key)
        monkeypatch.setattr(bpf_syscall, "update_elem", self.update_elem)
        monkeypatch.setattr(bpf_syscall, "delete_elem", self.delete_elem)
        monkeypatch.setattr(bpf_syscall, "lookup_batch", self.lookup_batch)

    @staticmethod
    def _fail(code: int) -> int:
        ctypes.set_errno(code)
        return -1

    def lookup_elem(self, _fd: int, key: int | None, value: int | None) -> int:
        assert key is not None
        assert value is not None
        found = self.entries.get(ctypes.string_at(key, self.key_size))
        if found is None:
            return self._fail(errno.ENOENT)
        ctypes.memmove(value, found, len(found))
        return 0

    def get_next_key(self, _fd: int, key: int | None, next_key: int | None) -> int:
        assert next_key is not None
        keys = sorted(self.entries)
        after = [k for k in keys if key is None or k > ctypes.string_at(key, self.key_size)]
        if not after:
            return self._fail(errno.ENOENT)
        ctypes.memmove(next_key, after[0], self.key_size)
        return 0

    def update_elem(self, _fd: int, key: int | None, value: int | None, _flags: int = 0) -> int:
        assert key is not None
        assert value is not None
        self.entries[ctypes.string_at(key, self.key_size)] = ctypes.string_at(value, 16)
        return 0

    def lookup_batch(
        self,
        _fd: int,
        in_batch: int | None,
        out_batch: int | None,
        buffers: tuple[int | None, int | None],
        count: int,
    ) -> tuple[int, int]:
        """The kernel's batch read over the sorted keys; the cursor is an index."""
        assert out_batch is not None
        keys, values = buffers
        assert keys is not None
        assert values is not None
        ordered = sorted(self.entries.items())
        start = ctypes.c_uint32.from_address(in_batch).value if in_batch is not None else 0
        taken = ordered[start : start + count]
        for index, (key, value) in enumerate(taken):
            ctypes.memmove(keys + index * self.key_size, key, self.key_size)
            ctypes.memmove(values + index * len(value), value, len(value))
        ctypes.c_uint32.from_address(out_batch).value = start + len(taken)
        if start + len(taken) >= len(ordered):
            return self._fail(errno.ENOENT), len(taken)
        return 0, len(taken)

    def delete_elem(self, _fd: int, key: int | None) -> int:
        assert key is not None
        if self.entries.pop(ctypes.string_at(key, self.key_size), None) is None:
            return self._fail(errno.ENOENT)
        return 0


def test_a_per_cpu_value_is_one_slot_per_cpu_each_rounded_up_to_8_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a per-CPU array of 12-byte values on 3 CPUs: the kernel copies 3 slots of 16 bytes
    kernel = FakeKernelMap(monkeypatch, key_size=4)
    slots = [bytes([cpu + 1]) * 12 + b"pad!" for cpu in range(3)]
    kernel.entries[u32(0)] = b"".join(slots)
    spec = MapSpec("iter_extremes", bpf_syscall.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 12, 1)
    table = BpfMap(fd=3, spec=spec, cpus=3)
    # WHEN it is read per CPU
    values = table.lookup_per_cpu(u32(0))
    # THEN each CPU's 12 bytes come back, the padding left out
    assert values == [bytes([cpu + 1]) * 12 for cpu in range(3)]


def test_per_cpu_counters_are_summed_over_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernelMap(monkeypatch, key_size=4)
    kernel.entries[u32(1)] = b"".join(n.to_bytes(8, "little") for n in (5, 7))
    table = BpfMap(3, MapSpec("counters", bpf_syscall.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 4), cpus=2)
    assert table.sum_u64(u32(1)) == 12
    assert table.sum_u64(u32(2)) == 0  # absent


def test_a_missing_key_is_none_and_other_failures_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernelMap(monkeypatch, key_size=4)
    table = BpfMap(3, MapSpec("threads", bpf_syscall.BPF_MAP_TYPE_HASH, 4, 16, 8))
    assert table.lookup(u32(9)) is None
    assert table.delete(u32(9)) is False

    def denied(_fd: int, _key: int | None, _value: int | None) -> int:
        return kernel._fail(errno.EPERM)  # noqa: SLF001 - the double's own helper

    monkeypatch.setattr(bpf_syscall, "lookup_elem", denied)
    with pytest.raises(PermissionError, match="failed to look up in map threads"):
        table.lookup(u32(9))


def test_keys_are_walked_from_the_first_and_items_read_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kernel = FakeKernelMap(monkeypatch, key_size=4)
    for tid in (30, 10, 20):
        kernel.entries[u32(tid)] = bytes([tid]) * 16
    table = BpfMap(3, MapSpec("threads", bpf_syscall.BPF_MAP_TYPE_HASH, 4, 16, 8))
    assert list(table.keys()) == [u32(10), u32(20), u32(30)]
    assert table.items() == [(u32(tid), bytes([tid]) * 16) for tid in (10, 20, 30)]


def test_a_batched_read_hands_over_every_element_across_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a hash map of 5 elements
    kernel = FakeKernelMap(monkeypatch, key_size=4)
    for tid in range(1, 6):
        kernel.entries[u32(tid)] = bytes([tid]) * 16
    table = BpfMap(3, MapSpec("threads", bpf_syscall.BPF_MAP_TYPE_HASH, 4, 16, 8))
    # WHEN it is read 2 elements per call, and in one call
    # THEN both read what a walk of its keys reads
    assert table.items_batched(chunk=2) == table.items()
    assert table.items_batched() == table.items()
    assert len(table.items()) == 5


def test_a_kernel_without_batch_reads_is_read_key_by_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a kernel that does not know the batch command
    kernel = FakeKernelMap(monkeypatch, key_size=4)
    kernel.entries[u32(1)] = bytes(16)
    calls = []

    def unknown(*_args: object) -> tuple[int, int]:
        calls.append(1)
        return kernel._fail(errno.EINVAL), 0  # noqa: SLF001 - the double's own helper

    monkeypatch.setattr(bpf_syscall, "lookup_batch", unknown)
    table = BpfMap(3, MapSpec("threads", bpf_syscall.BPF_MAP_TYPE_HASH, 4, 16, 8))
    # WHEN a batched read is asked for, twice
    # THEN the keys are walked instead, and the batch is not tried again
    assert table.items(batched=True) == [(u32(1), bytes(16))]
    assert table.items(batched=True) == [(u32(1), bytes(16))]
    assert len(calls) == 1


def test_keys_and_values_of_the_wrong_size_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeKernelMap(monkeypatch, key_size=4)
    table = BpfMap(3, MapSpec("watched", bpf_syscall.BPF_MAP_TYPE_HASH, 4, 16, 8))
    with pytest.raises(ValueError, match="key of 8 bytes, want 4"):
        table.lookup(bytes(8))
    with pytest.raises(ValueError, match="value of 4 bytes, want 16"):
        table.update(u32(1), bytes(4))
    table.update(u32(1), bytes(range(16)))
    assert table.lookup(u32(1)) == bytes(range(16))
    assert table.delete(u32(1)) is True
