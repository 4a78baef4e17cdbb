"""Reading another process's memory, and finding symbols in the ELF files it mapped.

Every read of a target's memory goes through ``RemoteMemory``: one
``process_vm_readv`` call per read (libc, through ctypes), a size bound on
each, pointers checked before they are followed, and ``None`` instead of an
exception when anything fails (the target may free, move or unmap the memory
at any time, or exit). Nothing here stops or slows the target: no ptrace, no
signal.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Self

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


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps that maps a file."""

    start: int
    end: int
    offset: int
    path: str


def file_mappings(pid: int) -> list[Mapping]:
    """The file-backed mappings of a process (raises OSError when it is gone)."""
    found = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append(Mapping(start, end, int(fields[2], 16), fields[5]))
    return found


class ElfError(Exception):
    """Not an ELF file this reader understands (64-bit little-endian only)."""


_SHT_SYMTAB = 2
_SHT_DYNSYM = 11
_PT_LOAD = 1
_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION = struct.Struct("<IIQQQQIIQQ")
_PROGRAM = struct.Struct("<IIQQQQQQ")
_SYMBOL = struct.Struct("<IBBHQQ")


class ElfSymbols:
    """The symbol tables (.symtab, then .dynsym) of one ELF file, and its first load address."""

    def __init__(self, path: str | Path) -> None:
        # Mapped, not copied: libpython is 15-30 MB with its symbol tables.
        with Path(path).open("rb") as file:
            data = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ)
        self._data = data
        if len(data) < _ELF_HEADER.size or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            self.close()
            raise ElfError(f"{path}: not a 64-bit little-endian ELF file")
        header = _ELF_HEADER.unpack_from(data)
        phoff, shoff = header[5], header[6]
        phentsize, phnum, shentsize, shnum = header[9], header[10], header[11], header[12]
        self._sections = [_SECTION.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
        loads = [
            _PROGRAM.unpack_from(data, phoff + i * phentsize)
            for i in range(phnum)
            if _PROGRAM.unpack_from(data, phoff + i * phentsize)[0] == _PT_LOAD
        ]
        if not loads:
            raise ElfError(f"{path}: no loadable segment")
        # p_vaddr of the segment that maps file offset 0, page-aligned.
        self.first_load_vaddr: int = min(int(load[3]) for load in loads) & ~0xFFF

    def close(self) -> None:
        self._data.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def symbol(self, name: str) -> int | None:
        """The link-time address (st_value) of a defined symbol, or None."""
        needle = b"\0" + name.encode() + b"\0"
        for kind in (_SHT_SYMTAB, _SHT_DYNSYM):
            for section in self._sections:
                if section[1] != kind or section[6] >= len(self._sections):
                    continue
                strtab = self._sections[section[6]]
                at = self._data.find(needle, strtab[4], strtab[4] + strtab[5])
                if at < 0:
                    continue
                name_index = at + 1 - strtab[4]
                offset, size, entsize = section[4], section[5], section[9] or _SYMBOL.size
                for i in range(size // entsize):
                    st_name, _, _, shndx, value, _ = _SYMBOL.unpack_from(
                        self._data, offset + i * entsize
                    )
                    if st_name == name_index and shndx != 0 and value:
                        return int(value)
        return None


def load_base(mappings: list[Mapping], path: str, elf: ElfSymbols) -> int | None:
    """Where ``path`` was loaded in the process: the bias to add to its symbol values."""
    starts = [m.start for m in mappings if m.path == path and m.offset == 0]
    if not starts:
        return None
    return min(starts) - elf.first_load_vaddr


def pthread_tid_offset() -> int | None:
    """Where glibc keeps the kernel TID in its ``struct pthread``, found in this process.

    CPython 3.9 and 3.10 record only ``pthread_self()`` in a thread state. The
    TID offset is glibc's, the same in every process using this machine's glibc:
    it is found here by looking for a thread's own TID in its own ``struct
    pthread``, on two threads that must agree.
    """
    import threading  # noqa: PLC0415 (only needed for this one-off probe)

    try:
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_void_p
    except (OSError, AttributeError):
        return None
    found: list[int | None] = []

    def probe() -> None:
        me = libc.pthread_self()
        tid = struct.pack("<i", threading.get_native_id())
        raw = ctypes.string_at(me, 2048)
        hits = [i for i in range(0, len(raw) - 3, 4) if raw[i : i + 4] == tid]
        found.append(int(hits[0]) if hits else None)

    for _ in range(2):
        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
    if len(found) == 2 and found[0] is not None and found[0] == found[1]:
        return found[0]
    return None


def process_root(pid: int) -> str:
    """The target's root directory, so that its files are opened as it sees them."""
    return f"/proc/{pid}/root"


__all__ = [
    "MAX_READ",
    "MAX_TABLE",
    "ElfError",
    "ElfSymbols",
    "Mapping",
    "RemoteMemory",
    "file_mappings",
    "load_base",
    "plausible_pointer",
    "process_root",
    "pthread_tid_offset",
]
