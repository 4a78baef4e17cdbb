"""The detector loaded by a child process, held here by fds: attach, maps, ring buffer, no bcc."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from otel_blocksnoop.cli import parse_arguments
from otel_blocksnoop.errors import BpfLoadError, ExitCode
from otel_blocksnoop.events import NS_PER_MS, BlockEvent
from otel_blocksnoop.kernel import bpf_syscall, loader
from otel_blocksnoop.kernel.bpf_map import u32
from otel_blocksnoop.kernel.bpf_syscall import BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_RINGBUF
from otel_blocksnoop.kernel.constants import COUNTER_ITERATIONS, WATCH_ROOT
from otel_blocksnoop.kernel.decode import block_event_from_c
from otel_blocksnoop.kernel.detector import EPOLL_SYSCALLS
from otel_blocksnoop.kernel.layout import BlockEventC, ThreadStateC, WatchStateC
from otel_blocksnoop.kernel.program import DetectorConfig, program_source
from otel_blocksnoop.kernel.ringbuf import record_as
from otel_blocksnoop.kernel.thread_table import ThreadTable
from otel_blocksnoop.kernel.tracepoints import tracepoint_exists
from tests.helpers import WAIT_S, Target, matching_block, run_raw, truth

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

THRESHOLD_MS = 50
TOLERANCE_NS = 20 * NS_PER_MS  # generous: precision is measured in bench/, not here


def epoll_tracepoints() -> list[tuple[str, str]]:
    """(function, tracepoint) for each epoll variant this kernel has, as Detector attaches them."""
    pairs = []
    for name in EPOLL_SYSCALLS:
        if tracepoint_exists("syscalls", f"sys_enter_{name}"):
            pairs.append(("on_epoll_enter", f"syscalls:sys_enter_{name}"))
            pairs.append(("on_epoll_exit", f"syscalls:sys_exit_{name}"))
    return pairs


@dataclass
class Watching:
    """The loaded detector, and the blocks its ring buffer handed over (decoded like Detector)."""

    program: loader.LoadedProgram
    events: list[BlockEvent] = field(default_factory=list)

    def on_record(self, raw: bytes) -> None:
        self.events.append(block_event_from_c(record_as(BlockEventC, raw), with_activity=True))


@pytest.fixture(scope="module")
def loaded() -> Iterator[Watching]:
    """The detector (cause tracking on, -t 50) loaded by the child and attached here, once."""
    with loader.load(DetectorConfig(threshold_ns=THRESHOLD_MS * NS_PER_MS)) as program:
        program.attach(epoll_tracepoints())
        watching = Watching(program)
        program.ring_buffer("events", watching.on_record)
        yield watching


@pytest.fixture
def watching(loaded: Watching) -> Watching:
    """The module's detector with no blocks left over from an earlier test."""
    loaded.program.consume()
    loaded.events.clear()
    return loaded


def watch(program: loader.LoadedProgram, pid: int) -> None:
    program.map("watched").update(u32(pid), bytes(WatchStateC(how=WATCH_ROOT)))


def poll_until_exit(program: loader.LoadedProgram, target: Target) -> None:
    """Hand over blocks while the target runs, then the last ones; fail if it outlives WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while target.process.poll() is None:
        assert time.monotonic() < deadline, "the target did not finish"
        program.poll(100)
    program.consume()


def test_the_child_hands_over_every_map_and_program_of_the_detector() -> None:
    # GIVEN the detector compiled by the child
    with loader.load(DetectorConfig(threshold_ns=10 * NS_PER_MS, activity=False)) as loaded:
        # THEN this process holds its maps, described by the kernel, and its programs
        maps = loaded.maps
        assert maps["events"].type == BPF_MAP_TYPE_RINGBUF
        assert maps["events"].max_entries == 256 * 4096
        assert maps["threads"].type == BPF_MAP_TYPE_HASH
        assert (maps["threads"].key_size, maps["threads"].value_size) == (
            4,
            ctypes.sizeof(ThreadStateC),
        )
        assert maps["watched"].value_size == ctypes.sizeof(WatchStateC)
        assert {"on_epoll_enter", "on_epoll_exit"} <= set(loaded.programs)
        assert "tracepoint__sched__sched_process_fork" in loaded.programs
        assert loaded.load_s > 0
        fds = [loaded.map_fd(name) for name in maps]
    # AND closing releases every fd
    for fd in fds:
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)


def test_this_process_never_imports_bcc_nor_maps_llvm() -> None:
    # GIVEN a fresh interpreter that loads, attaches and reads through the loader only
    code = """
import json, sys
from otel_blocksnoop.kernel import bpf_syscall, loader
from otel_blocksnoop.kernel.program import DetectorConfig, program_source
from otel_blocksnoop.kernel.thread_table import ThreadTable
with loader.load(DetectorConfig(threshold_ns=10_000_000)) as program:
    attached = program.attach([("on_epoll_enter", "syscalls:sys_enter_epoll_wait")])
    program.ring_buffer("events", lambda raw: None)
    program.poll(10)
    program.map("counters").sum_u64(bytes(4))
    maps = open("/proc/self/maps").read()
    print(json.dumps({
        "bcc": "bcc" in sys.modules,
        "mapped": [name for name in ("libbcc", "libLLVM", "libclang") if name in maps],
        "attached": attached,
    }))
"""
    # WHEN it runs
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=WAIT_S
    )
    # THEN it attached, and neither bcc nor its libraries were ever in it
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["bcc"] is False
    assert seen["mapped"] == []
    assert "syscalls:sys_enter_epoll_wait" in seen["attached"]
    assert "sched:sched_switch" in seen["attached"]


def test_the_running_sidecar_never_maps_bcc_nor_llvm() -> None:
    # GIVEN an app launched by the sidecar that looks at its parent once watched
    code = """
import json, os
parent = os.getppid()
maps = open(f"/proc/{parent}/maps").read()
print(json.dumps({
    "parent": open(f"/proc/{parent}/cmdline").read().split("\\0"),
    "mapped": [name for name in ("libbcc", "libLLVM", "libclang") if name in maps],
}))
"""
    # WHEN the sidecar runs it
    result = run_raw("-q", "--no-stacks", "--", sys.executable, "-c", code)
    # THEN its parent is the sidecar, holding the program without BCC's libraries
    assert result.returncode == 0, result.stderr
    seen = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert "otel_blocksnoop" in seen["parent"]
    assert seen["mapped"] == []


@pytest.mark.parametrize("scenario", ["sleep", "cpu", "read"])
def test_blocks_of_an_asyncio_app_arrive_through_the_ring_buffer(
    tmp_path: Path, watching: Watching, scenario: str
) -> None:
    # GIVEN a running asyncio app watched through the map, held until then
    program = watching.program
    target = Target(tmp_path, scenario)
    try:
        watch(program, target.pid)
        # WHEN it blocks its loop once (~120 ms) and exits
        target.go()
        poll_until_exit(program, target)
    finally:
        target.stop()
    # THEN that block arrived on the loop thread, timed like the app timed it
    (expected,) = truth(target.out)
    blocks = [
        e for e in watching.events if e.pid == target.pid and e.end_reason.value == "returned"
    ]
    as_records = [
        {"tid": e.tid, "start_monotonic_ns": e.start_ns, "end_monotonic_ns": e.end_ns}
        for e in blocks
    ]
    block = matching_block(as_records, expected)
    true_ns = expected["end_ns"] - expected["start_ns"]
    reported_ns = block["end_monotonic_ns"] - block["start_monotonic_ns"]
    assert true_ns <= reported_ns < true_ns + TOLERANCE_NS
    assert len(blocks) == 1
    # AND the cause the kernel booked came through the record too
    (event,) = blocks
    assert event.activity is not None
    if scenario == "sleep":
        assert [s.syscall for s in event.activity.sleeps] == ["clock_nanosleep"]
    if scenario == "cpu":
        assert event.activity.on_cpu_ns > event.activity.sleep_ns


def test_the_thread_table_and_counters_read_through_bpf_syscalls(
    tmp_path: Path, watching: Watching
) -> None:
    # GIVEN a watched asyncio app that blocks once, then idles in epoll
    program = watching.program
    target = Target(tmp_path, "sleep", "--linger", "30")
    try:
        watch(program, target.pid)
        target.go()
        threads = program.map("threads")
        deadline = time.monotonic() + WAIT_S
        state = None
        # WHEN its loop has entered epoll since it was watched
        while state is None or state.entered_epoll_ns == 0:
            assert time.monotonic() < deadline, "the loop thread never showed in the table"
            program.poll(20)
            raw = threads.lookup(u32(target.pid))
            state = ThreadStateC.from_buffer_copy(raw) if raw is not None else None
        # THEN its entry is there, keyed by tid, with its process and loop iterations
        assert state.tgid == target.pid
        assert u32(target.pid) in set(threads.keys())
        # AND a batched read finds it too, the kernel's cursor taken one element at a time
        assert u32(target.pid) in {key for key, _ in threads.items_batched(chunk=1)}
        # AND a reader written for libbcc's bpf_lookup_elem (ctypes.byref) reads it alike
        key, by_ref = ctypes.c_uint32(target.pid), ThreadStateC()
        assert bpf_syscall.lookup_elem(threads.fd, ctypes.byref(key), ctypes.byref(by_ref)) == 0
        assert by_ref.tgid == target.pid
        # AND the sidecar's thread table reader, given the map, sees the loop thread
        table = ThreadTable(threads)
        assert table.get(target.pid) is not None
        assert target.pid in {times.tid for times in table.snapshot(THRESHOLD_MS * NS_PER_MS).times}
        assert program.map("counters").sum_u64(u32(COUNTER_ITERATIONS)) > 0
    finally:
        target.stop()


def test_a_program_that_does_not_build_fails_in_the_parent_with_the_compilers_reason() -> None:
    # GIVEN a ring buffer size the kernel refuses (not a power-of-two number of pages)
    config = DetectorConfig(threshold_ns=NS_PER_MS, ringbuf_pages=3)
    # WHEN it is loaded, THEN the child's failure is raised here, as Detector raises it
    with pytest.raises(BpfLoadError, match="failed to compile BPF program"):
        loader.load(config)


@pytest.mark.parametrize("threshold", ["0.001", "3600000"])
def test_the_ends_of_the_threshold_range_build_and_load(threshold: str) -> None:
    # GIVEN the detector as the command line configures it at each end of -t's range
    config = parse_arguments(["-t", threshold, "1"]).detector
    # WHEN it is compiled and loaded, THEN the kernel holds it (no compile error, no overflow)
    with loader.load(config) as program:
        assert "events" in program.maps


# A copy whose size is known only at run time: clang emits a call to memcpy, which
# LLVM's BPF backend refuses through its default diagnostic handler, exit(1).
UNBUILDABLE = """
int unbuildable(struct pt_regs *ctx) {
    char from[64] = {}, to[64];
    __builtin_memcpy(to, from, bpf_get_prandom_u32() & 63);
    return to[0];
}
"""


def test_a_compiler_ended_by_llvm_still_gives_its_reason_in_one_line() -> None:
    # GIVEN the detector's source with a function LLVM's BPF backend cannot build
    source = program_source() + UNBUILDABLE
    # WHEN the child compiles it, and LLVM ends the child before BCC can raise
    with pytest.raises(BpfLoadError) as error:
        loader.load(DetectorConfig(threshold_ns=NS_PER_MS), source=source)
    # THEN the parent says what the compiler said and how the child ended, on one line,
    # with the BPF exit code
    message = str(error.value)
    assert message.startswith("failed to compile BPF program: "), message
    assert "memcpy" in message
    assert "(the compiler process exited with status 1)" in message
    assert "\n" not in message
    assert error.value.exit_code == ExitCode.BPF_LOAD_FAILED


def test_a_function_the_program_lacks_is_a_load_error() -> None:
    with pytest.raises(BpfLoadError, match="failed to load BPF function nope"):
        loader.load(
            DetectorConfig(threshold_ns=NS_PER_MS), {"nope": loader.BPF_PROG_TYPE_TRACEPOINT}
        )
