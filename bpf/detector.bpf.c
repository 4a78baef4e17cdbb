/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * Event-loop block detector.
 *
 * A loop iteration is the time from a thread's return from epoll_wait /
 * epoll_pwait / epoll_pwait2 to its next entry into one of them. Iterations
 * of watched processes that last THRESHOLD_NS or more are sent to user space
 * through a ring buffer; in stats mode (STATS_MODE) every iteration is
 * counted in a histogram instead and nothing is sent.
 *
 * Attached to the syscalls:sys_{enter,exit}_epoll_* tracepoints (this
 * kernel has no kprobes) and to sched:sched_process_{fork,exit}.
 *
 * Compile-time constants (BCC -D cflags): THRESHOLD_NS, TARGET_TID (0 = all
 * threads), STATS_MODE, MAX_THREADS, MAX_WATCHED, RINGBUF_PAGES.
 */
#include "detector.h"

#define WATCH_ROOT 1      /* a PID the user named or launched */
#define WATCH_INHERITED 2 /* forked from a watched process */

BPF_HASH(watched, u32, u8, MAX_WATCHED);
BPF_HASH(threads, u32, struct thread_state, MAX_THREADS);
BPF_PERCPU_ARRAY(counters, u64, COUNTER_MAX);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#if STATS_MODE
BPF_ARRAY(iter_hist, u64, HIST_BUCKETS);
BPF_PERCPU_ARRAY(iter_extremes, struct iter_extremes, 1);
#endif

static __always_inline void count(u32 which, u64 delta)
{
    u64 *value = counters.lookup(&which);
    if (value)
        *value += delta;
}

static __always_inline u32 msb64(u64 v)
{
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r;
}

#if STATS_MODE
static __always_inline void record_iteration(u64 delta)
{
    u32 index;
    if (delta < HIST_SUB_COUNT) {
        index = delta;
    } else {
        u32 log2 = msb64(delta);
        if (log2 > HIST_MAX_LOG2)
            index = HIST_BUCKETS - 1;
        else
            index = (log2 - HIST_SUB_BITS + 1) * HIST_SUB_COUNT +
                    ((delta >> (log2 - HIST_SUB_BITS)) & (HIST_SUB_COUNT - 1));
    }
    u64 *bucket = iter_hist.lookup(&index);
    if (bucket)
        __sync_fetch_and_add(bucket, 1);

    u32 zero = 0;
    struct iter_extremes *ext = iter_extremes.lookup(&zero);
    if (ext) {
        if (ext->min_ns == 0 || delta < ext->min_ns)
            ext->min_ns = delta;
        if (delta > ext->max_ns)
            ext->max_ns = delta;
    }
}
#endif

/* Returns the caller's tid when its process is watched (and the thread
 * passes the TARGET_TID filter), else 0. */
static __always_inline u32 watched_tid(u32 *tgid_out)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;
    if (!watched.lookup(&tgid))
        return 0;
    if (TARGET_TID && tid != TARGET_TID)
        return 0;
    *tgid_out = tgid;
    return tid;
}

int on_epoll_enter(void *ctx)
{
    u32 tgid;
    u32 tid = watched_tid(&tgid);
    if (!tid)
        return 0;
    struct thread_state *state = threads.lookup(&tid);
    if (!state || !state->left_epoll_ns)
        return 0;

    u64 now = bpf_ktime_get_ns();
    u64 start = state->left_epoll_ns;
    u64 delta = now - start;
    state->left_epoll_ns = 0;
    count(COUNTER_ITERATIONS, 1);
    count(COUNTER_BUSY_NS, delta);

#if STATS_MODE
    record_iteration(delta);
#else
    if (delta < THRESHOLD_NS)
        return 0;
    struct block_event *event = events.ringbuf_reserve(sizeof(*event));
    if (!event) {
        count(COUNTER_LOST_EVENTS, 1);
        return 0;
    }
    event->start_ns = start;
    event->end_ns = now;
    event->tgid = tgid;
    event->tid = tid;
    bpf_get_current_comm(&event->comm, sizeof(event->comm));
    events.ringbuf_submit(event, 0);
#endif
    return 0;
}

int on_epoll_exit(void *ctx)
{
    u32 tgid;
    u32 tid = watched_tid(&tgid);
    if (!tid)
        return 0;
    struct thread_state fresh = {.tgid = tgid};
    struct thread_state *state = threads.lookup_or_try_init(&tid, &fresh);
    if (!state) {
        count(COUNTER_STATE_FULL, 1);
        return 0;
    }
    state->left_epoll_ns = bpf_ktime_get_ns();
    return 0;
}

/* Children of watched processes are watched too (launch mode through a
 * shell, pre-fork servers). The event also fires for new threads; their tid
 * is never the tgid of a live process, so recording it is harmless, and the
 * entry goes when the thread exits. */
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u32 parent_tgid = bpf_get_current_pid_tgid() >> 32;
    if (!watched.lookup(&parent_tgid))
        return 0;
    u32 child = args->child_pid;
    u8 how = WATCH_INHERITED;
    watched.update(&child, &how);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    threads.delete(&tid);
    u8 *how = watched.lookup(&tid);
    if (how && *how == WATCH_INHERITED)
        watched.delete(&tid);
    return 0;
}
