"""Line numbers from a code object's location table (``co_linetable``, CPython 3.11+).

The table is read from the target as bytes and decoded here, in pure Python,
so that the line of an interpreter frame is found without the target's help.
Format (CPython's Objects/locations.md, unchanged from 3.11 to 3.14): a run
of entries, each starting with a byte whose top bit is set; bits 3-6 are the
entry's code, bits 0-2 its length in code units minus one. Codes 0-9 (short
form) and 10-12 (one-line forms) move the line by 0 and by code - 10; 13 (no
columns) and 14 (long form) by a signed varint; 15 means "no location".
A table that does not decode (torn, truncated, not a table) gives None.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator

_NO_LOCATION = 15
_LONG = 14
_NO_COLUMNS = 13
_ONE_LINE = 10


class _TruncatedError(Exception):
    """The table ended inside an entry."""


class _Cursor:
    """Reads the table's bytes and varints, refusing to run past its end."""

    def __init__(self, table: bytes) -> None:
        self.table = table
        self.at = 0

    def byte(self) -> int:
        if self.at >= len(self.table):
            raise _TruncatedError
        value = self.table[self.at]
        self.at += 1
        return value

    def varint(self) -> int:
        """6-bit chunks, least significant first; bit 6 says another chunk follows."""
        chunk = self.byte()
        value = chunk & 0x3F
        shift = 6
        while chunk & 0x40:
            chunk = self.byte()
            value |= (chunk & 0x3F) << shift
            shift += 6
        return value

    def svarint(self) -> int:
        value = self.varint()
        return -(value >> 1) if value & 1 else value >> 1


def line_ranges(table: bytes, first_line: int) -> Iterator[tuple[int, int, int | None]]:
    """(start, end, line) of each entry, in code units; line None where there is none.

    Raises ValueError on a table that is not one (an entry without its top
    bit, or one cut short).
    """
    cursor = _Cursor(table)
    line = first_line
    start = 0
    try:
        while cursor.at < len(table):
            head = cursor.byte()
            if not head & 0x80:
                msg = f"byte {cursor.at - 1} does not start an entry"
                raise ValueError(msg)
            code = (head >> 3) & 0x0F
            end = start + (head & 0x07) + 1
            if code == _NO_LOCATION:
                yield start, end, None
                start = end
                continue
            if code == _LONG:
                line += cursor.svarint()
                cursor.varint(), cursor.varint(), cursor.varint()  # end line, columns
            elif code == _NO_COLUMNS:
                line += cursor.svarint()
            elif code >= _ONE_LINE:
                line += code - _ONE_LINE
                cursor.byte(), cursor.byte()  # start and end column
            else:
                cursor.byte()  # the short form's second column byte
            yield start, end, line
            start = end
    except _TruncatedError:
        msg = "the table ends inside an entry"
        raise ValueError(msg) from None


class LineTable:
    """One code object's table, decoded once: the line of any code unit by bisection.

    Decoded once per code object and kept (``frames.reader``), since a
    stack read asks for the line of each frame's instruction every time.
    """

    __slots__ = ("_ends", "_first_line", "_lines", "_starts")

    def __init__(self, table: bytes, first_line: int) -> None:
        """Raises ValueError when ``table`` does not decode."""
        ranges = list(line_ranges(table, first_line))
        self._first_line = first_line
        self._starts = [start for start, _, _ in ranges]
        self._ends = [end for _, end, _ in ranges]
        self._lines = [line for _, _, line in ranges]

    def line(self, unit: int) -> int | None:
        """The line of the instruction at code unit ``unit`` (CPython's ``PyCode_Addr2Line``).

        A negative ``unit`` (a frame not yet started) is the first line, as in
        CPython; None when the instruction has no location or lies past the table.
        """
        if unit < 0:
            return self._first_line
        index = bisect_right(self._starts, unit) - 1
        if index < 0 or unit >= self._ends[index]:
            return None
        return self._lines[index]


def line_at(table: bytes, first_line: int, unit: int) -> int | None:
    """The line at code unit ``unit`` of a table decoded for one question; None if undecodable."""
    try:
        return LineTable(table, first_line).line(unit)
    except ValueError:
        return None


__all__ = ["LineTable", "line_at", "line_ranges"]
