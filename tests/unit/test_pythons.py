"""One parser of Python executable and libpython names, and what each of its callers makes of it."""

from __future__ import annotations

import os

import pytest

from otel_blocksnoop.process.identity import runtime_version
from otel_blocksnoop.process.pythons import (
    PythonName,
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
        ("/usr/bin/python3.11", "3.11"),
        ("/opt/bin/python3.13t", "3.13"),
        ("/usr/lib/libpython3.10.so.1.0", "3.10"),
        ("/usr/bin/uwsgi-python3.12", "3.12"),
    ],
)
def test_identity_version_from_the_executable_name(executable: str, expected: str) -> None:
    assert runtime_version(os.getpid(), executable) == expected


def test_the_identity_version_of_a_process_gone_is_unknown() -> None:
    assert runtime_version(2**22 + 12345, "/usr/bin/uwsgi") is None


def test_a_python_executable_is_python_without_reading_its_maps() -> None:
    # GIVEN a PID that does not exist: its maps cannot be read
    # WHEN / THEN an interpreter's name is enough
    assert is_python(2**22 + 12345, "/usr/bin/python3.11")
