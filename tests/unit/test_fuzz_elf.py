"""The fuzz properties of ``harness/fuzz/elf.py``: a small fixed budget, a seed corpus.

Each ``@example`` is an input that once found a bug (its comment says which) or
sits at a bound; ``bench/fuzz.py`` runs the same properties for minutes.
"""

from __future__ import annotations

import struct

from hypothesis import example, given

from harness.fuzz.elf import Image, build, check_image, images

INTACT = build(0x5294C0, 0, 0, symbols_first=True)
SHNUM_AT = 60  # e_shnum in the ELF header


def with_header_word(at: int, value: int) -> bytes:
    return INTACT[:at] + struct.pack("<Q", value) + INTACT[at + 8 :]


def with_strtab_offset(offset: int) -> bytes:
    """The .strtab header's sh_offset replaced."""
    shoff = struct.unpack_from("<Q", INTACT, 40)[0]
    at = shoff + 2 * 64 + 24  # the third section header's sh_offset
    return INTACT[:at] + struct.pack("<Q", offset) + INTACT[at + 8 :]


def with_section_count(count: int) -> bytes:
    return INTACT[:SHNUM_AT] + struct.pack("<H", count) + INTACT[SHNUM_AT + 2 :]


def with_symbol_table(size: int, entry_size: int) -> bytes:
    """The .symtab header's sh_size and sh_entsize replaced, the file padded to 1 MB."""
    shoff = struct.unpack_from("<Q", INTACT, 40)[0]
    at = shoff + 64  # the second section header
    header = INTACT[at : at + 64]
    header = header[:32] + struct.pack("<Q", size) + header[40:56] + struct.pack("<Q", entry_size)
    return INTACT[:at] + header + INTACT[at + 64 :] + bytes(1 << 20)


@given(images())
@example(Image(INTACT, 0x5294C0, 0, intact=True))
@example(Image(with_section_count(900), 0, 0, intact=False))  # headers past the end: struct.error
@example(Image(with_header_word(32, 0x80000000000000BF), 0, 0, intact=False))  # e_phoff past 2**63
@example(Image(with_header_word(40, 0x80000000000000BF), 0, 0, intact=False))  # OverflowError
@example(Image(with_strtab_offset(0x80000000000000BF), 0, 0, intact=False))  # mmap.find overflowed
@example(Image(INTACT[:100], 0, 0, intact=False))  # cut inside the program header: struct.error
@example(  # one unpack per byte of the file, then struct.error at its end
    Image(with_symbol_table(1 << 40, 1), 0, 0, intact=False)
)
def test_an_image_gives_its_symbols_or_an_elf_error(image: Image) -> None:
    check_image(image)
