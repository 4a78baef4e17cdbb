"""Syscall numbers to names."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from otel_blocksnoop.kernel.syscalls import syscall_name
from scripts.gen_syscall_names import HEADERS, parse_unistd
from tests.helpers import ROOT


def test_unistd_defines_are_parsed_and_other_lines_ignored() -> None:
    text = (
        "#ifndef _ASM_UNISTD_64_H\n"
        "#define __NR_read 0\n"
        "#define __NR_epoll_pwait2 441\n"
        "#define __NR_syscalls (__NR_futex_waitv + 1)\n"
    )
    assert parse_unistd(text) == {0: "read", 441: "epoll_pwait2"}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 numbers")
def test_names_cover_old_and_recent_x86_64_syscalls() -> None:
    assert syscall_name(0) == "read"
    assert syscall_name(202) == "futex"
    assert syscall_name(230) == "clock_nanosleep"
    assert syscall_name(61) == "wait4"
    assert syscall_name(441) == "epoll_pwait2"


def test_not_in_a_syscall_has_no_name_and_unknown_numbers_say_their_number() -> None:
    assert syscall_name(-1) is None
    assert syscall_name(99_999) == "syscall_99999"


def test_names_come_from_the_generated_table_without_importing_bcc() -> None:
    # GIVEN a fresh interpreter (bcc would map LLVM and clang into it)
    code = (
        "import sys\n"
        "from otel_blocksnoop.kernel.syscalls import syscall_name\n"
        "assert syscall_name(230) in ('clock_nanosleep', 'syscall_230')\n"
        "print('bcc' in sys.modules)\n"
    )
    # WHEN it names a syscall
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    # THEN bcc was never imported
    assert result.stdout.strip() == "False"


def test_the_generated_table_is_up_to_date() -> None:
    # GIVEN the unistd headers
    if not all(header.exists() for header in HEADERS.values()):
        pytest.skip("needs the kernel's UAPI headers (linux-libc-dev)")
    # WHEN the generator compares its output with the committed module
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_syscall_names.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    # THEN nothing differs
    assert result.returncode == 0, result.stderr
