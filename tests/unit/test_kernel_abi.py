"""The numbers and structs the loader hands the kernel are the kernel's own (its UAPI headers)."""

from __future__ import annotations

import ctypes
import subprocess

import pytest

from otel_blocksnoop.kernel import bpf_syscall, ringbuf, tracepoints
from otel_blocksnoop.kernel.bpf_syscall import InfoAttr, MapElemAttr, MapInfoC, parse_cpu_list
from otel_blocksnoop.kernel.syscalls import syscall_number
from otel_blocksnoop.kernel.tracepoints import PerfEventAttr

# C expression -> the Python value that must equal it.
CONSTANTS: dict[str, int] = {
    "BPF_MAP_LOOKUP_ELEM": bpf_syscall.BPF_MAP_LOOKUP_ELEM,
    "BPF_MAP_UPDATE_ELEM": bpf_syscall.BPF_MAP_UPDATE_ELEM,
    "BPF_MAP_DELETE_ELEM": bpf_syscall.BPF_MAP_DELETE_ELEM,
    "BPF_MAP_GET_NEXT_KEY": bpf_syscall.BPF_MAP_GET_NEXT_KEY,
    "BPF_OBJ_GET_INFO_BY_FD": bpf_syscall.BPF_OBJ_GET_INFO_BY_FD,
    "BPF_ANY": bpf_syscall.BPF_ANY,
    "BPF_NOEXIST": bpf_syscall.BPF_NOEXIST,
    "BPF_EXIST": bpf_syscall.BPF_EXIST,
    "BPF_MAP_TYPE_HASH": bpf_syscall.BPF_MAP_TYPE_HASH,
    "BPF_MAP_TYPE_ARRAY": bpf_syscall.BPF_MAP_TYPE_ARRAY,
    "BPF_MAP_TYPE_PERCPU_HASH": bpf_syscall.BPF_MAP_TYPE_PERCPU_HASH,
    "BPF_MAP_TYPE_PERCPU_ARRAY": bpf_syscall.BPF_MAP_TYPE_PERCPU_ARRAY,
    "BPF_MAP_TYPE_LRU_PERCPU_HASH": 10,
    "BPF_MAP_TYPE_RINGBUF": bpf_syscall.BPF_MAP_TYPE_RINGBUF,
    "BPF_OBJ_NAME_LEN": bpf_syscall.BPF_OBJ_NAME_LEN,
    "BPF_PROG_TYPE_TRACEPOINT": 5,
    "BPF_RINGBUF_BUSY_BIT": ringbuf.BPF_RINGBUF_BUSY_BIT,
    "BPF_RINGBUF_DISCARD_BIT": ringbuf.BPF_RINGBUF_DISCARD_BIT,
    "BPF_RINGBUF_HDR_SZ": ringbuf.BPF_RINGBUF_HDR_SZ,
    "PERF_TYPE_TRACEPOINT": tracepoints.PERF_TYPE_TRACEPOINT,
    "PERF_FLAG_FD_CLOEXEC": tracepoints.PERF_FLAG_FD_CLOEXEC,
    "PERF_EVENT_IOC_ENABLE": tracepoints.PERF_EVENT_IOC_ENABLE,
    "PERF_EVENT_IOC_SET_BPF": tracepoints.PERF_EVENT_IOC_SET_BPF,
    "PERF_ATTR_SIZE_VER7": tracepoints.PERF_ATTR_SIZE,
    "__NR_bpf": syscall_number("bpf"),
    "__NR_perf_event_open": syscall_number("perf_event_open"),
    # Offsets of the fields we fill, in the kernel's structs.
    "offsetof(union bpf_attr, map_fd)": MapElemAttr.map_fd.offset,
    "offsetof(union bpf_attr, key)": MapElemAttr.key.offset,
    "offsetof(union bpf_attr, value)": MapElemAttr.value.offset,
    "offsetof(union bpf_attr, flags)": MapElemAttr.flags.offset,
    "offsetof(union bpf_attr, info.bpf_fd)": InfoAttr.bpf_fd.offset,
    "offsetof(union bpf_attr, info.info_len)": InfoAttr.info_len.offset,
    "offsetof(union bpf_attr, info.info)": InfoAttr.info.offset,
    **{
        f"offsetof(struct bpf_map_info, {name})": getattr(MapInfoC, name).offset
        for name, *_ in MapInfoC._fields_
    },
    **{
        f"offsetof(struct perf_event_attr, {name})": getattr(PerfEventAttr, name).offset
        for name, *_ in PerfEventAttr._fields_
        if name not in ("flags", "rest")
    },
    # The flag word: the 8 bytes after read_format hold the bit fields, "disabled" first.
    "offsetof(struct perf_event_attr, read_format) + 8": PerfEventAttr.flags.offset,
}


@pytest.fixture(scope="module")
def c_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Each of ``CONSTANTS``' C expressions, evaluated by the compiler against the UAPI headers."""
    headers = ("stdio.h", "stddef.h", "sys/syscall.h", "linux/bpf.h", "linux/perf_event.h")
    lines = [*(f"#include <{header}>" for header in headers), "int main(void) {"]
    lines.extend(f'printf("%lld\\n", (long long)({expression}));' for expression in CONSTANTS)
    lines.append("return 0; }")
    work = tmp_path_factory.mktemp("abi")
    source = work / "abi.c"
    source.write_text("\n".join(lines))
    binary = work / "abi"
    subprocess.run(["gcc", "-o", str(binary), str(source)], check=True)
    output = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    return dict(zip(CONSTANTS, map(int, output.split()), strict=True))


@pytest.mark.parametrize("expression", list(CONSTANTS))
def test_our_value_is_the_kernel_headers_value(c_values: dict[str, int], expression: str) -> None:
    assert CONSTANTS[expression] == c_values[expression]


def test_the_structs_we_pass_have_the_kernels_sizes() -> None:
    assert ctypes.sizeof(MapElemAttr) == 32
    assert ctypes.sizeof(InfoAttr) == 16
    assert ctypes.sizeof(PerfEventAttr) == tracepoints.PERF_ATTR_SIZE


def test_cpu_lists_are_read_as_the_kernel_writes_them() -> None:
    assert parse_cpu_list("0-1\n") == [0, 1]
    assert parse_cpu_list("0") == [0]
    assert parse_cpu_list("0-2,4,6-7") == [0, 1, 2, 4, 6, 7]
