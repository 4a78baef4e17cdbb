"""One parser of Python executable and libpython names, and what each of its callers makes of it."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

from harness.interpreters import pyenv_python
from otel_blocksnoop.process.elf import ElfSymbols
from otel_blocksnoop.process.identity import runtime_version
from otel_blocksnoop.process.pythons import (
    FileVersion,
    PythonName,
    VersionError,
    file_version,
    is_interpreter_name,
    mapped_libpythons,
    python_name,
)
from otel_blocksnoop.process.target import is_python

MAPS = """\
55d0c000-55d0d000 r--p 00000000 08:01 123        /usr/bin/uwsgi
55d0e000-55d0f000 rw-p 00000000 00:00 0          [heap]
7f000000-7f001000 r--p 00000000 08:01 124        /usr/lib/python3.11/lib-dynload/_asyncio.so
7f002000-7f003000 r--p 00000000 08:01 125        /usr/lib/x86_64-linux-gnu/libpython3.so
7f004000-7f005000 r--p 00000000 08:01 126        /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/usr/bin/python", PythonName(None, None, "", library=False, whole=True)),
        ("python3", PythonName(3, None, "", library=False, whole=True)),
        ("/opt/py/bin/python3.11", PythonName(3, 11, "", library=False, whole=True)),
        ("python3.13t", PythonName(3, 13, "t", library=False, whole=True)),
        ("python3.13td", PythonName(3, 13, "td", library=False, whole=True)),
        ("python3.7m", PythonName(3, 7, "m", library=False, whole=True)),
        ("python3.11-config", PythonName(3, 11, "", library=False, whole=False)),
        ("uwsgi-python3.12", PythonName(3, 12, "", library=False, whole=False)),
        ("/lib/libpython3.12.so.1.0", PythonName(3, 12, "", library=True, whole=False)),
        ("libpython3.13t.so.1.0", PythonName(3, 13, "t", library=True, whole=False)),
        ("libpython3.so", PythonName(3, None, "", library=True, whole=False)),
    ],
)
def test_a_name_gives_its_version_and_build(path: str, expected: PythonName) -> None:
    assert python_name(path) == expected


@pytest.mark.parametrize("path", ["/usr/bin/uwsgi", "/usr/lib/python3.11/", "node", ""])
def test_a_name_without_python_gives_none(path: str) -> None:
    assert python_name(path) is None


@pytest.mark.parametrize(
    ("path", "version", "free_threaded"),
    [
        ("python3.11", (3, 11), False),
        ("libpython3.13t.so.1.0", (3, 13), True),
        ("python3.13td", (3, 13), True),
        ("python3.11d", (3, 11), False),
        ("python3", None, False),
    ],
)
def test_version_and_free_threading_as_the_context_reader_reads_them(
    path: str, version: tuple[int, int] | None, free_threaded: bool
) -> None:
    name = python_name(path)
    assert name is not None
    assert name.version == version
    assert name.free_threaded == free_threaded


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/usr/bin/python", True),
        ("python3", True),
        ("/usr/bin/python3.11", True),
        ("python3.11d", True),
        ("python3.7m", True),
        ("python311", True),
        ("python3.13t", False),  # free-threaded: Python only by a mapped libpython
        ("python3.11-config", False),
        ("python3.11.2", False),
        ("libpython3.11.so.1.0", False),
        ("ipython3", False),
        ("pythonw", False),
        ("uwsgi", False),
    ],
)
def test_an_interpreter_is_known_by_its_executable_name(path: str, expected: bool) -> None:
    assert is_interpreter_name(path) == expected


def test_libpythons_are_found_in_maps_in_their_order() -> None:
    # GIVEN the maps of a program embedding Python, with a python3.11 directory mapped first
    # WHEN the libpythons in them are listed
    found = [name.version for name in mapped_libpythons(MAPS)]

    # THEN they are the two libpython files, not the directory's module
    assert found == [None, (3, 11)]
    assert list(mapped_libpythons(MAPS.replace("libpython", "libruby"))) == []


@pytest.mark.parametrize(
    ("executable", "expected"),
    [
        ("/usr/bin/python3.11", (3, 11)),
        ("/opt/bin/python3.13t", (3, 13)),
        ("/usr/lib/libpython3.10.so.1.0", (3, 10)),
        ("/usr/bin/uwsgi-python3.12", (3, 12)),
    ],
)
def test_a_name_with_its_version_is_enough_without_the_file(
    executable: str, expected: tuple[int, int]
) -> None:
    found = file_version(executable, None)
    assert found == FileVersion(expected, executable.endswith("t"), source="its name")


def test_the_identity_version_is_the_one_the_readers_find() -> None:
    assert runtime_version(os.getpid()) == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_the_identity_version_of_a_process_gone_is_unknown() -> None:
    assert runtime_version(2**22 + 12345) is None


def test_a_python_executable_is_python_without_reading_its_maps() -> None:
    # GIVEN a PID that does not exist: its maps cannot be read
    # WHEN / THEN an interpreter's name is enough
    assert is_python(2**22 + 12345, "/usr/bin/python3.11")


_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION = struct.Struct("<IIQQQQIIQQ")
_PROGRAM = struct.Struct("<IIQQQQQQ")
_SYMBOL = struct.Struct("<IBBHQQ")
VADDR = 0x400000
TAG_3_10 = (b"cpython-310", b".cpython-310-x86_64-linux-gnu.so")
TAGS = "its cache tag and extension suffix"


def interpreter_file(
    strings: tuple[bytes, ...] = (),
    py_version: int | None = None,
    *,
    runtime: bool = True,
    bss: tuple[str, ...] = (),
) -> ElfSymbols:
    """An ELF image as a linker lays out an interpreter: .rodata strings, Py_Version, _PyRuntime.

    One PT_LOAD maps the whole file at VADDR; symbols in ``bss`` lie past its end.
    """
    rodata = b"\0" + b"".join(s + b"\0" for s in strings)
    rodata += bytes(-len(rodata) % 8)
    version_at = len(rodata)
    rodata += struct.pack("<Q", py_version or 0)
    names = [n for n, wanted in (("_PyRuntime", runtime), ("Py_Version", py_version)) if wanted]
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in [*names, *bss])
    shstrtab = b"\0.symtab\0.strtab\0.rodata\0.shstrtab\0"
    rodata_at = _HEADER.size + _PROGRAM.size
    symtab_at = rodata_at + len(rodata)
    symbols = [_SYMBOL.pack(0, 0, 0, 0, 0, 0)]
    for name in [*names, *bss]:
        value = VADDR + rodata_at + version_at if name == "Py_Version" else VADDR + 0x10_0000
        symbols.append(_SYMBOL.pack(strtab.index(name.encode() + b"\0"), 0x11, 0, 3, value, 8))
    symtab = b"".join(symbols)
    strtab_at = symtab_at + len(symtab)
    shstrtab_at = strtab_at + len(strtab)
    shoff = shstrtab_at + len(shstrtab)
    sections = [
        _SECTION.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        _SECTION.pack(1, 2, 0, 0, symtab_at, len(symtab), 2, 1, 8, _SYMBOL.size),
        _SECTION.pack(9, 3, 0, 0, strtab_at, len(strtab), 0, 0, 1, 0),
        _SECTION.pack(17, 1, 2, VADDR + rodata_at, rodata_at, len(rodata), 0, 0, 32, 0),
        _SECTION.pack(25, 3, 0, 0, shstrtab_at, len(shstrtab), 0, 0, 1, 0),
    ]
    size = shoff + len(sections) * _SECTION.size
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = _HEADER.pack(
        ident, 3, 62, 1, 0, _HEADER.size, shoff, 0, _HEADER.size, _PROGRAM.size, 1, 64, 5, 4
    )
    program = _PROGRAM.pack(1, 5, 0, VADDR, VADDR, size, size, 0x1000)
    data = header + program + rodata + symtab + strtab + shstrtab + b"".join(sections)
    return ElfSymbols.from_bytes(data)


@pytest.mark.parametrize(
    ("strings", "py_version", "expected"),
    [
        ((), 0x030B07F0, FileVersion((3, 11), free_threaded=False, source="Py_Version")),
        (
            (b"cpython-311", b".cpython-311-x86_64-linux-gnu.so"),
            0x030B07F0,
            FileVersion((3, 11), free_threaded=False, source="Py_Version"),
        ),
        (
            TAG_3_10,
            None,
            FileVersion((3, 10), free_threaded=False, source="its cache tag and extension suffix"),
        ),
        (
            (b"cpython-39", b".cpython-39-aarch64-linux-gnu.so"),
            None,
            FileVersion((3, 9), free_threaded=False, source=TAGS),
        ),
        (
            (b"cpython-313", b".cpython-313t-x86_64-linux-gnu.so"),
            0x030D00F0,
            FileVersion((3, 13), free_threaded=True, source="Py_Version"),
        ),
    ],
)
def test_a_nameless_interpreter_file_says_its_own_version(
    strings: tuple[bytes, ...], py_version: int | None, expected: FileVersion
) -> None:
    # GIVEN an interpreter file copied to a path whose name has no minor version
    with interpreter_file(strings, py_version) as elf:
        # WHEN / THEN its version is the one its data says
        assert file_version("/opt/app/bin/python3", elf) == expected
        assert file_version("/opt/app/bin/app-server", elf) == expected


@pytest.mark.parametrize(
    ("strings", "runtime"),
    [
        ((b"cpython-310",), True),  # a cache tag alone
        ((b".cpython-310-x86_64-linux-gnu.so",), True),  # an extension suffix alone
        (TAG_3_10, False),  # CPython's strings in a file without _PyRuntime
        ((b"xcpython-310", b"the .cpython-310-x86_64-linux-gnu.so"), True),  # not whole
        ((b"cpython-3", b".cpython-3-x86_64-linux-gnu.so"), True),
        ((b"pypy39", b".pypy39-pp73-x86_64-linux-gnu.so"), True),
        ((), True),
    ],
)
def test_a_file_that_says_no_version_is_not_guessed(
    strings: tuple[bytes, ...], runtime: bool
) -> None:
    with (
        interpreter_file(strings, runtime=runtime) as elf,
        pytest.raises(VersionError) as error,
    ):
        file_version("/opt/app/bin/python3", elf)
    # the reason is the one the readers gave before, and names what was tried
    assert str(error.value).startswith(
        "/opt/app/bin/python3 is not a CPython interpreter this reader knows (tried "
    )
    assert "Py_Version" in str(error.value)
    assert "cache tag" in str(error.value)


def test_a_name_without_a_version_and_no_file_is_unknown() -> None:
    with pytest.raises(VersionError, match="not a CPython interpreter this reader knows"):
        file_version("/usr/local/bin/python3", None)


@pytest.mark.parametrize(
    ("path", "strings", "py_version", "says"),
    [
        ("python3", TAG_3_10, 0x030B07F0, "Py_Version says 3.11, its cache tag cpython-310"),
        (
            "python3",
            (b"cpython-39", b".cpython-310-x86_64-linux-gnu.so"),
            None,
            "its cache tag cpython-39 says 3.9",
        ),
        ("python2", TAG_3_10, None, "its name python2 says 2"),
        ("python4", (), 0x030C00F0, "Py_Version says 3.12, its name python4 says 4"),
    ],
)
def test_versions_that_disagree_are_refused_saying_each(
    path: str, strings: tuple[bytes, ...], py_version: int | None, says: str
) -> None:
    with interpreter_file(strings, py_version) as elf, pytest.raises(VersionError) as error:
        file_version(f"/opt/{path}", elf)
    assert str(error.value).startswith(f"/opt/{path}: its versions disagree (")
    assert says in str(error.value)


def test_the_file_is_read_only_where_it_holds_bytes() -> None:
    # GIVEN an image whose _PyRuntime lies past its file (.bss)
    with interpreter_file(TAG_3_10, 0x030A0DF0, bss=("_bss",)) as elf:
        py_version = elf.symbol("Py_Version")
        assert py_version is not None
        bss = elf.symbol("_bss")
        assert bss is not None
        # WHEN / THEN what the file holds is read, what it does not is None, never zeros
        assert elf.read(py_version, 4) == struct.pack("<I", 0x030A0DF0)
        assert elf.read(bss, 4) is None
        assert elf.read(py_version, 1 << 20) is None
        # AND strings are whole, and only those of the section asked for
        assert elf.strings(b"cpython-3", ".rodata") == list(TAG_3_10)
        assert elf.strings(b"cpython-3", ".data") == []
        assert elf.strings(b"cpython-3", ".rodata", limit=1) == [TAG_3_10[0]]


REAL_FILES = [(9, TAGS), (10, TAGS), (11, "Py_Version"), (13, "Py_Version"), (None, "Py_Version")]
"""pyenv's libpython 3.X (shared builds), and Debian's python3.11 (None): statically linked."""


def real_file(minor: int | None) -> Path | None:
    if minor is None:
        return Path("/usr/bin/python3.11")
    python = pyenv_python(minor)
    if python is None:
        return None
    return python.resolve().parent.parent / "lib" / f"libpython3.{minor}.so.1.0"


@pytest.mark.parametrize(("minor", "source"), REAL_FILES)
def test_real_interpreter_files_say_their_version_under_any_name(
    minor: int | None, source: str
) -> None:
    real = real_file(minor)
    if real is None or not real.exists():
        pytest.skip(f"no {real or f'CPython 3.{minor}'} here")
    version = (3, minor or 11)
    with ElfSymbols(real) as elf:
        assert file_version("/opt/app/bin/python", elf) == FileVersion(
            version, free_threaded=False, source=source
        )
