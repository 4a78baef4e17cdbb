/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * Shared between bpf/detector.bpf.c and otel_blocksnoop/detector.py (which
 * mirrors these structs with ctypes; a test checks that they agree).
 */
#ifndef OTEL_BLOCKSNOOP_DETECTOR_H
#define OTEL_BLOCKSNOOP_DETECTOR_H

#define COMM_LEN 16

/* Log-linear histogram of loop-iteration durations (stats mode):
 * values below 2^HIST_SUB_BITS ns are exact; above, each power of two is
 * split into 2^HIST_SUB_BITS buckets (about 3% wide). */
#define HIST_SUB_BITS 5
#define HIST_SUB_COUNT (1 << HIST_SUB_BITS)
#define HIST_MAX_LOG2 42 /* about 73 minutes; longer iterations clamp */
#define HIST_BUCKETS ((HIST_MAX_LOG2 - HIST_SUB_BITS + 2) * HIST_SUB_COUNT)

/* Indexes of the per-CPU counters array. */
enum counter {
    COUNTER_LOST_EVENTS = 0,  /* ring buffer full: a block was dropped */
    COUNTER_ITERATIONS = 1,   /* loop iterations seen (all, not only blocks) */
    COUNTER_BUSY_NS = 2,      /* time spent outside epoll, summed */
    COUNTER_STATE_FULL = 3,   /* thread table full: a thread is not tracked */
    COUNTER_MAX = 4,
};

/* One loop iteration that crossed the threshold: the thread left epoll at
 * start_ns and came back at end_ns (CLOCK_MONOTONIC, bpf_ktime_get_ns). */
struct block_event {
    __u64 start_ns;
    __u64 end_ns;
    __u32 tgid;
    __u32 tid;
    char comm[COMM_LEN];
};

/* Per-thread state, keyed by tid. left_epoll_ns is 0 while the thread is
 * inside an epoll call, so user space can see a block still in progress. */
struct thread_state {
    __u64 left_epoll_ns;
    __u32 tgid;
    __u32 pad;
};

/* Extremes of iteration durations since user space last cleared them. */
struct iter_extremes {
    __u64 min_ns;
    __u64 max_ns;
};

#endif /* OTEL_BLOCKSNOOP_DETECTOR_H */
