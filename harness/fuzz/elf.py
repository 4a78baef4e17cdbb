"""The target's interpreter file, fuzzed: ELF symbols are found, or the file is an ElfError.

The context reader opens the target's libpython (or executable) through
/proc/PID/root: in a container, a file of the container's image. Images are
built here as a linker would lay them out (an ELF header, one PT_LOAD
program header, a .symtab and its .strtab holding ``_PyRuntime``, section
headers) with random addresses and placement, then sometimes have bytes
overwritten. An intact image gives back the symbol's value and its load
address; any image either parses or raises ElfError, and looking a symbol
up never raises and ends within the file. Nor do reading the file at an
address, its strings, and the version a nameless interpreter's file says.

The unit tests (``tests/unit/test_fuzz_elf.py``) run these properties on a
small fixed budget with their seed corpus; ``bench/fuzz.py`` for minutes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import strategies as st

from harness.fuzz import Target
from otel_blocksnoop.process.elf import MAX_STRING, ElfError, ElfSymbols
from otel_blocksnoop.process.pythons import VersionError, file_version

_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION = struct.Struct("<IIQQQQIIQQ")
_PROGRAM = struct.Struct("<IIQQQQQQ")
_SYMBOL = struct.Struct("<IBBHQQ")
STRTAB = b"\0Py_Version\0_PyRuntime\0"
RUNTIME_NAME = STRTAB.index(b"_PyRuntime")


@dataclass(frozen=True)
class Image:
    data: bytes
    runtime: int  # _PyRuntime's st_value
    vaddr: int  # the PT_LOAD's p_vaddr
    intact: bool


def build(runtime: int, vaddr: int, gap: int, symbols_first: bool) -> bytes:
    """A minimal 64-bit little-endian ELF image with _PyRuntime in its .symtab."""
    symtab = _SYMBOL.pack(0, 0, 0, 0, 0, 0) + _SYMBOL.pack(RUNTIME_NAME, 0x11, 0, 7, runtime, 8)
    body_at = _HEADER.size + _PROGRAM.size + gap
    tables = [symtab, STRTAB] if symbols_first else [STRTAB, symtab]
    offsets = [body_at, body_at + len(tables[0])]
    symtab_at, strtab_at = offsets if symbols_first else offsets[::-1]
    shoff = body_at + len(symtab) + len(STRTAB)
    sections = [
        _SECTION.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        _SECTION.pack(1, 2, 0, 0, symtab_at, len(symtab), 2, 1, 8, _SYMBOL.size),
        _SECTION.pack(9, 3, 0, 0, strtab_at, len(STRTAB), 0, 0, 1, 0),
    ]
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = _HEADER.pack(
        ident, 3, 62, 1, 0, _HEADER.size, shoff, 0, _HEADER.size, _PROGRAM.size, 1, 64, 3, 0
    )
    program = _PROGRAM.pack(1, 5, 0, vaddr, vaddr, shoff, shoff, 0x1000)
    return header + program + bytes(gap) + b"".join(tables) + b"".join(sections)


@st.composite
def images(draw: st.DrawFn) -> Image:
    runtime = draw(st.integers(1, 2**64 - 1))
    vaddr = draw(st.integers(0, 2**64 - 1))
    data = bytearray(
        build(runtime, vaddr, draw(st.integers(0, 64)), symbols_first=draw(st.booleans()))
    )
    changes = draw(st.integers(0, 4))
    for _ in range(changes):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()) and changes:
        data = data[: draw(st.integers(0, len(data)))]
    return Image(bytes(data), runtime, vaddr, intact=changes == 0)


def check_image(image: Image) -> None:
    """An intact image gives its symbol and load address; any image parses or is an ElfError."""
    try:
        elf = ElfSymbols.from_bytes(image.data)
    except ElfError:
        assert not image.intact
        return
    found = elf.symbol("_PyRuntime")
    elf.symbol("Py_Version")
    elf.symbol("missing")
    # what a nameless interpreter's version is read from: never more than asked, never raises
    read = elf.read(image.runtime, 8)
    assert read is None or len(read) == 8
    for string in elf.strings(b"cpython-3", ".rodata") + elf.strings(b"_PyRuntime", ".strtab"):
        assert len(string) <= 2 * MAX_STRING
    try:
        file_version("/opt/app/bin/python3", elf)
    except VersionError:
        pass  # no version in it: an image with only _PyRuntime says none
    else:
        assert not image.intact
    if image.intact:
        assert found == image.runtime
        assert elf.first_load_vaddr == image.vaddr & ~0xFFF
    else:
        assert found is None or 0 < found < 2**64


TARGETS: dict[str, Target] = {
    "ELF symbols (target's libpython)": Target(images(), check_image),
}
