"""Records passed between pipeline stages: small, typed and frozen.

It imports nothing of the package, so that every stage may import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Sleep:
    """Time a thread spent asleep in one syscall during a block."""

    syscall: str | None  # None: asleep outside a syscall (e.g. a page fault)
    ns: int
    count: int  # separate sleeps


@dataclass(frozen=True, slots=True)
class Activity:
    """What the loop thread did while out of epoll, from ``sched_switch``."""

    on_cpu_ns: int
    runq_ns: int  # runnable but preempted, waiting for a CPU
    sleep_ns: int  # asleep, all syscalls together
    sleeps: tuple[Sleep, ...]  # per syscall; the rest is in other_sleep_ns
    other_sleep_ns: int
    sibling_cpu_ns: int  # other threads of the process on CPU meanwhile

    @property
    def off_cpu_ns(self) -> int:
        return self.runq_ns + self.sleep_ns


@dataclass(frozen=True, slots=True)
class Throttling:
    """How long a CPU quota held the loop's cgroup back during a block (``cpu.stat``).

    The cgroup's throttled time, read when the block was confirmed and when
    it was handed on, at most the thread's run-queue time: a throttled thread
    is runnable but not running, so that is all of it the thread can have
    waited. It is the thread's own when the loop is its cgroup's only busy thread.
    """

    throttled_ns: int
    periods: int  # quota periods that ran out on the cgroup meanwhile (nr_throttled)


class Cause(StrEnum):
    """Why a loop was stuck (the ``blocksnoop.cause`` values of the contract)."""

    CPU = "cpu"  # running (or waiting for a CPU) most of the time
    SYSCALL = "syscall"  # asleep in a syscall most of the time
    GIL = "gil"  # waiting for the GIL while other threads of the process ran
    SCHED = "sched"  # over the threshold only because it waited for a CPU (run queue, throttling)
    UNKNOWN = "unknown"


class EndReason(StrEnum):
    """How a block came to an end."""

    RETURNED = "returned"  # the thread called epoll again
    THREAD_EXITED = "thread_exited"  # the thread (or its process) ended during it
    SIDECAR_STOPPED = "sidecar_stopped"  # still going when the sidecar stopped


class Loss(StrEnum):
    """What was dropped or lost, and where: the ``blocksnoop.lost.what`` values."""

    KERNEL_EVENTS = "kernel.events"  # the ring buffer was full: a block never left the kernel
    KERNEL_THREADS = "kernel.threads"  # the thread table was full: a thread went untracked
    KERNEL_TRIGGERS = "kernel.triggers"  # the trigger ring buffer was full: a block went unwatched
    STACK_SAMPLES = "stacks.samples"  # a thread's sample history overflowed
    STACK_RESTARTS = "stacks.restarts"  # the sampler died and was restarted (its history lost)
    STACK_LATE = "stacks.late"  # a sample arrived after its time was declared covered: dropped
    STACK_UNKNOWN = "stacks.unknown"  # a block reported without a stack: no sample inside it
    CALL_SITES_UNSURE = "stacks.call_sites"  # a call site seen in too few samples: left out
    CONTEXT_LATE = "context.late"  # a span/task read finished after its block ended
    CONTEXT_ERRORS = "context.errors"  # a span/task read failed (memory changed under it)
    CONTEXT_AWAITED_BY = "context.awaited_by"  # a task's awaiters unsure: the read names none
    LINK_UNDECIDED = "link.undecided"  # reads disagreed: the block gets no parent
    LINK_UNREAD = "link.unread"  # no read landed in a request's segment: it gets no parent
    SEGMENTS_OVERFLOW = "kernel.segments"  # an iteration switched context too often to record
    EXPORT_QUEUE = "export.queue"  # a span, record or log dropped: the export queue was full
    EXPORT_UNDELIVERED = "export.undelivered"  # still queued when the sidecar stopped


@dataclass(frozen=True, slots=True)
class ContextSegment:
    """A stretch of a block during which the loop thread ran in one context.

    ``context`` is the thread state's context pointer the kernel read at each
    sighting (None: not sighted, after the kernel's record was full): whose
    callback ran. ``start_ns``-``end_ns`` are placed halfway between the
    sightings of this context and its neighbours'; the context was surely
    current only inside ``after_ns``-``before_ns`` (exclusive): a read of the
    thread's span belongs to this segment only when it fell in there.
    """

    context: int | None
    start_ns: int
    end_ns: int
    after_ns: int
    before_ns: int
    activity: Activity | None

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class BlockEvent:
    """One loop iteration that crossed the threshold, as the kernel saw it.

    Times are CLOCK_MONOTONIC nanoseconds (``bpf_ktime_get_ns``). For a block
    still in progress, ``end_ns`` is when it was last looked at. ``pid`` and
    ``tid`` are the sidecar's ids (its /proc's); ``host_pid`` and ``host_tid``
    the kernel's, in the host's PID namespace.
    """

    pid: int
    tid: int
    comm: str
    start_ns: int
    end_ns: int
    activity: Activity | None = None
    end_reason: EndReason = EndReason.RETURNED
    segments: tuple[ContextSegment, ...] = ()  # in order; empty: contexts not recorded
    segments_overflow: bool = False  # the kernel's record filled up; the tail is unknown
    host_pid: int = 0  # 0: not known
    host_tid: int = 0

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


class TriggerReason(StrEnum):
    """Why the kernel said to look at a thread (``Trigger``)."""

    DUE = "due"  # out of epoll for the trigger age or more
    OFF_CPU = "off_cpu"  # left the CPU out of epoll, younger: look at the trigger age
    NEW_THREAD = "new_thread"  # its first return from epoll: a loop (or a poller) starts
    SEGMENT = "segment"  # a followed block's thread switched context: read the new one


@dataclass(frozen=True, slots=True)
class Trigger:
    """The kernel's word that a watched thread needs looking at: when to look, not what.

    Sent once per block, when its thread has been out of epoll for the
    trigger age, or as it leaves the CPU before (``OFF_CPU``: nothing in the
    kernel may run again in time, so the one told looks then). Times are
    CLOCK_MONOTONIC nanoseconds: ``start_ns`` is when the thread left epoll
    (for ``NEW_THREAD``, its first return), ``look_ns`` when to look: when
    the kernel spoke, or, for ``OFF_CPU``, when the block reaches the age.
    """

    pid: int
    tid: int
    start_ns: int
    look_ns: int
    reason: TriggerReason
    host_tid: int = 0  # the kernel's id of the thread (0: not known)


@dataclass(frozen=True, slots=True)
class Frame:
    """One Python frame: function, source file and line."""

    function: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class StackSample:
    """One Python stack of one thread, placed on CLOCK_MONOTONIC."""

    time_ns: int  # estimated from the sampler's deltas (``stacks.sampler``)
    frames: tuple[Frame, ...]


class ThreadKind(StrEnum):
    """What a thread that calls epoll turned out to be."""

    LOOP = "loop"  # a Python thread running an event loop
    NATIVE = "native"  # no Python thread state: a native library's poller
    POLLER = "poller"  # a Python thread inside a known non-asyncio poller
    UNKNOWN = "unknown"  # not (yet) classified; reported


@dataclass(frozen=True, slots=True)
class NamespacedIds:
    """A thread's ids as the app sees them (its own PID namespace) and as the host does.

    The sidecar knows a thread by the ids of its own namespace; a block reports
    the app's (``threading.get_native_id()``, its logs), and the host's beside.
    """

    pid: int
    tid: int
    host_pid: int
    host_tid: int

    @property
    def host_differs(self) -> bool:
        return (self.host_pid, self.host_tid) != (self.pid, self.tid)


@dataclass(frozen=True, slots=True)
class PodIdentity:
    """The Kubernetes pod a watched process runs in, as far as it can be read."""

    uid: str | None = None  # from the pod's cgroup, else the app's environment
    name: str | None = None  # the rest from the app's environment (downward API)
    namespace: str | None = None
    container_name: str | None = None


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """Who a watched process is, for the resource of its telemetry.

    Read once per process from /proc: its own OpenTelemetry settings (the
    environment it was started with), its executable and Python version,
    and where it runs (hostname, container, pod). None: not known.
    """

    pid: int
    service_name: str | None  # the target's OTEL_SERVICE_NAME (or service.name attribute)
    resource_attributes: tuple[tuple[str, str], ...]  # the target's OTEL_RESOURCE_ATTRIBUTES
    executable_path: str | None
    runtime_version: str | None  # major.minor, e.g. "3.11"
    instance_id: str  # stable for this process: host, PID and start time
    host_name: str | None = None  # the hostname the app sees (its UTS namespace's)
    container_id: str | None = None  # the full 64-hex id its cgroups name
    pod: PodIdentity | None = None  # None outside Kubernetes
    app_pid: int | None = None  # the PID as the process sees itself, where it differs from pid
    free_threaded: bool | None = None  # a build without a GIL (3.13t, 3.14t); None: not known


@dataclass(frozen=True, slots=True)
class SpanRef:
    """The identity of a span, as W3C trace context carries it."""

    trace_id: int
    span_id: int
    trace_flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.trace_flags & 0x01)


@dataclass(frozen=True, slots=True)
class TaskRef:
    """The asyncio task a thread was running: its name and its coroutine's qualified name.

    From CPython 3.14, also the tasks awaiting it (the ``pstree`` view): the
    names of those waiting on it, then of those waiting on them, up to a cap
    (``awaited_by``; empty: none waits), and how many more were found past
    the cap (``awaited_by_more``). None where not read: before 3.14, or a
    read that could not be sure.
    """

    name: str
    coroutine: str | None
    awaited_by: tuple[str, ...] | None = None
    awaited_by_more: int = 0


@dataclass(frozen=True, slots=True)
class ReadyWork:
    """The callbacks a loop had ready to run when it was read: those a block delays."""

    queued: int  # how many its ready queue held
    handles: tuple[tuple[int, SpanRef | None], ...]  # (Handle address, its request's span)
    unread: tuple[int, ...] = ()  # Handles whose context was not read (past a bound)

    @property
    def requests(self) -> tuple[SpanRef, ...]:
        """The requests (their active spans) the callbacks belong to, each once, in order."""
        return tuple(dict.fromkeys(span for _, span in self.handles if span is not None))


@dataclass(frozen=True, slots=True)
class ThreadContext:
    """What one read of a thread found: the active span and the running task, each if any."""

    span: SpanRef | None
    task: TaskRef | None
    context: int = 0  # the thread state's context pointer the read found (0: none)
    ready: ReadyWork | None = None  # the loop's ready callbacks, when asked for and known


@dataclass(frozen=True, slots=True)
class CallSite:
    """One call site that held the loop during a block: where, from when, how long, why.

    ``start_ns`` (CLOCK_MONOTONIC; ``start_unix_ns`` on the wall clock) is
    where its first sample's time begins, ``share_ns`` the time its samples
    stand for, within one sampling interval. ``cause``/``syscall`` are the
    kernel's books as far as they name this call site alone, else ``unknown``.
    """

    frame: Frame
    start_ns: int
    start_unix_ns: int
    share_ns: int
    samples: int
    cause: Cause = Cause.UNKNOWN
    syscall: str | None = None


@dataclass(frozen=True, slots=True)
class Iteration:
    """The loop iteration a request's segment belongs to, when one iteration held several."""

    start_ns: int
    end_ns: int
    start_unix_ns: int
    end_unix_ns: int
    segments: int  # how many segments it was split into

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class Block:
    """A block ready for the sinks: kernel facts plus what the correlator added.

    ``start_unix_ns``/``end_unix_ns`` are wall-clock times converted from the
    monotonic ones, so sinks never need to know about clocks.
    """

    pid: int
    tid: int
    thread_name: str
    start_ns: int
    end_ns: int
    start_unix_ns: int
    end_unix_ns: int
    threshold_ns: int
    thread_kind: ThreadKind = ThreadKind.UNKNOWN
    stack: tuple[Frame, ...] = ()  # dominant stack during the block, outermost first
    source_lines: tuple[str | None, ...] = ()  # one per frame of ``stack``
    call_site: Frame | None = None  # innermost application frame of ``stack``
    samples: int = 0  # samples with exactly ``stack``
    samples_busy: int = 0  # samples in the block that were not the loop idling
    cause: Cause = Cause.UNKNOWN
    syscall: str | None = None  # what it slept in, when ``cause`` is SYSCALL
    activity: Activity | None = None
    throttling: Throttling | None = None  # None: the cgroup's CPU stats could not be read
    end_reason: EndReason = EndReason.RETURNED
    in_progress: bool = False  # a hang report: ``end_ns`` is "now", not the end
    # Already blocked when watching began: ``start_ns`` is then, the real start is earlier.
    started_before_watch: bool = False
    process: ProcessIdentity | None = None
    parent: SpanRef | None = None  # the app's span active during the block, if read
    task: TaskRef | None = None  # the asyncio task running during the block, if read
    # A segment of an iteration that ran several requests' callbacks back to
    # back: the iteration, and this segment's place in it (None: the whole iteration).
    iteration: Iteration | None = None
    segment: int = 0
    # The ids as the app and the host see them (None: both are ``pid``/``tid``).
    ids: NamespacedIds | None = None
    # The callbacks the loop had ready to run during the block, that waited on it
    # (None: not known), and the other requests they belong to, each once.
    delayed_tasks: int | None = None
    delayed: tuple[SpanRef, ...] = ()
    delayed_unread: int = 0  # of ``delayed_tasks``, those whose request was not read
    # Every call site that held the loop, in time order (``analysis.calls``); the
    # ones seen in too few samples to name are left out and counted here, and the
    # block's time no sample stands for (before sampling began, after it ended).
    call_sites: tuple[CallSite, ...] = ()
    call_sites_left_out: int = 0
    unsampled_ns: int = 0

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def app_pid(self) -> int:
        """The PID as the app sees itself: what the block reports as ``process.pid``."""
        return self.ids.pid if self.ids else self.pid

    @property
    def app_tid(self) -> int:
        """The thread as the app sees it (``threading.get_native_id()``): ``thread.id``."""
        return self.ids.tid if self.ids else self.tid

    @property
    def host_ids(self) -> tuple[int, int] | None:
        """(PID, tid) in the host's PID namespace, where they differ from the app's."""
        if self.ids is None or not self.ids.host_differs:
            return None
        return self.ids.host_pid, self.ids.host_tid

    @property
    def iteration_start_ns(self) -> int:
        return self.iteration.start_ns if self.iteration else self.start_ns

    @property
    def iteration_ns(self) -> int:
        """How long the whole loop iteration lasted (the block, unless it is a segment)."""
        return self.iteration.duration_ns if self.iteration else self.duration_ns

    @property
    def iteration_id(self) -> str:
        """Names the iteration, the same for all its segments: pid, thread, start (hex)."""
        return f"{self.pid:x}-{self.tid:x}-{self.iteration_start_ns:x}"

    @property
    def segments(self) -> int:
        return self.iteration.segments if self.iteration else 1


@dataclass(frozen=True, slots=True)
class ThreadTimes:
    """Cumulative loop time of one watched thread, as the kernel counts it."""

    pid: int
    tid: int  # as the app sees it (``Block.app_tid``)
    iterations: int
    busy_ns: int  # out of epoll: running callbacks (or blocked)
    idle_ns: int  # inside epoll: waiting for events


@dataclass(frozen=True, slots=True)
class InProgress:
    """A thread of a watched process that is out of epoll right now."""

    pid: int
    tid: int
    start_ns: int
    activity: Activity | None
    segments: tuple[ContextSegment, ...] = ()  # the contexts it ran in so far, if recorded
    host_pid: int = 0  # the kernel's ids (0: not known)
    host_tid: int = 0


@dataclass(frozen=True, slots=True)
class ThreadSnapshot:
    """One read of the kernel's thread table."""

    ongoing: tuple[InProgress, ...]
    times: tuple[ThreadTimes, ...]


@dataclass(frozen=True, slots=True)
class Counters:
    """Kernel counters, summed over CPUs; totals since the program was loaded."""

    lost_events: int
    iterations: int
    busy_ns: int
    untracked_threads: int
    lost_triggers: int = 0
    unseen_switches: int = 0  # switches back on CPU the kernel placed at a later sighting


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Cumulative iteration histogram plus the extremes since the last read (stats mode)."""

    counts: tuple[int, ...]
    min_ns: int
    max_ns: int


@dataclass(frozen=True, slots=True)
class LoopTimes:
    """Periodic snapshot of every watched loop thread, for utilization metrics."""

    threads: tuple[ThreadTimes, ...]
    lost_events: int  # blocks the kernel could not send so far (ring buffer full)
    identities: tuple[ProcessIdentity, ...] = ()
    losses: tuple[tuple[Loss, int], ...] = ()  # every kind of loss so far (``losses.Losses``)


@dataclass(frozen=True, slots=True)
class IterationStats:
    """Loop-iteration durations over one refresh interval (stats mode)."""

    interval_s: float
    count: int
    sum_ns: int
    min_ns: int
    max_ns: int
    percentiles_ns: dict[float, int] = field(default_factory=dict)

    @property
    def rate_per_s(self) -> float:
        return self.count / self.interval_s if self.interval_s > 0 else 0.0

    @property
    def avg_ns(self) -> int:
        return self.sum_ns // self.count if self.count else 0


@dataclass(frozen=True, slots=True)
class NodeCounts:
    """Node mode's processes: how many were found and let go, and what is still held for them.

    ``held``: per kind of state (the kernel's watch entries, stack samplers,
    identities), how many processes it is held for now; once every watched
    process has exited, each is 0.
    """

    found: int
    left: int
    watched: int
    over_cap: int
    held: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ProcessExited:
    """A watched process exited and its blocks are out (node mode): sinks let go of it."""

    pid: int


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """Totals printed when the sidecar stops."""

    blocks: int
    blocked_ns: int
    max_block_ns: int
    lost_events: int
    ignored_blocks: int
    iterations: int = 0
    ignored_threads: tuple[tuple[int, str, ThreadKind], ...] = ()
    duration_s: float = 0.0
    losses: tuple[tuple[Loss, int], ...] = ()  # every kind of loss, totals at the end
    processes: NodeCounts | None = None  # node mode only


@dataclass(frozen=True, slots=True)
class Synced:
    """Every block that ended by ``monotonic_ns`` has been handed on before this record.

    The answer to a question asked with ``--sync`` (the pytest plugin asks at
    the end of each test phase, to judge it without waiting longer than needed).
    """

    monotonic_ns: int


# What the kernel sends through its ring buffers.
KernelEvent = BlockEvent | Trigger

# What a sink is handed: a block (``in_progress``: a hang, reported while it lasts),
# stats-mode intervals, periodic loop times, answers to --sync, and the summary, once, at the end.
Record = Block | IterationStats | LoopTimes | SessionSummary | ProcessExited | Synced
