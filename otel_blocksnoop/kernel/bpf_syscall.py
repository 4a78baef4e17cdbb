"""The bpf() syscall through ctypes, without libbcc: map elements, map information, a probe.

Calls go through libc's ``syscall`` loaded with ``ctypes.PyDLL``, which keeps
the GIL through the call (a map call takes about a microsecond; giving the
GIL away and winning it back can take the 5 ms switch interval, see
``thread_table``). The element functions have libbcc's signatures
(``fd``, then key and value as ``ctypes.byref()`` or addresses; 0, or -1
with errno); ``bpf_map.BpfMap`` wraps them for bytes in and out.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from otel_blocksnoop.kernel import syscalls

if TYPE_CHECKING:
    from _ctypes import _CArgObject

    Pointer = int | _CArgObject | None
    """An address, a ``ctypes.byref()``, or None for NULL: what libbcc's functions take."""

# enum bpf_cmd (uapi/linux/bpf.h).
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24

# Flags of BPF_MAP_UPDATE_ELEM.
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# enum bpf_map_type, those the detector uses.
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_RINGBUF = 27
PER_CPU_MAP_TYPES = frozenset({BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, 10})
"""Types whose value is one slot per possible CPU (10: LRU_PERCPU_HASH)."""

BPF_OBJ_NAME_LEN = 16

NOOP_PROGRAM = bytes.fromhex("b7000000000000009500000000000000")
"""``r0 = 0; exit``: the smallest program the verifier accepts, for probing what is allowed."""

libc_syscall = ctypes.PyDLL(None, use_errno=True).syscall
"""libc's ``syscall(nr, ...)``, called with the GIL held; pass every argument as a ctypes type."""
libc_syscall.restype = ctypes.c_long


def syscall_number(name: str) -> int:
    """Number of syscall ``name`` on this machine; OSError where we do not know it."""
    nr = syscalls.syscall_number(name)
    if nr == syscalls.NO_SYSCALL:
        msg = f"no syscall number for {name} on {platform.machine()}"
        raise OSError(msg)
    return nr


class MapElemAttr(ctypes.Structure):
    """The ``union bpf_attr`` member of the BPF_MAP_*_ELEM commands."""

    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # or next_key
        ("flags", ctypes.c_uint64),
    )


class BatchAttr(ctypes.Structure):
    """The ``union bpf_attr`` member of the BPF_MAP_*_BATCH commands."""

    _fields_ = (
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


class InfoAttr(ctypes.Structure):
    """The ``union bpf_attr`` member of BPF_OBJ_GET_INFO_BY_FD."""

    _fields_ = (
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    )


class ProgLoadAttr(ctypes.Structure):
    """The head of the ``union bpf_attr`` member of BPF_PROG_LOAD (the kernel zeroes the rest)."""

    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    )


class MapInfoC(ctypes.Structure):
    """The head of ``struct bpf_map_info``; the kernel fills as much as we ask for."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    )


@functools.cache
def _bpf_nr() -> int:
    return syscall_number("bpf")


def _call(cmd: int, attr: ctypes.Structure) -> int:
    """The raw call: its result, or -1 with errno set (read with ``ctypes.get_errno``)."""
    return int(
        libc_syscall(
            ctypes.c_long(_bpf_nr()),
            ctypes.c_long(cmd),
            ctypes.byref(attr),
            ctypes.c_long(ctypes.sizeof(attr)),
        )
    )


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """The syscall itself: its result, or OSError with the errno."""
    result = _call(cmd, attr)
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def _address(pointer: Pointer) -> int:
    if pointer is None or isinstance(pointer, int):
        return pointer or 0
    return ctypes.cast(pointer, ctypes.c_void_p).value or 0


def _elem(cmd: int, fd: int, key: Pointer, value: Pointer, flags: int = 0) -> int:
    attr = MapElemAttr(map_fd=fd, key=_address(key), value=_address(value), flags=flags)
    return _call(cmd, attr)


# libbcc's signatures: (fd, key, value) -> 0, or -1 with errno.


def lookup_elem(fd: int, key: Pointer, value: Pointer) -> int:
    """Copy the value under ``key`` to ``value`` (addresses); -1 with ENOENT if absent."""
    return _elem(BPF_MAP_LOOKUP_ELEM, fd, key, value)


def get_next_key(fd: int, key: Pointer, next_key: Pointer) -> int:
    """Write the key after ``key`` (the first one when ``key`` is None) to ``next_key``."""
    return _elem(BPF_MAP_GET_NEXT_KEY, fd, key, next_key)


def update_elem(fd: int, key: Pointer, value: Pointer, flags: int = BPF_ANY) -> int:
    return _elem(BPF_MAP_UPDATE_ELEM, fd, key, value, flags)


def delete_elem(fd: int, key: Pointer) -> int:
    return _elem(BPF_MAP_DELETE_ELEM, fd, key, None)


def lookup_batch(
    fd: int, in_batch: Pointer, out_batch: Pointer, buffers: tuple[Pointer, Pointer], count: int
) -> tuple[int, int]:
    """Copy up to ``count`` elements (to ``buffers``: keys, values) from ``in_batch`` on.

    ``in_batch`` None starts at the beginning; the kernel writes where to go on
    to ``out_batch``. Returns the call's result (0, or -1 with errno; ENOENT:
    the map's end was reached) and how many elements it copied, which it may
    do in either case.
    """
    keys, values = buffers
    attr = BatchAttr(
        in_batch=_address(in_batch),
        out_batch=_address(out_batch),
        keys=_address(keys),
        values=_address(values),
        count=count,
        map_fd=fd,
    )
    return _call(BPF_MAP_LOOKUP_BATCH, attr), attr.count


@dataclass(frozen=True, slots=True)
class MapInfo:
    """What the kernel says of a map fd."""

    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str  # the kernel keeps at most 15 characters


def map_info(fd: int) -> MapInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a map fd; OSError if it is not one."""
    info = MapInfoC()
    attr = InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return MapInfo(
        type=info.type,
        id=info.id,
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        flags=info.map_flags,
        name=info.name.decode(errors="replace"),
    )


def load_noop_program(prog_type: int) -> int:
    """Load ``NOOP_PROGRAM`` as a ``prog_type`` program: its fd, or OSError if the kernel refuses.

    The kernel asks what it asks of the real program of that type (CAP_BPF,
    and CAP_PERFMON for tracing types, or CAP_SYS_ADMIN; lockdown; seccomp),
    so this tells in a millisecond, and without BCC, whether loading will work.
    """
    insns = ctypes.create_string_buffer(NOOP_PROGRAM, len(NOOP_PROGRAM))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(NOOP_PROGRAM) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_),
        prog_name=b"blocksnoop_prb",
    )
    return bpf(BPF_PROG_LOAD, attr)


def parse_cpu_list(text: str) -> list[int]:
    """CPU numbers of a kernel CPU list such as ``0-3,8,10-11``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


@functools.cache
def possible_cpus() -> int:
    """How many value slots a per-CPU map has: one per possible CPU (highest number + 1)."""
    cpus = parse_cpu_list(Path("/sys/devices/system/cpu/possible").read_text())
    return max(cpus) + 1 if cpus else os.cpu_count() or 1
