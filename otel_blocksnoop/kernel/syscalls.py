"""Syscall numbers to names, for the syscall a loop thread slept in.

The kernel's own UAPI header for this architecture is the freshest table on
a Debian machine (linux-libc-dev); BCC's built-in table, which stops at
number 334 on x86_64, stands in only when the header is missing (it names
the same numbers alike).
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
    for candidate in _HEADERS.get(platform.machine(), ()):
        try:
            return parse_unistd(Path(candidate).read_text())
        except OSError:
            continue
    # Only without the header: importing bcc maps libbcc, LLVM and clang into
    # this process (about 60 MiB resident, BENCHMARKS.md "Memory").
    try:
        from bcc.syscall import syscalls  # noqa: PLC0415 - optional system package
    except ImportError:
        return {}
    return {nr: name.decode() for nr, name in syscalls.items()}


def syscall_name(nr: int) -> str | None:
    """Name of syscall ``nr``; None when the thread was not in a syscall (nr < 0)."""
    if nr < 0:
        return None
    return _table().get(nr, f"syscall_{nr}")
