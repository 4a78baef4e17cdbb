"""Reading another process's memory: bounded, checked, and never raising.

Every read of a target's memory goes through ``RemoteMemory``: one
``process_vm_readv`` call per read (libc, through ctypes), a size bound on
each, pointers checked before they are followed, and ``None`` instead of an
exception when anything fails (the target may free, move or unmap the memory
at any time, or exit). Nothing here stops or slows the target: no ptrace, no
signal.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path

MAX_READ = 4096
"""The largest single read: anything bigger is refused as corrupt."""
MAX_TABLE = 1 << 20
"""The largest table (``read_table``), e.g. the entries of a big dict like sys.modules."""

_USER_SPACE_END = 1 << 47
"""x86-64 user addresses are below 2**47."""

_POINTER = struct.Struct("<Q")
_SSIZE = struct.Struct("<q")
_U32 = struct.Struct("<I")


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


def _process_vm_readv() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """The C library's process_vm_readv, called with the GIL held.

    A read takes a few microseconds; giving the GIL away for it, as CDLL does,
    means winning it back from any busy thread of the sidecar (the stack
    decoder) up to 5 ms later, at each of the ~60 reads of one context read.
    """
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        function = libc.process_vm_readv
    except (OSError, AttributeError):
        return None
    function.argtypes = (
        ctypes.c_int,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    )
    function.restype = ctypes.c_ssize_t
    return function


_READV = _process_vm_readv()


def plausible_pointer(address: int, alignment: int = 8) -> bool:
    """Non-null, aligned and in user space: worth following."""
    return 0x1000 <= address < _USER_SPACE_END and address % alignment == 0


def _first_readable(maps: str) -> int | None:
    """Start address of the first readable mapping in a /proc/PID/maps text."""
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1].startswith("r"):
            return int(fields[0].partition("-")[0], 16)
    return None


def access_error(pid: int) -> OSError | None:
    """Why this process may not read ``pid``'s memory; None when it may.

    One byte of its first readable mapping, read as every ``RemoteMemory``
    read is: the kernel makes the same ptrace access check (same user and no
    capability it lacks, or CAP_SYS_PTRACE) as for the reads that follow.
    """
    try:
        start = _first_readable((Path("/proc") / str(pid) / "maps").read_text(errors="replace"))
    except OSError as exc:
        return exc
    if _READV is None or start is None:
        return OSError(errno.ENOSYS, "process_vm_readv is not available")
    buffer = ctypes.create_string_buffer(1)
    local = _IoVec(ctypes.cast(buffer, ctypes.c_void_p), 1)
    remote = _IoVec(start, 1)
    if _READV(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) == 1:
        return None
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


class RemoteMemory:
    """Bounded reads of one process's memory; a failed read is None, never an exception."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.reads = 0
        self._buffer = ctypes.create_string_buffer(MAX_READ)
        self._local = _IoVec(ctypes.cast(self._buffer, ctypes.c_void_p), 0)
        self._remote = _IoVec(None, 0)

    def read(self, address: int, size: int) -> bytes | None:
        """``size`` bytes at ``address``, or None (bad pointer, too big, unmapped, gone)."""
        if _READV is None or not 0 < size <= MAX_READ or not plausible_pointer(address, 1):
            return None
        self._local.iov_len = size
        self._remote.iov_base = address
        self._remote.iov_len = size
        self.reads += 1
        done = _READV(self.pid, ctypes.byref(self._local), 1, ctypes.byref(self._remote), 1, 0)
        if done != size:
            return None
        return self._buffer.raw[:size]

    def read_table(self, address: int, size: int) -> bytes | None:
        """``size`` bytes (at most MAX_TABLE) at ``address``, read MAX_READ at a time."""
        if not 0 < size <= MAX_TABLE:
            return None
        chunks = []
        for start in range(address, address + size, MAX_READ):
            chunk = self.read(start, min(MAX_READ, address + size - start))
            if chunk is None:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def pointer(self, address: int) -> int | None:
        """The pointer stored at ``address`` (may be 0), or None."""
        data = self.read(address, 8) if address % 8 == 0 else None
        return None if data is None else _POINTER.unpack(data)[0]

    def ssize(self, address: int) -> int | None:
        data = self.read(address, 8)
        return None if data is None else _SSIZE.unpack(data)[0]

    def u32(self, address: int) -> int | None:
        data = self.read(address, 4)
        return None if data is None else _U32.unpack(data)[0]

    def u8(self, address: int) -> int | None:
        data = self.read(address, 1)
        return None if data is None else data[0]

    def pointers(self, address: int, count: int) -> tuple[int, ...] | None:
        """``count`` pointers in a row (bounded by MAX_READ)."""
        if count == 0:
            return ()
        data = self.read(address, 8 * count) if address % 8 == 0 else None
        return None if data is None else struct.unpack(f"<{count}Q", data)

    def c_string(self, address: int, limit: int = 128) -> str | None:
        """A NUL-terminated ASCII string of at most ``limit`` bytes, or None."""
        data = self.read(address, limit)
        if data is None:
            # The string may end close to the end of a mapping: try a short read.
            data = self.read(address, 32)
        if data is None or b"\0" not in data:
            return None
        raw = data[: data.index(b"\0")]
        return raw.decode("ascii") if raw.isascii() else None


__all__ = [
    "MAX_READ",
    "MAX_TABLE",
    "RemoteMemory",
    "access_error",
    "plausible_pointer",
]
