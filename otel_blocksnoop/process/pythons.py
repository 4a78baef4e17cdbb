"""What the name of a Python executable or libpython says: its version and build, parsed once.

The target check (is it Python?), the identity (which version?) and the
context reader (which layout?) read the same names (``python3.11``,
``python3.13t``, ``libpython3.12.so.1.0``) with this one parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

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


__all__ = ["PythonName", "is_interpreter_name", "mapped_libpythons", "python_name"]
