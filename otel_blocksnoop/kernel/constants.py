"""Constants the BPF C (bpf/detector.h, bpf/detector.bpf.c) and the Python side share."""

from __future__ import annotations

COMM_LEN = 16
SLEEP_SLOTS = 4

COUNTER_LOST_EVENTS = 0
COUNTER_ITERATIONS = 1
COUNTER_BUSY_NS = 2
COUNTER_STATE_FULL = 3

BLOCK_THREAD_EXITED = 1
OFF_ON_CPU = -2
OFF_RUNQ = -3
WATCH_ROOT = 1
