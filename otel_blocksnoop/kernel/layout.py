"""ctypes mirrors of the structs in bpf/detector.h, field for field.

tests/unit/test_event_layout.py compiles the header and checks every size
and offset here against it.
"""

from __future__ import annotations

import ctypes

from otel_blocksnoop.kernel.constants import COMM_LEN, MAX_SEGMENTS, SLEEP_SLOTS


class SleepSlotC(ctypes.Structure):
    """Mirror of ``struct sleep_slot`` in bpf/detector.h."""

    _fields_ = (("ns", ctypes.c_uint64), ("nr", ctypes.c_int32), ("count", ctypes.c_uint32))


class ActivityC(ctypes.Structure):
    """Mirror of ``struct activity`` in bpf/detector.h."""

    _fields_ = (
        ("on_cpu_ns", ctypes.c_uint64),
        ("runq_ns", ctypes.c_uint64),
        ("sleep_ns", ctypes.c_uint64),
        ("other_sleep_ns", ctypes.c_uint64),
        ("sibling_cpu_ns", ctypes.c_uint64),
        ("sleeps", SleepSlotC * SLEEP_SLOTS),
    )


class SegmentC(ctypes.Structure):
    """Mirror of ``struct segment`` in bpf/detector.h."""

    _fields_ = (
        ("context", ctypes.c_uint64),
        ("first_ns", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("prev_last_ns", ctypes.c_uint64),
        ("next_first_ns", ctypes.c_uint64),
        ("at_first", ActivityC),
    )


class SegmentsC(ctypes.Structure):
    """Mirror of ``struct segments`` in bpf/detector.h."""

    _fields_ = (
        ("count", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("overflow_ns", ctypes.c_uint64),
        ("items", SegmentC * MAX_SEGMENTS),
    )


class LoopContextC(ctypes.Structure):
    """Mirror of ``struct loop_context`` in bpf/detector.h."""

    _fields_ = (
        ("address", ctypes.c_uint64),
        ("armed", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("segments", SegmentsC),
    )


class BlockEventC(ctypes.Structure):
    """Mirror of ``struct block_event`` in bpf/detector.h."""

    _fields_ = (
        ("start_ns", ctypes.c_uint64),
        ("end_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("host_tgid", ctypes.c_uint32),
        ("host_tid", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("activity", ActivityC),
        ("comm", ctypes.c_char * COMM_LEN),
        ("segments", SegmentsC),  # sent with only its first ``count`` items
    )


class TriggerEventC(ctypes.Structure):
    """Mirror of ``struct trigger_event`` in bpf/detector.h."""

    _fields_ = (
        ("start_ns", ctypes.c_uint64),
        ("look_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("reason", ctypes.c_uint32),
        ("host_tid", ctypes.c_uint32),
    )


class ThreadStateC(ctypes.Structure):
    """Mirror of ``struct thread_state`` in bpf/detector.h."""

    _fields_ = (
        ("left_epoll_ns", ctypes.c_uint64),
        ("switched_at", ctypes.c_uint64),
        ("proc_cpu_start", ctypes.c_uint64),
        ("own_cpu_ns", ctypes.c_uint64),
        ("entered_epoll_ns", ctypes.c_uint64),
        ("iterations", ctypes.c_uint64),
        ("busy_ns", ctypes.c_uint64),
        ("idle_ns", ctypes.c_uint64),
        ("told_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("off_nr", ctypes.c_int32),
        ("tid", ctypes.c_uint32),
        ("host_tgid", ctypes.c_uint32),
        ("epfd", ctypes.c_int32),
        ("closed_loop", ctypes.c_uint32),
        ("activity", ActivityC),
    )


class WatchStateC(ctypes.Structure):
    """Mirror of ``struct watch_state`` in bpf/detector.h."""

    _fields_ = (("cpu_ns", ctypes.c_uint64), ("how", ctypes.c_uint32), ("pad", ctypes.c_uint32))


class IterExtremesC(ctypes.Structure):
    """Mirror of ``struct iter_extremes`` in bpf/detector.h."""

    _fields_ = (("min_ns", ctypes.c_uint64), ("max_ns", ctypes.c_uint64))
