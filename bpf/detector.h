/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * Shared between bpf/detector.bpf.c and otel_blocksnoop/kernel/ (layout.py
 * mirrors these structs with ctypes; a test checks that they agree).
 *
 * The constants both sides use have their one source in
 * otel_blocksnoop/kernel/constants.py and come in as -D cflags: none is
 * defined here, and the C does not compile without them. Only the array
 * sizes of the mirrored structs are defined here; a test checks them
 * against constants.py.
 */
#ifndef OTEL_BLOCKSNOOP_DETECTOR_H
#define OTEL_BLOCKSNOOP_DETECTOR_H

#define COMM_LEN 16
#define SLEEP_SLOTS 4
/* A power of two: the programs index the segments with & (MAX_SEGMENTS - 1). */
#define MAX_SEGMENTS 16

/* Log-linear histogram of loop-iteration durations (stats mode):
 * values below 2^HIST_SUB_BITS ns are exact; above, each power of two is
 * split into 2^HIST_SUB_BITS buckets (about 3% wide), up to 2^HIST_MAX_LOG2
 * ns (about 73 minutes; longer iterations clamp). */
#ifndef HIST_SUB_BITS
#error "HIST_SUB_BITS: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef HIST_MAX_LOG2
#error "HIST_MAX_LOG2: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#define HIST_SUB_COUNT (1 << HIST_SUB_BITS)
#define HIST_BUCKETS ((HIST_MAX_LOG2 - HIST_SUB_BITS + 2) * HIST_SUB_COUNT)

/* Indexes of the per-CPU counters array, and its size (COUNTER_MAX):
 * COUNTER_LOST_EVENTS  ring buffer full: a block was dropped
 * COUNTER_ITERATIONS   loop iterations seen (all, not only blocks)
 * COUNTER_BUSY_NS      time spent outside epoll, summed
 * COUNTER_STATE_FULL   thread table full: a thread is not tracked
 * COUNTER_LOST_TRIGGERS trigger ring buffer full: a trigger was dropped
 * COUNTER_UNSEEN_SWITCHES a thread seen running whose books said off CPU */
#ifndef COUNTER_LOST_EVENTS
#error "COUNTER_LOST_EVENTS: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef COUNTER_ITERATIONS
#error "COUNTER_ITERATIONS: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef COUNTER_BUSY_NS
#error "COUNTER_BUSY_NS: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef COUNTER_STATE_FULL
#error "COUNTER_STATE_FULL: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef COUNTER_LOST_TRIGGERS
#error "COUNTER_LOST_TRIGGERS: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef COUNTER_UNSEEN_SWITCHES
#error "COUNTER_UNSEEN_SWITCHES: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef COUNTER_MAX
#error "COUNTER_MAX: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif

/* Flags of a block_event: BLOCK_THREAD_EXITED, the thread exited while out
 * of epoll. */
#ifndef BLOCK_THREAD_EXITED
#error "BLOCK_THREAD_EXITED: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif

/* Reasons of a trigger_event:
 * TRIGGER_DUE        the thread has been out of epoll for TRIGGER_NS or more
 *                    (seen on CPU by a cpu-clock tick, or as it left the CPU);
 * TRIGGER_OFF_CPU    it left the CPU (asleep, or preempted) out of epoll before
 *                    that: nothing in the kernel may run again in time on an
 *                    idle machine, so user space looks at start_ns + TRIGGER_NS;
 * TRIGGER_NEW_THREAD a thread's first return from epoll: a loop (or a native
 *                    poller) starts. */
#ifndef TRIGGER_DUE
#error "TRIGGER_DUE: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef TRIGGER_OFF_CPU
#error "TRIGGER_OFF_CPU: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef TRIGGER_NEW_THREAD
#error "TRIGGER_NEW_THREAD: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
/* TRIGGER_SEGMENT    a thread whose block user space follows (told of) switched
 *                    to another context (another task's callback): read it now. */
#ifndef TRIGGER_SEGMENT
#error "TRIGGER_SEGMENT: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif

/* Off-CPU reasons kept in thread_state.off_nr besides syscall numbers:
 * OFF_ON_CPU (running: not off CPU) and OFF_RUNQ (preempted: runnable,
 * waiting for a CPU). -1 (pt_regs orig_ax) means asleep outside a syscall,
 * e.g. a page fault. */
#ifndef OFF_ON_CPU
#error "OFF_ON_CPU: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef OFF_RUNQ
#error "OFF_RUNQ: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif

/* watch_state.how: WATCH_ROOT, a PID the user named or launched;
 * WATCH_INHERITED, forked from a watched process. */
#ifndef WATCH_ROOT
#error "WATCH_ROOT: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif
#ifndef WATCH_INHERITED
#error "WATCH_INHERITED: missing -D cflag (see otel_blocksnoop/kernel/program.py)"
#endif

/* Time asleep in one syscall during an iteration. */
struct sleep_slot {
    __u64 ns;
    __s32 nr;    /* syscall number, -1 if not in a syscall */
    __u32 count; /* separate sleeps; 0 = slot unused */
};

/* What a thread did during one loop iteration, from sched_switch. */
struct activity {
    __u64 on_cpu_ns;      /* running */
    __u64 runq_ns;        /* runnable but preempted, waiting for a CPU */
    __u64 sleep_ns;       /* asleep, all syscalls together */
    __u64 other_sleep_ns; /* asleep in syscalls that found no free slot */
    __u64 sibling_cpu_ns; /* other threads of the process on CPU meanwhile */
    struct sleep_slot sleeps[SLEEP_SLOTS];
};

/* One stretch of an iteration during which the loop thread ran in one
 * context (its PyThreadState's context pointer, read at each sighting: a
 * cpu-clock tick or a switch off CPU while out of epoll). first_ns and
 * last_ns are its first and last sightings; prev_last_ns the last sighting of
 * the context before it (0 for the iteration's first), next_first_ns the
 * first sighting of the one after (0 for its last). A stretch sighted once
 * is overwritten by the next, so the array holds the long ones. at_first is
 * what the thread had done from the iteration's start up to first_ns. */
struct segment {
    __u64 context;
    __u64 first_ns;
    __u64 last_ns;
    __u64 prev_last_ns;
    __u64 next_first_ns;
    struct activity at_first;
};

/* The contexts of one iteration, in order; overflow_ns is the first change
 * that found the array full (0: none), after which nothing is recorded. */
struct segments {
    __u32 count;
    __u32 pad;
    __u64 overflow_ns;
    struct segment items[MAX_SEGMENTS];
};

/* Value of the loop_contexts map, by tid: where the thread's context pointer
 * is (user space finds it, and adds the entry with armed 0), and the contexts
 * of its current iteration. The thread's next return from epoll arms it: an
 * iteration whose start was not watched gets no segments (its first one would
 * claim the time before the first sighting). */
struct loop_context {
    __u64 address;
    __u32 armed;
    __u32 pad;
    struct segments segments;
};

/* One loop iteration that crossed the threshold: the thread left epoll at
 * start_ns and came back at end_ns (CLOCK_MONOTONIC, bpf_ktime_get_ns).
 * tgid and tid are the ids user space knows: those of its own PID namespace
 * (PIDNS), else the host's; host_tgid and host_tid are the kernel's. */
struct block_event {
    __u64 start_ns;
    __u64 end_ns;
    __u32 tgid;
    __u32 tid;
    __u32 host_tgid;
    __u32 host_tid;
    __u32 flags;
    __u32 pad;
    struct activity activity;
    char comm[COMM_LEN];
    struct segments segments;
};

/* A watched thread user space should look at: the kernel's "when to look".
 * At most one per block (and one per thread for TRIGGER_NEW_THREAD); see
 * the TRIGGER_* reasons. start_ns is when the thread left epoll, look_ns when
 * to look at it: when the trigger was raised, or (TRIGGER_OFF_CPU) start_ns +
 * TRIGGER_NS (CLOCK_MONOTONIC, bpf_ktime_get_ns). */
struct trigger_event {
    __u64 start_ns;
    __u64 look_ns;
    __u32 tgid;     /* as in block_event: user space's ids */
    __u32 tid;
    __u32 reason;
    __u32 host_tid; /* the thread's key in the threads and loop_contexts maps */
};

/* Per-thread state, keyed by the kernel's (host) tid. left_epoll_ns is 0 while the thread is
 * inside an epoll call, so user space can see a block still in progress,
 * and what it has done so far (activity, plus the current stretch since
 * switched_at in the state off_nr names). */
struct thread_state {
    __u64 left_epoll_ns;
    __u64 switched_at;    /* last switch on or off CPU, or the iteration's start */
    __u64 proc_cpu_start; /* the process's CPU time when the iteration began */
    __u64 own_cpu_ns;     /* this thread's share of that CPU time since then */
    __u64 entered_epoll_ns; /* last entry into epoll (0 before the first) */
    __u64 iterations;     /* cumulative, for utilization: loop iterations, */
    __u64 busy_ns;        /* time out of epoll, */
    __u64 idle_ns;        /* and time inside it */
    __u64 told_ns;        /* the block (its left_epoll_ns) a trigger was sent for */
    __u32 tgid;           /* user space's ids (its PID namespace's), as in block_event */
    __s32 off_nr;         /* OFF_ON_CPU, OFF_RUNQ, or the syscall it sleeps in */
    __u32 tid;
    __u32 host_tgid;      /* the kernel's: the key of the process in the watched map */
    __s32 epfd;           /* the epoll fd it last waited in (-1: none yet) */
    __u32 closed_loop;    /* out of epoll, it closed that fd: its loop is gone */
    struct activity activity;
};

/* Value of the watched map: how the PID came to be watched, and the CPU
 * time of all its threads (charged at each switch off CPU). */
struct watch_state {
    __u64 cpu_ns;
    __u32 how;
    __u32 pad;
};

/* Extremes of iteration durations since user space last cleared them. */
struct iter_extremes {
    __u64 min_ns;
    __u64 max_ns;
};

#endif /* OTEL_BLOCKSNOOP_DETECTOR_H */
