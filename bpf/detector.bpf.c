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
 * With TRACK_ACTIVITY, sched:sched_switch also records what a watched
 * thread does while out of epoll: time on CPU, time preempted, and time
 * asleep per syscall (read from the task's saved registers as it goes off
 * CPU), plus the CPU time of the other threads of its process, which is how
 * user space tells a GIL wait from a plain futex sleep.
 *
 * Triggers (TRIGGER_NS > 0) tell user space when to look, so that it sleeps
 * while no loop is blocked: once per block, a trigger_event goes out through
 * its own ring buffer when a watched thread has been out of epoll for
 * TRIGGER_NS. Two programs see it: on_tick, run by a per-CPU cpu-clock perf
 * event every TICK period, catches a thread running on CPU (a tick comes
 * only while a CPU is busy); sched_switch catches a thread leaving the CPU
 * out of epoll, asleep or preempted, after which nothing in the kernel may
 * run in time on an idle machine: that trigger (TRIGGER_OFF_CPU) asks user
 * space to look at start + TRIGGER_NS itself. The block a trigger was sent
 * for is kept in the thread's state (told_ns), so a thread is told once per
 * block; nothing is sent when a block ends (user space sees it end in the
 * thread table, or by its block_event). A thread's first return from epoll
 * is announced too (TRIGGER_NEW_THREAD).
 *
 * Attached to the syscalls:sys_{enter,exit}_epoll_* tracepoints (this
 * kernel has no kprobes), to sched:sched_process_{fork,exit}, to
 * sched:sched_switch (cause or triggers) and to cpu-clock (triggers).
 *
 * Compile-time constants (BCC -D cflags, from program_cflags() in
 * otel_blocksnoop/kernel/program.py): THRESHOLD_NS, TARGET_TID (0 = all
 * threads), STATS_MODE, TRACK_ACTIVITY, TRIGGER_NS (0 = no triggers),
 * MAX_THREADS, MAX_WATCHED, RINGBUF_PAGES, TRIGGER_PAGES, SEGMENTS, MAX_LOOPS,
 * PIDNS, PIDNS_DEV, PIDNS_INO, and the constants shared with Python (see
 * detector.h).
 *
 * PID namespaces: the maps are keyed by the kernel's (host) ids, which
 * sched_switch and sched_process_fork give. User space in the host's PID
 * namespace knows those ids. User space in another one (PIDNS: a sidecar
 * sharing the app's namespace) knows the ids of its namespace (PIDNS_DEV,
 * PIDNS_INO) only: it puts the PIDs to watch in watched_ns, and a thread of an
 * unwatched process returning from epoll is looked up there by its id in that
 * namespace; if found, its process is entered in watched by its host id. Each
 * thread's state keeps its ids in that namespace, and the events carry both.
 *
 * Segments (SEGMENTS, with triggers): one iteration may run the callbacks of
 * several requests one after another, each in its own context (an asyncio
 * Handle runs its callback with Context.run, which sets the thread state's
 * context pointer). For a thread whose pointer's address user space has put
 * in loop_contexts, every sighting of it out of epoll (a tick while it runs, a
 * switch off CPU) reads the pointer from its memory; each change starts a new
 * segment (struct segments), sent with the block. A segment cannot change
 * while its thread is off CPU, so a switch back on extends the last one. When
 * user space follows the block already (it was told of it), a change is a
 * TRIGGER_SEGMENT: it reads the new context's span while that still runs.
 */
#include <asm/ptrace.h>
#include <linux/sched.h>

#include "detector.h"

#ifndef THRESHOLD_NS
#error "THRESHOLD_NS: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef TARGET_TID
#error "TARGET_TID: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef STATS_MODE
#error "STATS_MODE: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef TRACK_ACTIVITY
#error "TRACK_ACTIVITY: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef MAX_THREADS
#error "MAX_THREADS: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef MAX_WATCHED
#error "MAX_WATCHED: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef RINGBUF_PAGES
#error "RINGBUF_PAGES: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef TRIGGER_NS
#error "TRIGGER_NS: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef TRIGGER_PAGES
#error "TRIGGER_PAGES: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef NR_SCHED_YIELD
#error "NR_SCHED_YIELD: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef SEGMENTS
#error "SEGMENTS: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef MAX_LOOPS
#error "MAX_LOOPS: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef PIDNS
#error "PIDNS: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#if PIDNS && !(defined(PIDNS_DEV) && defined(PIDNS_INO))
#error "PIDNS needs PIDNS_DEV and PIDNS_INO: the namespace user space knows ids in"
#endif
#if SEGMENTS && !(TRIGGER_NS && TRACK_ACTIVITY)
#error "SEGMENTS needs triggers and TRACK_ACTIVITY: it sights threads in their programs"
#endif

/* prev_state bits of a task that went to sleep (S, D, T, t, ...); a
 * preempted task reports 0 or TASK_REPORT_MAX, outside this mask. */
#define TASK_REPORT_SLEEP 0x7f

BPF_HASH(watched, u32, struct watch_state, MAX_WATCHED);
#if PIDNS
/* PIDs to watch by their id in user space's namespace (it adds them). */
BPF_HASH(watched_ns, u32, struct watch_state, MAX_WATCHED);
/* How many PIDs user space has put in watched_ns: bumped by it after each. */
BPF_ARRAY(watch_generation, u64, 1);
/* Processes (host tgid) found in no watched_ns entry, and watch_generation then:
 * not looked up again until user space names another PID. */
BPF_TABLE("lru_hash", u32, u64, unnamed, MAX_THREADS);
#endif
BPF_HASH(threads, u32, struct thread_state, MAX_THREADS);
BPF_PERCPU_ARRAY(counters, u64, COUNTER_MAX);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* A block event is built here, then sent with as many segments as it has. */
BPF_PERCPU_ARRAY(scratch, struct block_event, 1);
/* A new thread's first state: all zero but its ids (too big for the stack). */
BPF_PERCPU_ARRAY(blank_state, struct thread_state, 1);
#if SEGMENTS
/* Loop threads whose context pointer user space found (it adds them), by tid. */
BPF_HASH(loop_contexts, u32, struct loop_context, MAX_LOOPS);
#endif
#if TRIGGER_NS
BPF_RINGBUF_OUTPUT(triggers, TRIGGER_PAGES);
BPF_PERCPU_ARRAY(preempted_tid, u32, 1); /* a watched thread preempted here, out of epoll */
/* When user space will next look at the triggers by itself (CLOCK_MONOTONIC;
 * 0: not before one wakes it). It writes this before each wait. */
BPF_ARRAY(user_wake, u64, 1);
#endif
#if TRACK_ACTIVITY
BPF_PERCPU_ARRAY(last_switch, u64, 1); /* when this CPU last switched task */
#endif
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

/* The current task's ids as user space knows them: in its PID namespace
 * (PIDNS), else the host's (id, from bpf_get_current_pid_tgid). Returns 0 when
 * the task has none there (it runs in another namespace). */
static __always_inline int user_ids(u64 id, u32 *tgid, u32 *tid)
{
#if PIDNS
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(PIDNS_DEV, PIDNS_INO, &ns, sizeof(ns)))
        return 0;
    *tgid = ns.tgid;
    *tid = ns.pid;
#else
    *tgid = id >> 32;
    *tid = (u32)id;
#endif
    return 1;
}

/* Whether the current thread passes the TARGET_TID filter (user space's tid). */
static __always_inline int target_thread(u64 id)
{
    if (!TARGET_TID)
        return 1;
    u32 tgid = 0, tid = 0;
    return user_ids(id, &tgid, &tid) && tid == TARGET_TID;
}

/* Returns the caller's (host) tid when its process is watched (and the thread
 * passes the TARGET_TID filter), else 0. */
static __always_inline u32 watched_tid(u32 *tgid_out, struct watch_state **watch_out)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    struct watch_state *watch = watched.lookup(&tgid);
    if (!watch || !target_thread(id))
        return 0;
    *tgid_out = tgid;
    *watch_out = watch;
    return (u32)id;
}

#if PIDNS
/* watched_tid for a process user space named by its id in its namespace, not
 * yet known by its host id: entered in watched now. An unwatched process is
 * looked up once (a helper call and a lookup), then remembered in unnamed until
 * user space names another PID: its epoll returns cost one lookup more than
 * without PIDNS (measured in bench/bpf_cost.py --unwatched). */
static __always_inline u32 watched_tid_ns(u32 *tgid_out, struct watch_state **watch_out)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!tgid)
        return 0;
    u32 zero = 0;
    u64 *generation = watch_generation.lookup(&zero);
    u64 now_generation = generation ? *generation : 0;
    u64 *seen = unnamed.lookup(&tgid);
    if (seen && *seen == now_generation)
        return 0;
    u32 ns_tgid = 0, ns_tid = 0;
    struct watch_state *named = NULL;
    if (user_ids(id, &ns_tgid, &ns_tid))
        named = watched_ns.lookup(&ns_tgid);
    if (!named) {
        unnamed.update(&tgid, &now_generation);
        return 0;
    }
    struct watch_state entry = {.how = named->how};
    watched.update(&tgid, &entry);
    return watched_tid(tgid_out, watch_out);
}
#endif

#if TRIGGER_NS
/* Tell user space to look at thread tid (host id; its state) at look_ns; wake
 * it (flags) or not. */
static __always_inline void send_trigger(struct thread_state *state, u32 tid, u64 start, u64 look,
                                         u32 reason, u64 flags)
{
    struct trigger_event *trigger = triggers.ringbuf_reserve(sizeof(*trigger));
    if (!trigger) {
        count(COUNTER_LOST_TRIGGERS, 1);
        return;
    }
    trigger->start_ns = start;
    trigger->look_ns = look;
    trigger->tgid = state->tgid;
    trigger->tid = state->tid;
    trigger->reason = reason;
    trigger->host_tid = tid;
    triggers.ringbuf_submit(trigger, flags);
}

/* Tell user space of a thread's block once, if it has lasted TRIGGER_NS by
 * now; returns whether the block is told of (now, or before). */
static __always_inline int trigger_due(struct thread_state *state, u32 tid, u64 now)
{
    u64 start = state->left_epoll_ns;
    if (!start || state->told_ns == start || state->closed_loop)
        return 1; /* a closed loop: the thread is between loops, none is held up */
    if (now - start < TRIGGER_NS)
        return 0;
    state->told_ns = start;
    send_trigger(state, tid, start, now, TRIGGER_DUE, BPF_RB_FORCE_WAKEUP);
    return 1;
}

/* A watched thread leaves the CPU out of epoll (current is the thread). If
 * it is preempted, this CPU stays busy and its tick looks at it (the
 * preempted_tid slot); asleep, nothing in the kernel may run in time, so user
 * space is told now to look at start + TRIGGER_NS. It is not woken for that
 * when it will look by itself before then (user_wake): a thread that sleeps
 * in every iteration (a GIL wait) then costs one wake-up per TRIGGER_NS, not
 * one per iteration. */
static __always_inline void trigger_off_cpu(struct thread_state *state, u32 tid, u64 now,
                                            int asleep)
{
    if (trigger_due(state, tid, now))
        return;
    if (!asleep) {
        u32 zero = 0;
        u32 *slot = preempted_tid.lookup(&zero);
        if (slot)
            *slot = tid;
        return;
    }
    u64 look = state->left_epoll_ns + TRIGGER_NS;
    u32 zero = 0;
    u64 *wake = user_wake.lookup(&zero);
    u64 flags = wake && *wake && *wake <= look ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP;
    state->told_ns = state->left_epoll_ns;
    send_trigger(state, tid, state->left_epoll_ns, look, TRIGGER_OFF_CPU, flags);
}

#endif

#if TRACK_ACTIVITY
/* Adds one sleep to the slot of its syscall, or the first free one. */
static __always_inline void add_sleep(struct activity *act, s32 nr, u64 ns)
{
    act->sleep_ns += ns;
#pragma unroll
    for (int i = 0; i < SLEEP_SLOTS; i++) {
        struct sleep_slot *slot = &act->sleeps[i];
        if (slot->count == 0 || slot->nr == nr) {
            slot->nr = nr;
            slot->ns += ns;
            slot->count += 1;
            return;
        }
    }
    act->other_sleep_ns += ns;
}

/* The syscall the current task is in (-1 outside one), from the registers
 * saved at kernel entry: valid whatever the kernel's struct layouts are. */
static __always_inline s32 current_syscall(void)
{
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
    long nr = -1;
    if (regs)
        bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
    return (s32)nr;
}
#endif

#if TRACK_ACTIVITY
/* Why a thread left the CPU runnable: preempted (the run queue), or it gave
 * the CPU up in sched_yield: a lock spinning before it sleeps (CPython's own
 * locks do on a free-threaded build), whose wait is the lock's, not the
 * machine's; booked as a sleep in sched_yield. */
static __always_inline s32 runnable_off(void)
{
    s32 nr = current_syscall();
    return nr == NR_SCHED_YIELD ? nr : OFF_RUNQ;
}
#endif

/* The iteration of a thread ends: fill what it did so far into *out. */
static __always_inline void finish_activity(struct thread_state *state,
                                            struct watch_state *watch, u64 now,
                                            struct activity *out)
{
    __builtin_memcpy(out, &state->activity, sizeof(*out));
#if TRACK_ACTIVITY
    if (state->off_nr == OFF_ON_CPU)
        out->on_cpu_ns += now - state->switched_at;
    u64 proc = watch->cpu_ns - state->proc_cpu_start;
    out->sibling_cpu_ns = proc > state->own_cpu_ns ? proc - state->own_cpu_ns : 0;
#endif
}

#if SEGMENTS
/* The segment at index i, i kept in range where the verifier can see it
 * (the compiler would otherwise drop the mask after an earlier bound check). */
static __always_inline struct segment *segment_at(struct segments *segs, u32 i)
{
    asm volatile("" : "+r"(i));
    return &segs->items[i & (MAX_SEGMENTS - 1)];
}

/* A sighting of a thread out of epoll (current is the thread, now on CPU):
 * read its context pointer; a change starts a segment, a stretch sighted
 * only once is overwritten by the next one. */
static __always_inline void sight(struct thread_state *state, struct watch_state *watch,
                                  u32 tid, u64 now)
{
    if (!state->left_epoll_ns)
        return;
    struct loop_context *loop = loop_contexts.lookup(&tid);
    if (!loop || !loop->armed || loop->segments.overflow_ns)
        return;
    struct segments *segs = &loop->segments;
    u64 context = 0;
    if (bpf_probe_read_user(&context, sizeof(context), (void *)loop->address))
        return;
    u32 n = segs->count;
    u32 slot = n;
    u64 prev_last = 0;
    if (n > 0) {
        struct segment *last = segment_at(segs, n - 1);
        if (last->context == context) {
            last->last_ns = now;
            return;
        }
        if (n > 1 && last->last_ns == last->first_ns) {
            /* Sighted once: a short callback, or one that began just now. Its
             * place goes to the new context; the one before still ends at
             * its first sighting (next_first_ns). */
            slot = n - 1;
        } else {
            last->next_first_ns = now;
        }
        prev_last = last->last_ns;
    }
    if (slot >= MAX_SEGMENTS) {
        segs->overflow_ns = now;
        return;
    }
    struct segment *seg = segment_at(segs, slot);
    seg->context = context;
    seg->first_ns = now;
    seg->last_ns = now;
    seg->prev_last_ns = prev_last;
    seg->next_first_ns = 0;
    finish_activity(state, watch, now, &seg->at_first);
    segs->count = slot + 1;
    if (n > 0 && state->told_ns == state->left_epoll_ns)
        send_trigger(state, tid, state->left_epoll_ns, now, TRIGGER_SEGMENT, BPF_RB_FORCE_WAKEUP);
}

/* The thread comes back on CPU: its context is as it left it, so the last
 * segment, sighted as it left, lasted until now. */
static __always_inline void sighted_back(u32 tid, u64 left_cpu_ns, u64 now)
{
    struct loop_context *loop = loop_contexts.lookup(&tid);
    if (!loop || !loop->armed)
        return;
    struct segments *segs = &loop->segments;
    u32 n = segs->count;
    if (n == 0 || segs->overflow_ns)
        return;
    struct segment *last = segment_at(segs, n - 1);
    if (last->last_ns == left_cpu_ns)
        last->last_ns = now;
}
#endif

#if TRACK_ACTIVITY
/* A thread off CPU since switched_at runs again now: book the stretch away by
 * why it left (the run queue, or a sleep in its syscall). */
static __always_inline void back_on_cpu(struct thread_state *state, u32 tid, u64 now)
{
    u64 away = now > state->switched_at ? now - state->switched_at : 0;
    if (state->off_nr == OFF_RUNQ)
        state->activity.runq_ns += away;
    else
        add_sleep(&state->activity, state->off_nr, away);
#if SEGMENTS
    sighted_back(tid, state->switched_at, now);
#endif
    state->switched_at = now;
    state->off_nr = OFF_ON_CPU;
}

/* current is the thread, seen running (a tick, or its switch out). If its
 * books say it is off CPU, its switch back on was never reported (a thread
 * adopted as runnable that was running, or a switch the tracepoint did not
 * report): it came back by now, so close the stretch here, within a tick of
 * the truth while it runs, and count it. Left open, the books would keep the
 * thread off CPU through all it does next (its sleeps booked as the run
 * queue, its contexts never sighted at its switches). */
static __always_inline void seen_running(struct thread_state *state, u32 tid, u64 now)
{
    if (!state->left_epoll_ns || state->off_nr == OFF_ON_CPU)
        return;
    count(COUNTER_UNSEEN_SWITCHES, 1);
    back_on_cpu(state, tid, now);
}
#endif

#if TRIGGER_NS
/* A cpu-clock tick on a busy CPU: the thread running here, or the one it
 * preempted, may be a loop thread out of epoll for TRIGGER_NS already; the
 * one running is a sighting of its context (SEGMENTS). */
int on_tick(void *ctx)
{
    u64 now = bpf_ktime_get_ns();
    u32 zero = 0;
    u32 *slot = preempted_tid.lookup(&zero);
    if (slot && *slot) {
        u32 waiting = *slot;
        struct thread_state *state = threads.lookup(&waiting);
        if (!state || trigger_due(state, waiting, now))
            *slot = 0;
    }

    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    struct watch_state *watch = watched.lookup(&tgid);
    if (!tgid || !watch)
        return 0;
    u32 tid = (u32)id;
    struct thread_state *state = threads.lookup(&tid);
    if (!state)
        return 0;
#if TRACK_ACTIVITY
    seen_running(state, tid, now);
#endif
#if SEGMENTS
    sight(state, watch, tid, now); /* first: a change told now needs no trigger of its own */
#endif
    trigger_due(state, tid, now);
    return 0;
}
#endif

/* Send the block of a thread (host tid) that left epoll at start and ends now:
 * built in scratch, sent with only the segments it has. */
static __always_inline void send_block(struct thread_state *state, struct watch_state *watch,
                                       u32 tid, u64 start, u64 now, u32 flags)
{
    u32 zero = 0;
    struct block_event *event = scratch.lookup(&zero);
    if (!event) {
        count(COUNTER_LOST_EVENTS, 1);
        return;
    }
    event->start_ns = start;
    event->end_ns = now;
    event->tgid = state->tgid;
    event->tid = state->tid;
    event->host_tgid = state->host_tgid;
    event->host_tid = tid;
    event->flags = flags;
    event->pad = 0;
    finish_activity(state, watch, now, &event->activity);
    bpf_get_current_comm(&event->comm, sizeof(event->comm));
    u32 n = 0;
    event->segments.pad = 0;
    event->segments.overflow_ns = 0;
#if SEGMENTS
    struct loop_context *loop = loop_contexts.lookup(&tid);
    if (loop && loop->armed) {
        n = loop->segments.count;
        if (n > MAX_SEGMENTS)
            n = MAX_SEGMENTS;
        bpf_probe_read_kernel(&event->segments, sizeof(event->segments), &loop->segments);
    }
#endif
    event->segments.count = n;
    u64 size = __builtin_offsetof(struct block_event, segments.items) + (u64)n * sizeof(struct segment);
    if (size > sizeof(*event))
        size = sizeof(*event);
    if (events.ringbuf_output(event, size, 0))
        count(COUNTER_LOST_EVENTS, 1);
}

/* The first argument of a syscalls:sys_enter_* record (an fd for epoll_wait,
 * epoll_pwait, epoll_pwait2 and close): after the common fields and the
 * syscall's number, at offset 16. */
static __always_inline s32 syscall_fd(void *ctx)
{
    u64 arg = (u64)-1;
    bpf_probe_read_kernel(&arg, sizeof(arg), (char *)ctx + 16);
    return (s32)arg;
}

/* The state of current when it is a watched thread (*tid: its host tid), else NULL. */
static __always_inline struct thread_state *watched_state(u32 *tid, struct watch_state **watch)
{
    u32 tgid;
    *tid = watched_tid(&tgid, watch);
    return *tid ? threads.lookup(tid) : NULL;
}

int on_epoll_enter(void *ctx)
{
    u32 tid;
    struct watch_state *watch;
    struct thread_state *state = watched_state(&tid, &watch);
    if (!state)
        return 0;
    s32 epfd = syscall_fd(ctx);
    if (!state->left_epoll_ns) {
        state->epfd = epfd;
        return 0;
    }

    u64 now = bpf_ktime_get_ns();
    u64 start = state->left_epoll_ns;
    u64 delta = now - start;
    u32 closed = state->closed_loop;
    state->left_epoll_ns = 0;
    state->entered_epoll_ns = now;
    state->epfd = epfd;
    state->closed_loop = 0;
    /* A thread that closed its loop's epoll fd and now waits in another
     * epoll went from one loop to the next (asyncio.run, plain code, another
     * asyncio.run): no loop was held up, that stretch is no iteration. */
    if (closed)
        return 0;
    state->iterations += 1;
    state->busy_ns += delta;
    count(COUNTER_ITERATIONS, 1);
    count(COUNTER_BUSY_NS, delta);

#if STATS_MODE
    record_iteration(delta);
#else
    if (delta >= THRESHOLD_NS)
        send_block(state, watch, tid, start, now, 0);
#endif
    return 0;
}

/* A watched thread out of epoll closes an fd: if it is the epoll fd it last
 * waited in, its loop is closed (loop.close(), the end of asyncio.run). */
int on_close_enter(void *ctx)
{
    u32 tid;
    struct watch_state *watch;
    struct thread_state *state = watched_state(&tid, &watch);
    if (!state || !state->left_epoll_ns || state->epfd < 0)
        return 0;
    if (syscall_fd(ctx) == state->epfd)
        state->closed_loop = 1;
    return 0;
}

int on_epoll_exit(void *ctx)
{
    u32 tgid;
    struct watch_state *watch;
    u32 tid = watched_tid(&tgid, &watch);
#if PIDNS
    if (!tid)
        tid = watched_tid_ns(&tgid, &watch);
#endif
    if (!tid)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct thread_state *state = threads.lookup(&tid);
    if (!state) {
        u32 zero = 0;
        struct thread_state *fresh = blank_state.lookup(&zero);
        if (!fresh)
            return 0;
        u64 id = bpf_get_current_pid_tgid();
        if (!user_ids(id, &fresh->tgid, &fresh->tid))
            return 0; /* not in user space's namespace: it could not name it */
        fresh->host_tgid = tgid;
        fresh->epfd = -1; /* its fd is known at its next entry */
        fresh->closed_loop = 0;
        state = threads.lookup_or_try_init(&tid, fresh);
        if (!state) {
            count(COUNTER_STATE_FULL, 1);
            return 0;
        }
#if TRIGGER_NS
        send_trigger(state, tid, now, now, TRIGGER_NEW_THREAD, BPF_RB_FORCE_WAKEUP);
#endif
    }
    if (state->entered_epoll_ns)
        state->idle_ns += now - state->entered_epoll_ns;
#if TRACK_ACTIVITY
    __builtin_memset(&state->activity, 0, sizeof(state->activity));
    state->switched_at = now;
    state->off_nr = OFF_ON_CPU;
    state->proc_cpu_start = watch->cpu_ns;
    state->own_cpu_ns = 0;
#endif
#if SEGMENTS
    struct loop_context *loop = loop_contexts.lookup(&tid);
    if (loop) {
        loop->armed = 1;
        loop->segments.count = 0;
        loop->segments.overflow_ns = 0;
    }
#endif
    state->left_epoll_ns = now;
    return 0;
}

#if TRACK_ACTIVITY
/* A task switch: charge the outgoing task's slice to its process, and keep
 * the books of watched threads that are out of epoll; tell user space of one
 * that leaves the CPU (triggers). current is prev. */
TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = bpf_ktime_get_ns();
    u32 zero = 0;
    u64 slice = 0;
    u64 *last = last_switch.lookup(&zero);
    if (last) {
        if (*last)
            slice = now - *last;
        *last = now;
    }

    /* Half of all switches are to or from the idle task (pid 0): no lookups. */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct watch_state *watch = tgid ? watched.lookup(&tgid) : NULL;
    if (watch) {
        __sync_fetch_and_add(&watch->cpu_ns, slice);
        u32 prev = args->prev_pid;
        struct thread_state *out = threads.lookup(&prev);
        if (out)
            seen_running(out, prev, now);
#if SEGMENTS
        if (out && out->off_nr == OFF_ON_CPU)
            sight(out, watch, prev, now); /* before the books: it counts the stretch on CPU */
#endif
        if (out && out->left_epoll_ns && out->off_nr == OFF_ON_CPU) {
            out->activity.on_cpu_ns += now - out->switched_at;
            out->own_cpu_ns += slice;
            out->switched_at = now;
            out->off_nr = (args->prev_state & TASK_REPORT_SLEEP) ? current_syscall() : runnable_off();
        }
#if TRIGGER_NS
        if (out)
            trigger_off_cpu(out, prev, now, args->prev_state & TASK_REPORT_SLEEP);
#endif
    }

    u32 next = args->next_pid;
    struct thread_state *in = next ? threads.lookup(&next) : NULL;
    if (in && in->left_epoll_ns && in->off_nr != OFF_ON_CPU)
        back_on_cpu(in, next, now);
    return 0;
}
#elif TRIGGER_NS
/* A task switch without the cause's books: only tell user space of a watched
 * thread that leaves the CPU out of epoll. current is prev. */
TRACEPOINT_PROBE(sched, sched_switch)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!tgid || !watched.lookup(&tgid))
        return 0;
    u32 prev = args->prev_pid;
    struct thread_state *out = threads.lookup(&prev);
    if (out)
        trigger_off_cpu(out, prev, bpf_ktime_get_ns(), args->prev_state & TASK_REPORT_SLEEP);
    return 0;
}
#endif

/* Children of watched processes are watched too (launch mode through a
 * shell, pre-fork servers), by their host id. The event also fires for new
 * threads; their tid is never the tgid of a live process, so recording it is
 * harmless, and the entry goes when the thread exits. */
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 parent_tgid = id >> 32;
    if (!watched.lookup(&parent_tgid)) {
#if PIDNS
        /* Named by user space, not yet seen in epoll (a launched shell's child). */
        u32 ns_tgid = 0, ns_tid = 0;
        if (!user_ids(id, &ns_tgid, &ns_tid) || !watched_ns.lookup(&ns_tgid))
            return 0;
#else
        return 0;
#endif
    }
    u32 child = args->child_pid;
    struct watch_state inherited = {.how = WATCH_INHERITED};
    watched.update(&child, &inherited);
    return 0;
}

/* A thread that exits while out of epoll for longer than the threshold
 * (killed during a hang, or a loop that ended by raising) is reported as a
 * block ending now, so a hang is never lost with its thread. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;
#if !STATS_MODE
    struct thread_state *state = threads.lookup(&tid);
    struct watch_state *watch = watched.lookup(&tgid);
    /* Not after its loop closed: the end of a program, no loop held up. */
    if (state && state->left_epoll_ns && !state->closed_loop && watch) {
        u64 now = bpf_ktime_get_ns();
        if (now - state->left_epoll_ns >= THRESHOLD_NS)
            send_block(state, watch, tid, state->left_epoll_ns, now, BLOCK_THREAD_EXITED);
    }
#endif
    threads.delete(&tid);
#if SEGMENTS
    loop_contexts.delete(&tid);
#endif
    struct watch_state *how = watched.lookup(&tid);
    if (how && how->how == WATCH_INHERITED)
        watched.delete(&tid);
    return 0;
}
