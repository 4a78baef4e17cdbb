"""The ctypes mirrors must match the C structs byte for byte."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest

from otel_blocksnoop.kernel import histogram
from otel_blocksnoop.kernel.constants import constant_cflags
from otel_blocksnoop.kernel.layout import (
    ActivityC,
    BlockEventC,
    IterExtremesC,
    LoopContextC,
    SegmentC,
    SegmentsC,
    SleepSlotC,
    ThreadStateC,
    TriggerEventC,
    WatchStateC,
)
from otel_blocksnoop.kernel.program import bpf_dir

MIRRORS: dict[str, type[ctypes.Structure]] = {
    "block_event": BlockEventC,
    "trigger_event": TriggerEventC,
    "thread_state": ThreadStateC,
    "iter_extremes": IterExtremesC,
    "activity": ActivityC,
    "sleep_slot": SleepSlotC,
    "watch_state": WatchStateC,
    "segment": SegmentC,
    "segments": SegmentsC,
    "loop_context": LoopContextC,
}


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """sizeof/offsetof of every mirrored struct, and the header's constants, from the compiler."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>",
             '#include "detector.h"', "int main(void) {"]  # fmt: skip
    for struct, mirror in MIRRORS.items():
        lines.append(f'printf("{struct} %zu\\n", sizeof(struct {struct}));')
        for name, *_ in mirror._fields_:
            lines.append(f'printf("{struct}.{name} %zu\\n", offsetof(struct {struct}, {name}));')
    lines.extend(
        f'printf("{constant} %d\\n", (int)({constant}));'
        for constant in ("HIST_SUB_BITS", "HIST_MAX_LOG2", "HIST_BUCKETS", "COMM_LEN")
    )
    lines.append("return 0; }")
    work = tmp_path_factory.mktemp("layout")
    source = work / "layout.c"
    source.write_text("\n".join(lines))
    binary = work / "layout"
    flags = [f"-I{bpf_dir()}", *constant_cflags()]  # what BCC gets too
    subprocess.run(["gcc", *flags, "-o", str(binary), str(source)], check=True)
    output = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in (line.split() for line in output.splitlines())}


@pytest.mark.parametrize("struct", sorted(MIRRORS))
def test_ctypes_mirror_has_the_c_size_and_offsets(c_layout: dict[str, int], struct: str) -> None:
    mirror = MIRRORS[struct]
    assert ctypes.sizeof(mirror) == c_layout[struct]
    for name, *_ in mirror._fields_:
        assert getattr(mirror, name).offset == c_layout[f"{struct}.{name}"], name


def test_histogram_constants_agree_with_the_c_header(c_layout: dict[str, int]) -> None:
    assert c_layout["HIST_SUB_BITS"] == histogram.SUB_BITS
    assert c_layout["HIST_MAX_LOG2"] == histogram.MAX_LOG2
    assert c_layout["HIST_BUCKETS"] == histogram.BUCKETS


def test_bpf_sources_are_found() -> None:
    assert (bpf_dir() / "detector.bpf.c").is_file()
    assert isinstance(bpf_dir(), Path)
