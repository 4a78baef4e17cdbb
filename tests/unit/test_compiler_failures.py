"""A compiler process that dies without a reply still gives its reason, in one line."""

from __future__ import annotations

import os
import signal

from otel_blocksnoop.kernel.compile import Request
from otel_blocksnoop.kernel.loader import _child_failure
from otel_blocksnoop.kernel.program import DetectorConfig, captured_stderr, first_error

LLVM_EXIT = (
    "In file included from <built-in>:2:\n"
    "/virtual/include/bcc/bpf.h:12:10: warning: some warning\n"
    "error: <unknown>:0:0: in function on_tick i32 (ptr): A call to built-in function "
    "'memcpy' is not supported.\n"
)


def test_a_child_that_exited_after_writing_an_error_gives_that_error_and_its_status() -> None:
    assert _child_failure(LLVM_EXIT, 1) == (
        "failed to compile BPF program: <unknown>:0:0: in function on_tick i32 (ptr): "
        "A call to built-in function 'memcpy' is not supported. "
        "(the compiler process exited with status 1)"
    )


def test_llvms_own_fatal_error_line_is_a_reason_too() -> None:
    assert first_error("LLVM ERROR: Cannot select: intrinsic\n") == "Cannot select: intrinsic"


def test_a_child_killed_without_a_word_is_named_by_its_signal() -> None:
    assert _child_failure("", -signal.SIGSEGV) == (
        "failed to load BPF program: the compiler process was killed by SIGSEGV"
    )


def test_a_request_carries_its_source_and_capture_fd_across() -> None:
    request = Request(DetectorConfig(threshold_ns=5), {"f": 5}, 10, source="int x;", capture_fd=7)
    assert Request.decode(request.encode()) == request


def test_what_is_written_to_fd_2_during_a_compile_lands_in_the_capture_and_not_on_stderr() -> None:
    # GIVEN a memfd standing for the parent's capture
    capture = os.memfd_create("test-capture")
    try:
        # WHEN something writes to fd 2 (as libbcc's compiler does, bypassing sys.stderr)
        with captured_stderr(capture) as read_output:
            os.write(2, b"error: memcpy not supported\n")
            seen_inside = read_output()
        # THEN the capture holds it, readable after the compile too
        assert seen_inside == "error: memcpy not supported\n"
        assert os.pread(capture, 100, 0) == b"error: memcpy not supported\n"
    finally:
        os.close(capture)
