"""Syscall numbers to names, for the syscall a loop thread slept in.

The kernel's own UAPI header for this architecture is the freshest table on
a Debian machine (linux-libc-dev); BCC's built-in table, which stops at
number 334 on x86_64, fills in when the header is missing.
"""

from __future__ import annotations

import functools
import platform
import re
from pathlib import Path

_DEFINE = re.compile(r"^#define\s+__NR_(\w+)\s+(\d+)\s*$", re.MULTILINE)
_HEADERS = {
    "x86_64": ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"),
    "aarch64": ("/usr/include/asm-generic/unistd.h",),
}


def parse_unistd(text: str) -> dict[int, str]:
    """``{number: name}`` from the ``#define __NR_name number`` lines of a unistd header."""
    return {int(number): name for name, number in _DEFINE.findall(text)}


@functools.cache
def _table() -> dict[int, str]:
    table: dict[int, str] = {}
    try:
        from bcc.syscall import syscalls  # noqa: PLC0415 - optional system package
    except ImportError:
        pass
    else:
        table.update({nr: name.decode() for nr, name in syscalls.items()})
    for candidate in _HEADERS.get(platform.machine(), ()):
        try:
            table.update(parse_unistd(Path(candidate).read_text()))
        except OSError:
            continue
        break
    return table


def syscall_name(nr: int) -> str | None:
    """Name of syscall ``nr``; None when the thread was not in a syscall (nr < 0)."""
    if nr < 0:
        return None
    return _table().get(nr, f"syscall_{nr}")
