"""Which CPython a file is: what its name says, parsed once, else what its own data says.

The target check (is it Python?), the identity (which version?) and the
context and frame readers (which layout?) read the same names
(``python3.11``, ``python3.13t``, ``libpython3.12.so.1.0``) with this one
parser. A name without the minor version (``python3`` of a venv made with
``--copies``, a renamed or statically linked interpreter) is not a guess:
``file_version`` then reads it from the interpreter file itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from otel_blocksnoop.process.elf import ElfSymbols

_NAME = re.compile(r"(lib)?python(?:([0-9]+)(?:\.([0-9]+))?)?([dmut]*)")
"""``python``, then an optional major[.minor] version, then CPython's ABI flags.

ASCII digits only: a ``\\d`` would also read Arabic-Indic digits as a version.
"""


@dataclass(frozen=True, slots=True)
class PythonName:
    """What one file name says of the Python it belongs to."""

    major: int | None
    minor: int | None
    abiflags: str  # right after the version: "t" free-threaded, "d" debug, "m"/"u" (before 3.8)
    library: bool  # the name starts with "libpython": a shared libpython
    whole: bool  # the name is only that: "python3.11", not "python3.11-config" or "uwsgi"

    @property
    def version(self) -> tuple[int, int] | None:
        """(major, minor), when the name gives both."""
        if self.major is None or self.minor is None:
            return None
        return self.major, self.minor

    @property
    def free_threaded(self) -> bool:
        return self.abiflags.startswith("t")


def python_name(path: str) -> PythonName | None:
    """What the last part of ``path`` says, from its first "python"; None when it has none."""
    name = path.rpartition("/")[2]
    match = _NAME.search(name)
    if match is None:
        return None
    lib, major, minor, abiflags = match.groups()
    return PythonName(
        major=int(major) if major else None,
        minor=int(minor) if minor else None,
        abiflags=abiflags,
        library=lib is not None and match.start() == 0,
        whole=match.start() == 0 and match.end() == len(name),
    )


def is_interpreter_name(path: str) -> bool:
    """An interpreter's executable by its name: ``python``, ``python3``, ``python3.11d``.

    Free-threaded names (``python3.13t``) are not: such a process counts as
    Python only through a mapped libpython.
    """
    name = python_name(path)
    return name is not None and name.whole and not name.library and "t" not in name.abiflags


def mapped_libpythons(maps: str) -> Iterator[PythonName]:
    """The libpython files (``libpython3``, ``libpython3.11``...) in /proc/PID/maps, in order."""
    for line in maps.splitlines():
        name = python_name(line)
        if name is not None and name.library and name.major is not None:
            yield name


_CACHE_TAG = re.compile(rb"cpython-3([0-9]{1,2})()")
"""``sys.implementation.cache_tag`` (``cpython-310``): a literal of Python/sysmodule.c."""
_EXTENSION_SUFFIX = re.compile(rb"\.cpython-3([0-9]{1,2})([a-z]*)-[A-Za-z0-9_.-]+\.so")
"""The extension module suffix (``.cpython-310-x86_64-linux-gnu.so``, ``"." SOABI ".so"``
in Python/dynload_shlib.c); its ABI flags say a free-threaded build (``t``)."""
_VERSION_SECTION = ".rodata"
TRIED = (
    "the version in its name; in its file, _PyRuntime with Py_Version "
    "or the cpython-3X cache tag and extension suffix"
)
"""What ``file_version`` tries, in the message that says none of it gave a version."""


class VersionError(Exception):
    """An interpreter file gives no version, or two that disagree; the message says which."""


@dataclass(frozen=True, slots=True)
class FileVersion:
    """Which CPython an interpreter file is, and what said so."""

    version: tuple[int, int]
    free_threaded: bool
    source: str  # "its name", "Py_Version", "its cache tag and extension suffix"


@dataclass(frozen=True, slots=True)
class _Said:
    """One thing that tells the version: what it is, as found, and the version it gives."""

    kind: str  # "Py_Version", "cache tag", "extension suffix", "name"
    found: str
    major: int
    minor: int | None  # None: a name that gives only the major version
    abiflags: str = ""

    def __str__(self) -> str:
        minor = "" if self.minor is None else f".{self.minor}"
        return f"{self.found} says {self.major}{minor}"


def not_known(path: str) -> str:
    """Why ``path`` is no CPython ``file_version`` knows, naming what was tried."""
    return f"{path} is not a CPython interpreter this reader knows (tried {TRIED})"


def file_version(path: str, elf: ElfSymbols | None) -> FileVersion:
    """The CPython version of the interpreter file at ``path``: from its name, else its data.

    A name with major.minor (``python3.11``, ``libpython3.12.so.1.0``) is
    taken as it is, and ``elf`` may be None. Else the file (``elf``) says it,
    if it defines ``_PyRuntime`` (only then are its strings a CPython's):
    ``Py_Version`` (PY_VERSION_HEX, 3.11+), or both the cache tag and the
    extension suffix CPython names its own files with (every 3.x, and the
    only source on 3.9 and 3.10: no symbol holds their version, and their
    ``PY_VERSION`` string is not always one of its own, the linker may keep
    it only as the tail of a longer string). All that is found must agree,
    with each other and with a major version the name gives. VersionError
    otherwise.
    """
    name = python_name(path)
    if name is not None and name.version is not None:
        return FileVersion(name.version, name.free_threaded, "its name")
    unknown = not_known(path)
    if elf is None or elf.symbol("_PyRuntime") is None:
        raise VersionError(unknown)
    said = _said_by(elf)
    if name is not None and name.major is not None:
        said.append(_Said("name", f"its name {path.rpartition('/')[2]}", name.major, None))
    versions = {(s.major, s.minor) for s in said if s.minor is not None}
    if len({s.major for s in said}) > 1 or len(versions) > 1:
        raise VersionError(f"{path}: its versions disagree ({', '.join(map(str, said))})")
    kinds = {s.kind for s in said}
    if "Py_Version" in kinds:
        source = "Py_Version"
    elif {"cache tag", "extension suffix"} <= kinds:
        source = "its cache tag and extension suffix"
    else:
        raise VersionError(unknown)
    (version,) = versions
    return FileVersion(version, any("t" in s.abiflags for s in said), source)


def _said_by(elf: ElfSymbols) -> list[_Said]:
    """Every version the file's data tells: its Py_Version, cache tags and extension suffixes."""
    said = []
    symbol = elf.symbol("Py_Version")
    raw = elf.read(symbol, 4) if symbol is not None else None
    if raw is not None:
        hex_version = int.from_bytes(raw, "little")
        said.append(_Said("Py_Version", "Py_Version", hex_version >> 24, hex_version >> 16 & 0xFF))
    for string in elf.strings(b"cpython-3", _VERSION_SECTION):  # one scan finds both kinds
        for kind, pattern in (("cache tag", _CACHE_TAG), ("extension suffix", _EXTENSION_SUFFIX)):
            if (match := pattern.fullmatch(string)) is not None:
                minor, abiflags = int(match.group(1)), match.group(2).decode()
                said.append(_Said(kind, f"its {kind} {string.decode()}", 3, minor, abiflags))
    return said


__all__ = [
    "TRIED",
    "FileVersion",
    "PythonName",
    "VersionError",
    "file_version",
    "is_interpreter_name",
    "mapped_libpythons",
    "not_known",
    "python_name",
]
