"""The constants shared by the BPF C and Python have one source: kernel/constants.py."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from otel_blocksnoop.kernel import constants
from otel_blocksnoop.kernel.program import DetectorConfig, bpf_dir, program_cflags

CONFIG_NAMES = (
    "THRESHOLD_NS",
    "TARGET_TID",
    "STATS_MODE",
    "TRACK_ACTIVITY",
    "MAX_THREADS",
    "MAX_WATCHED",
    "RINGBUF_PAGES",
    "TRIGGER_NS",
    "TRIGGER_PAGES",
    "SEGMENTS",
    "MAX_LOOPS",
)


def c_text() -> str:
    return "\n".join((bpf_dir() / name).read_text() for name in ("detector.h", "detector.bpf.c"))


def header_defines() -> dict[str, str]:
    text = (bpf_dir() / "detector.h").read_text()
    return dict(re.findall(r"^#define[ \t]+(\w+)[ \t]+(.+?)[ \t]*$", text, re.MULTILINE))


def test_every_shared_constant_reaches_the_c_as_a_cflag() -> None:
    cflags = program_cflags(DetectorConfig(threshold_ns=1))
    for name, value in constants.CFLAGS_CONSTANTS.items():
        expected = f"-D{name}={value}" if value >= 0 else f"-D{name}=({value})"
        assert expected in cflags, name


@pytest.mark.parametrize("name", sorted(constants.CFLAGS_CONSTANTS))
def test_the_c_defines_no_cflag_constant_itself(name: str) -> None:
    text = c_text()
    assert not re.search(rf"^\s*#\s*define\s+{name}\b", text, re.MULTILINE), name
    assert not re.search(rf"\b{name}\s*=(?!=)", text), f"{name} is set in the C (an enum?)"


@pytest.mark.parametrize("name", sorted([*constants.CFLAGS_CONSTANTS, *CONFIG_NAMES]))
def test_the_c_refuses_to_compile_without_each_cflag(name: str) -> None:
    assert re.search(rf"^#ifndef {name}\n#error ", c_text(), re.MULTILINE), name


def test_the_array_sizes_kept_in_the_header_match_python() -> None:
    defines = header_defines()
    for name, value in constants.HEADER_CONSTANTS.items():
        assert int(defines[name]) == value, name


def test_python_and_the_header_share_no_other_name() -> None:
    # A constant the header defines that Python also has must be in HEADER_CONSTANTS.
    python_names = {name for name in vars(constants) if name.isupper()}
    assert set(header_defines()) & python_names == set(constants.HEADER_CONSTANTS)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_the_header_does_not_compile_without_the_cflags() -> None:
    header = bpf_dir() / "detector.h"
    base = ["gcc", "-fsyntax-only", "-x", "c", "-include", "linux/types.h"]
    without = subprocess.run([*base, str(header)], capture_output=True, text=True, check=False)
    assert without.returncode != 0
    assert "missing -D cflag" in without.stderr
    flags = constants.constant_cflags()
    subprocess.run([*base, *flags, str(header)], capture_output=True, text=True, check=True)


def test_the_kernel_is_built_for_the_sidecar_s_namespace_only_when_it_is_not_the_host_s() -> None:
    plain = program_cflags(DetectorConfig(threshold_ns=1))
    nested = program_cflags(DetectorConfig(threshold_ns=1, pidns=(4, 4026532176)))
    assert "-DPIDNS=0" in plain
    assert not any(flag.startswith("-DPIDNS_") for flag in plain)
    assert {"-DPIDNS=1", "-DPIDNS_DEV=4ULL", "-DPIDNS_INO=4026532176ULL"} <= set(nested)


def test_the_compiler_process_gets_the_sidecar_s_pid_namespace_as_sent() -> None:
    from otel_blocksnoop.kernel.compile import Request  # noqa: PLC0415

    config = DetectorConfig(threshold_ns=1, pidns=(4, 4026532176))
    assert Request.decode(Request(config, {}).encode()).config == config
    plain = DetectorConfig(threshold_ns=1)
    assert Request.decode(Request(plain, {}).encode()).config == plain
