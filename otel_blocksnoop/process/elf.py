"""The files a process mapped: where (/proc/PID/maps), and the symbols their ELF tables hold.

Enough to find where a symbol of the target's interpreter (``_PyRuntime``)
sits in its memory: the file's symbol value plus the bias it was loaded at.
64-bit little-endian ELF only; the file is mapped, not read.

The file is the target's own, never one of ours at the same path: a
containerised app (another mount namespace, ``pivot_root``) has files the
sidecar's filesystem lacks or holds in another version, and a chrooted app's
maps name paths of ours that its /proc/PID/root does not hold
(``mapped_file``).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Self


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps that maps a file."""

    start: int
    end: int
    offset: int
    path: str
    inode: int = 0  # of the mapped file (0: unknown)


DELETED = " (deleted)"
"""What /proc/PID/maps appends to the path of a file removed since it was mapped."""
PROC = Path("/proc")

_MAPS_LINE = re.compile(r"([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ ([0-9]+) +(/.*)")
"""start-end perms offset dev inode, then the path of a file mapping."""


def parse_maps(text: str) -> list[Mapping]:
    """The file-backed mappings in a /proc/PID/maps text; other lines are skipped."""
    found = []
    for line in text.splitlines():
        if (match := _MAPS_LINE.fullmatch(line)) is not None:
            start, end, offset = (int(match.group(i), 16) for i in (1, 2, 3))
            found.append(Mapping(start, end, offset, match.group(5), int(match.group(4))))
    return found


def file_mappings(pid: int, proc: Path = PROC) -> list[Mapping]:
    """The file-backed mappings of a process (raises OSError when it is gone)."""
    return parse_maps((proc / str(pid) / "maps").read_text())


def mapped_file(pid: int, mapping: Mapping, proc: Path = PROC) -> Path:
    """A path that opens, from here, the very file ``mapping`` maps in ``pid``.

    First the path under the target's root (/proc/PID/root: the app's own
    filesystem, whatever its mount namespace), then the mapping itself
    (/proc/PID/map_files/START-END: the file as mapped, even deleted or
    outside the app's root as a chroot's maps give it; opening it takes
    CAP_SYS_ADMIN). Either is taken only when it is the mapped inode, so a
    different file that happens to sit at that path is never read. Raises
    FileNotFoundError when neither is.
    """
    process = proc / str(pid)
    path = mapping.path.removesuffix(DELETED)
    candidates = (
        process / "root" / path.lstrip("/"),
        process / "map_files" / f"{mapping.start:x}-{mapping.end:x}",
    )
    for candidate in candidates:
        try:
            found = candidate.stat()
        except OSError:
            continue
        if not mapping.inode or found.st_ino == mapping.inode:
            return candidate
    msg = f"{mapping.path} of process {pid} is not reachable from here"
    raise FileNotFoundError(msg)


class ElfError(Exception):
    """Not an ELF file this reader understands (64-bit little-endian only)."""


_SHT_SYMTAB = 2
_SHT_NOBITS = 8
_SHT_DYNSYM = 11
MAX_SECTION = 1 << 16
"""Bytes ``ElfSymbols.section`` returns at most: the sections asked for are a few words."""
_PT_LOAD = 1
_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION = struct.Struct("<IIQQQQIIQQ")
_PROGRAM = struct.Struct("<IIQQQQQQ")
_SYMBOL = struct.Struct("<IBBHQQ")
_NAME_INDEX = struct.Struct("<I")
MAX_STRING = 256
"""``ElfSymbols.strings`` reads at most this far either side of what it looks for."""


class ElfSymbols:
    """The symbol tables (.symtab, then .dynsym) of one ELF file, and its first load address.

    The file is the target's (in a container, its image's): anything it says
    is checked before it is followed, and a file this reader cannot follow
    is an ElfError, never another exception.
    """

    def __init__(self, path: str | Path) -> None:
        # Mapped, not copied: libpython is 15-30 MB with its symbol tables.
        with Path(path).open("rb") as file:
            data = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ)
        try:
            self._parse(data, str(path))
        except ElfError:
            data.close()
            raise

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>") -> ElfSymbols:
        """An ELF image already in memory (tests, fuzzing), mapped as a file would be."""
        if len(data) < _ELF_HEADER.size:  # nor can an empty file be mapped
            raise ElfError(f"{name}: not a 64-bit little-endian ELF file")
        elf = cls.__new__(cls)
        mapped = mmap.mmap(-1, len(data))
        mapped.write(data)
        try:
            elf._parse(mapped, name)  # noqa: SLF001 (its own class)
        except ElfError:
            mapped.close()
            raise
        return elf

    def _parse(self, data: mmap.mmap, name: str) -> None:
        self._data = data
        if len(data) < _ELF_HEADER.size or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ElfError(f"{name}: not a 64-bit little-endian ELF file")
        header = _ELF_HEADER.unpack_from(data)
        phoff, shoff = header[5], header[6]
        phentsize, phnum, shentsize, shnum = header[9], header[10], header[11], header[12]
        self._section_names: int = header[13]  # e_shstrndx
        try:
            self._sections = [
                _SECTION.unpack_from(data, shoff + i * shentsize) for i in range(shnum)
            ]
            programs = [_PROGRAM.unpack_from(data, phoff + i * phentsize) for i in range(phnum)]
        except (struct.error, OverflowError) as error:  # a table past the end of the file
            raise ElfError(f"{name}: truncated section or program headers") from error
        loads = [program for program in programs if program[0] == _PT_LOAD]
        if not loads:
            raise ElfError(f"{name}: no loadable segment")
        self._loads = loads
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
        data = self._data
        needle = b"\0" + name.encode() + b"\0"
        for kind in (_SHT_SYMTAB, _SHT_DYNSYM):
            for section in self._sections:
                # An ELF64 symbol is 24 bytes: another entry size would walk the file byte by byte.
                if (
                    section[1] != kind
                    or section[6] >= len(self._sections)
                    or section[9] not in (0, _SYMBOL.size)
                ):
                    continue
                strtab = self._sections[section[6]]
                start, end = strtab[4], min(strtab[4] + strtab[5], len(data))
                # mmap.find raises OverflowError past 2**63: look only inside the file.
                at = data.find(needle, start, end) if start < len(data) else -1
                if at < 0:
                    continue
                found = self._entry(at + 1 - strtab[4], section[4], section[5])
                if found is not None:
                    return found
        return None

    def section(self, name: str) -> bytes | None:
        """The contents of the section called ``name`` in the file, or None.

        None also when it has no contents in the file (``.bss``) or more than
        ``MAX_SECTION`` bytes, or the section names are not where the header says.
        """
        found = self._section_header(name)
        if found is None:
            return None
        offset, size = found[4], found[5]
        if found[1] == _SHT_NOBITS or size > MAX_SECTION or offset + size > len(self._data):
            return None
        return bytes(self._data[offset : offset + size])

    def _section_header(self, name: str) -> tuple[int, ...] | None:
        """The header of the section called ``name``, or None."""
        data = self._data
        if self._section_names >= len(self._sections):
            return None
        names = self._sections[self._section_names]
        names_end = min(names[4] + names[5], len(data))
        wanted = name.encode()
        for section in self._sections:
            start = names[4] + section[0]
            if start + len(wanted) >= names_end or data[start : start + len(wanted) + 1] != (
                wanted + b"\0"
            ):
                continue
            return tuple(section)
        return None

    def read(self, address: int, size: int) -> bytes | None:
        """The ``size`` bytes the file holds at link-time address ``address``, or None.

        None when no loadable segment holds them in the file (``.bss``, or
        past its end): what the file cannot tell is never read as zeros.
        """
        for _, _, offset, vaddr, _, filesz, _, _ in self._loads:
            if vaddr <= address and address + size <= vaddr + filesz:
                at = offset + address - vaddr
                if at + size <= len(self._data):
                    return bytes(self._data[at : at + size])
        return None

    def strings(self, needle: bytes, section: str, limit: int = 8) -> list[bytes]:
        """The NUL-terminated strings of ``section`` that contain ``needle``, the first ``limit``.

        The section is searched where it lies in the file (``.rodata`` is
        megabytes), not copied. Each string is cut at MAX_STRING bytes around
        ``needle``: the file decides how long a string is, not how much is read.
        """
        found = self._section_header(section)
        data = self._data
        if found is None or found[1] == _SHT_NOBITS or found[4] >= len(data) or not needle:
            return []
        start, end = found[4], min(found[4] + found[5], len(data))
        strings: list[bytes] = []
        at = data.find(needle, start, end)
        while at >= 0 and len(strings) < limit:
            lowest, highest = max(start, at - MAX_STRING), min(end, at + MAX_STRING)
            nul = data.rfind(b"\0", lowest, at)
            first = nul + 1 if nul >= 0 else lowest
            last = data.find(b"\0", at, highest)
            last = last if last >= 0 else highest
            strings.append(bytes(data[first:last]))
            at = data.find(needle, max(last, at + 1), end)
        return strings

    def _entry(self, name_index: int, offset: int, size: int) -> int | None:
        """st_value of the defined symbol named at ``name_index`` in the table at ``offset``.

        The table is searched for the name's index (st_name, an entry's first
        four bytes) by mmap.find, not unpacked entry by entry: libpython has
        ~30,000 symbols, and a launched app's first request may come a few
        milliseconds after its loop starts.
        """
        data = self._data
        if offset >= len(data):
            return None
        end = offset + min(size, len(data) - offset) // _SYMBOL.size * _SYMBOL.size
        key = _NAME_INDEX.pack(name_index)
        at = data.find(key, offset, end)
        while at >= 0:
            if (at - offset) % _SYMBOL.size == 0:
                _, _, _, shndx, value, _ = _SYMBOL.unpack_from(data, at)
                if shndx != 0 and value:
                    return int(value)
            at = data.find(key, at + 1, end)
        return None


def load_base(mappings: list[Mapping], path: str, elf: ElfSymbols) -> int | None:
    """Where ``path`` was loaded in the process: the bias to add to its symbol values."""
    starts = [m.start for m in mappings if m.path == path and m.offset == 0]
    if not starts:
        return None
    return min(starts) - elf.first_load_vaddr


_PT_INTERP = 3


def program_interpreter(path: str | Path) -> str | None:
    """The dynamic loader an executable names (PT_INTERP), None for a static one.

    ``path`` must be an ELF file this module reads (ElfError otherwise).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, _ELF_HEADER.size, 0)
        if len(head) < _ELF_HEADER.size or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise ElfError(f"{path}: not a 64-bit little-endian ELF file")
        header = _ELF_HEADER.unpack(head)
        phoff, phentsize, phnum = header[5], header[9], header[10]
        for i in range(phnum):
            entry = os.pread(fd, _PROGRAM.size, phoff + i * phentsize)
            if len(entry) < _PROGRAM.size:
                raise ElfError(f"{path}: truncated program headers")
            kind, _, offset, _, _, size, _, _ = _PROGRAM.unpack(entry)
            if kind == _PT_INTERP:
                return os.pread(fd, min(size, 4096), offset).split(b"\0", 1)[0].decode()
        return None
    finally:
        os.close(fd)


__all__ = [
    "ElfError",
    "ElfSymbols",
    "Mapping",
    "file_mappings",
    "load_base",
    "mapped_file",
    "parse_maps",
    "program_interpreter",
]
