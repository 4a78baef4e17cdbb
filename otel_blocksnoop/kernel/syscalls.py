"""Syscall numbers to names, for the syscall a loop thread slept in.

The table is generated once from the kernel's UAPI unistd headers
(``syscall_names``, scripts/gen_syscall_names.py): naming needs neither the
headers on the host nor bcc, whose import would map libbcc, LLVM and clang
into the sidecar (BENCHMARKS.md "Memory"). A number past the table (a
syscall newer than the headers) is named by its number.
"""

from __future__ import annotations

import platform

from otel_blocksnoop.kernel.syscall_names import SYSCALL_NAMES

_TABLE = SYSCALL_NAMES.get(platform.machine(), {})


NO_SYSCALL = -100
"""A number no syscall has (and not -1, which says "not in a syscall")."""


def syscall_number(name: str) -> int:
    """Number of syscall ``name`` on this machine; NO_SYSCALL if it has none."""
    for nr, known in _TABLE.items():
        if known == name:
            return nr
    return NO_SYSCALL


def syscall_name(nr: int) -> str | None:
    """Name of syscall ``nr``; None when the thread was not in a syscall (nr < 0)."""
    if nr < 0:
        return None
    return _TABLE.get(nr, f"syscall_{nr}")
