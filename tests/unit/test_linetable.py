"""The location-table decoder against CPython's own answers for real code objects."""

from __future__ import annotations

import asyncio
import email.message
import json
import sys
import types
from collections.abc import Iterator

import pytest

from otel_blocksnoop.process.frames.linetable import LineTable, line_at, line_ranges


def code_objects(module: types.ModuleType) -> Iterator[types.CodeType]:
    """Every code object of a module's functions and classes, nested ones too."""
    pending = [
        value.__code__ for value in vars(module).values() if isinstance(value, types.FunctionType)
    ]
    for cls in (v for v in vars(module).values() if isinstance(v, type)):
        pending += [f.__code__ for f in vars(cls).values() if isinstance(f, types.FunctionType)]
    while pending:
        code = pending.pop()
        yield code
        pending += [c for c in code.co_consts if isinstance(c, types.CodeType)]


# Big stdlib modules with every construct: comprehensions, try/except, with,
# async, long lines, lines far apart (long and no-column forms), generated code.
MODULES = (asyncio.base_events, asyncio.tasks, email.message, json.decoder, pytest)
CODES = [code for module in MODULES for code in code_objects(module)]


def test_there_are_many_real_code_objects_to_compare_with() -> None:
    assert len(CODES) > 300
    assert sum(len(c.co_linetable) for c in CODES) > 20_000


def test_every_instruction_gets_the_line_cpython_gives_it() -> None:
    # GIVEN real code objects of this process and what co_positions() says of each code unit
    wrong = []
    for code in CODES:
        # WHEN our decoder reads the same table at the same unit
        table = LineTable(code.co_linetable, code.co_firstlineno)
        for unit, (line, *_) in enumerate(code.co_positions()):
            found = table.line(unit)
            # THEN it finds the same line (None where CPython has no location)
            if found != line:
                wrong.append((code.co_qualname, unit, found, line))
    assert wrong == []


def test_ranges_cover_the_code_as_co_lines_does() -> None:
    # GIVEN co_lines() of real code objects, spread to one line per code unit
    for code in CODES:
        expected: dict[int, int | None] = {}
        for start, end, line in code.co_lines():
            expected.update(dict.fromkeys(range(start // 2, end // 2), line))

        # WHEN our ranges are spread the same way
        found: dict[int, int | None] = {}
        for start, end, line in line_ranges(code.co_linetable, code.co_firstlineno):
            found.update(dict.fromkeys(range(start, end), line))

        # THEN they agree unit for unit, and end where the bytecode ends
        assert found == expected, code.co_qualname
        assert max(found, default=-1) + 1 == len(code.co_code) // 2


def test_the_long_and_no_location_forms_are_decoded() -> None:
    # GIVEN a function whose lines jump far (long form) and code with no location
    source = "def f(x):\n    try:\n        y = 1\n    finally:\n        x = 2\n"
    source += "\n" * 300 + "    return (x +\n        y)\n"
    namespace: dict[str, object] = {}
    exec(compile(source, "<jumps>", "exec"), namespace)  # noqa: S102 - our own source
    code = namespace["f"].__code__  # type: ignore[attr-defined]
    forms = {(b >> 3) & 15 for b in code.co_linetable if b & 0x80}
    # THEN both forms are in the table, and each unit's line is CPython's
    assert {14, 15} <= forms
    table = LineTable(code.co_linetable, code.co_firstlineno)
    lines = [table.line(unit) for unit in range(len(code.co_code) // 2)]
    assert lines == [p[0] for p in code.co_positions()]
    assert None in lines
    assert 307 in lines


def test_a_frame_not_started_is_on_the_first_line() -> None:
    code = test_a_frame_not_started_is_on_the_first_line.__code__
    assert line_at(code.co_linetable, code.co_firstlineno, -1) == code.co_firstlineno


@pytest.mark.parametrize(
    ("table", "why"),
    [
        (b"\x01\x02", "no entry starts with its top bit clear"),
        (bytes([0x80 | 14 << 3]), "a long form cut short"),
        (bytes([0x80 | 14 << 3, 0x40]), "a varint cut short"),
        (bytes([0x80 | 10 << 3, 5]), "a one-line form cut short"),
    ],
)
def test_a_table_that_is_not_one_gives_no_line(table: bytes, why: str) -> None:
    assert line_at(table, 10, 0) is None, why
    with pytest.raises(ValueError, match="entry"):
        list(line_ranges(table, 10))


def test_past_the_end_of_the_table_there_is_no_line() -> None:
    code = test_past_the_end_of_the_table_there_is_no_line.__code__
    assert line_at(code.co_linetable, code.co_firstlineno, len(code.co_code)) is None


def test_the_tests_run_on_a_version_with_this_table_format() -> None:
    assert sys.version_info >= (3, 11)
