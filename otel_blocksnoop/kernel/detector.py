"""Kernel side of detection: load bpf/detector.bpf.c, feed it PIDs, read blocks.

The program is compiled and loaded by a short-lived child (``loader``), so
BCC, LLVM and clang never enter this process; it holds the maps and programs
by their fds, attaches them, and reads maps and ring buffers itself.

Every epoll variant the kernel has (epoll_wait, epoll_pwait, epoll_pwait2)
gets the same enter/exit programs, so loops built on any of them (asyncio's
selector loop, uvloop/libuv) are timed alike. Threshold, trigger age, thread
filter and mode are compile-time constants (``program``), so the kernel drops
short iterations itself.

The kernel also says when to look (``Trigger``): a cpu-clock perf event on
every CPU runs ``on_tick``, which catches a loop thread busy on CPU past the
trigger age, and ``sched_switch`` one that leaves the CPU out of epoll. Both
ring buffers (blocks, triggers) are waited on with one epoll, together with
whatever else should wake the caller (``wake_on``: the target's exit, a stop
request), so ``poll(None)`` sleeps until something happens.

PID namespaces: the kernel keys its maps by host ids. A sidecar in another
PID namespace (``DetectorConfig.pidns``) knows ids of its own only: it names
the PIDs to watch by those, the kernel puts them in each thread's state and
event, and the host tid that keys a thread's entries comes with each event
(``host_tid``), remembered here for the lookups by tid.
"""

from __future__ import annotations

import errno
import logging
import select
import time
from dataclasses import replace

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.errors import BpfLoadError, NoPrivilegesError
from otel_blocksnoop.events import (
    NS_PER_MS,
    Counters,
    HistogramSnapshot,
    InProgress,
    KernelEvent,
    Loss,
    ThreadSnapshot,
)
from otel_blocksnoop.kernel import loader
from otel_blocksnoop.kernel.bpf_map import u32, u64
from otel_blocksnoop.kernel.bpf_syscall import BPF_NOEXIST
from otel_blocksnoop.kernel.constants import WATCH_ROOT
from otel_blocksnoop.kernel.counters import read_counters, read_histogram
from otel_blocksnoop.kernel.decode import block_event_from_c, segments_from_c, trigger_from_c
from otel_blocksnoop.kernel.layout import (
    BlockEventC,
    LoopContextC,
    ThreadStateC,
    TriggerEventC,
    WatchStateC,
)
from otel_blocksnoop.kernel.program import DetectorConfig
from otel_blocksnoop.kernel.ringbuf import record_as
from otel_blocksnoop.kernel.thread_table import ThreadTable, UserTicks, UserWake
from otel_blocksnoop.kernel.tracepoints import tracepoint_exists
from otel_blocksnoop.losses import Losses

log = logging.getLogger(__name__)

EPOLL_SYSCALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
TICK_PROGRAM = "on_tick"
MAX_HOST_TIDS = 16384
"""Threads whose host tid is remembered (PID namespaces): as many as the kernel's table holds."""


class Detector:
    """Owns the loaded program: load, watch PIDs, poll blocks, read counters, close.

    ``losses`` (a fresh one when None) gets the kernel's totals of what it
    dropped each time the counters are read.
    """

    def __init__(self, config: DetectorConfig, losses: Losses | None = None) -> None:
        self.config = config
        self.losses = losses if losses is not None else Losses()
        self._program: loader.LoadedProgram | None = None
        self._pending: list[KernelEvent] = []
        self._threads: ThreadTable | None = None
        self._waiter = select.epoll()
        self._user_ticks: UserTicks | None = None
        self._user_wake: UserWake | None = None
        self._host_tids: BoundedDict[int, int] = BoundedDict(MAX_HOST_TIDS)
        self._generation = 0  # PIDs named in watched_ns so far
        self.attached: tuple[str, ...] = ()

    def load(self) -> None:
        try:
            self._program = loader.load(self.config, self._programs())
        except (BpfLoadError, NoPrivilegesError) as exc:
            if not self.tracks_activity:
                raise
            # The cause needs bpf_task_pt_regs and BTF (Linux 5.15+) and kernel reads
            # (denied by lockdown=confidentiality); detection needs neither.
            log.warning("%s; blocks are reported without their cause", exc)
            self.config = replace(self.config, activity=False)
            self._program = loader.load(self.config, self._programs())
        program = self._program
        try:
            self._attach(program)
        except BpfLoadError:
            self.close()
            raise
        self._threads = ThreadTable(program.map("threads"))
        if self.config.stats:
            return
        program.ring_buffer("events", self._on_event)
        self._waiter.register(program.map_fd("events"), select.EPOLLIN)
        if self.config.triggers:
            program.ring_buffer("triggers", self._on_trigger)
            self._waiter.register(program.map_fd("triggers"), select.EPOLLIN)
            self._user_wake = UserWake(program.map("user_wake"))
            self._attach_ticks(program)

    def _programs(self) -> dict[str, int]:
        """The functions the compiler process loads beside BCC's own, by program type."""
        programs = dict(loader.EPOLL_PROGRAMS)
        if self.config.triggers:
            programs[TICK_PROGRAM] = loader.BPF_PROG_TYPE_PERF_EVENT
        return programs

    def _attach_ticks(self, program: loader.LoadedProgram) -> None:
        """The cpu-clock tick on every CPU; without it, user space looks every tick period."""
        try:
            program.attach_cpu_clock(TICK_PROGRAM, self.config.tick_ns)
        except OSError as exc:
            assert self._threads is not None  # noqa: S101 - set before by load()
            self._user_ticks = UserTicks(self._threads, self.config.trigger_ns)
            log.warning(
                "failed to attach cpu-clock perf event: %s; looking for blocked loops "
                "every %g ms instead",
                exc,
                self.config.tick_ns / NS_PER_MS,
            )

    def _attach(self, program: loader.LoadedProgram) -> None:
        """Each epoll variant's enter and exit, and the programs that name their tracepoint."""
        names = [n for n in EPOLL_SYSCALLS if tracepoint_exists("syscalls", f"sys_enter_{n}")]
        if not names:
            msg = "failed to attach tracepoints: no syscalls:sys_enter_epoll_* tracepoint"
            raise BpfLoadError(msg)
        program.attach(
            [
                *(
                    (function, f"syscalls:sys_{side}_{name}")
                    for name in names
                    for function, side in (("on_epoll_enter", "enter"), ("on_epoll_exit", "exit"))
                ),
                ("on_close_enter", "syscalls:sys_enter_close"),
            ]
        )
        self.attached = tuple(names)
        log.debug("attached to %s", ", ".join(program.attached))

    def watch(self, pid: int) -> None:
        """Watch ``pid`` (the sidecar's id) and the children it forks from now on."""
        program = self._loaded()
        if self.config.pidns is None:
            program.map("watched").update(u32(pid), bytes(WatchStateC(how=WATCH_ROOT)))
            return
        program.map("watched_ns").update(u32(pid), bytes(WatchStateC(how=WATCH_ROOT)))
        # Processes the kernel found unwatched before are looked up again.
        self._generation += 1
        program.map("watch_generation").update(u32(0), u64(self._generation))

    def unwatch(self, pid: int) -> None:
        """Stop watching ``pid``, which exited: a process that reuses its id is not watched.

        Its threads' entries went with them, in the kernel.
        """
        program = self._loaded()
        program.map("watched").delete(u32(pid))
        if self.config.pidns is not None:
            program.map("watched_ns").delete(u32(pid))

    def watched_count(self) -> int:
        """Processes the kernel watches now (named ones and the children they forked)."""
        return sum(1 for _ in self._loaded().map("watched").keys())  # noqa: SIM118 - not a dict

    def _host_tid(self, tid: int) -> int | None:
        """The kernel's key of the sidecar's thread ``tid``; None when not known (yet)."""
        return tid if self.config.pidns is None else self._host_tids.get(tid)

    def watch_context(self, tid: int, address: int) -> bool:
        """Have the kernel read ``tid``'s context pointer at ``address`` at each sighting.

        ``address`` is the thread state's ``context`` field (the trace linker
        finds it); without it the thread's blocks have no segments. False
        when not told: no segments, or the thread's host id is not known yet.
        """
        key = self._host_tid(tid)
        if self._program is None or not self.config.tracks_segments or key is None:
            return False
        context = bytes(LoopContextC(address=address))
        self._program.map("loop_contexts").update(u32(key), context)
        return True

    def adopt(self, pid: int, tid: int, off_nr: int) -> int | None:
        """Enter ``tid`` in the thread table as out of epoll since now; its start, or None.

        The kernel tracks a thread from its first return from epoll, so a loop
        already stuck when the program was attached would never be seen. Its
        entry is written only if the kernel has none (the thread may have come
        back meanwhile: None then). ``off_nr`` is what the thread does now
        (OFF_ON_CPU, OFF_RUNQ, or the syscall it sleeps in), for the cause; the
        block counts as told of (``told_ns``): the caller looks at it itself.
        In another PID namespace than the host's, the thread's host id, which
        keys its entry, is unknown until it returns from epoll: None.
        """
        if self.config.pidns is not None:
            return None
        now = time.monotonic_ns()
        state = ThreadStateC(
            left_epoll_ns=now,
            switched_at=now,
            proc_cpu_start=self._process_cpu_ns(pid) if self.tracks_activity else 0,
            told_ns=now,
            tgid=pid,
            off_nr=off_nr,
            tid=tid,
            host_tgid=pid,
        )
        try:
            self._loaded().map("threads").update(u32(tid), bytes(state), BPF_NOEXIST)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return None
            raise
        return now

    def disown(self, tid: int, start_ns: int) -> None:
        """Undo ``adopt`` of ``tid`` if its entry is still the one written (``start_ns``)."""
        key = self._host_tid(tid)
        if key is not None and self.out_since(tid) == start_ns:
            self._loaded().map("threads").delete(u32(key))

    def wake_on(self, fd: int) -> None:
        """Have ``poll`` return as soon as ``fd`` is readable (a pidfd, a pipe)."""
        self._waiter.register(fd, select.EPOLLIN)

    @property
    def tracks_activity(self) -> bool:
        return self.config.tracks_activity

    def _on_event(self, raw: bytes) -> None:
        event = record_as(BlockEventC, raw)
        self._pending.append(block_event_from_c(event, self.tracks_activity))

    def _on_trigger(self, raw: bytes) -> None:
        self._pending.append(trigger_from_c(record_as(TriggerEventC, raw)))

    def _learn_host_tids(self, events: list[KernelEvent]) -> None:
        """Remember the host tid of each thread the kernel spoke of (PID namespaces)."""
        if self.config.pidns is None:
            return
        for event in events:
            if event.host_tid:
                self._host_tids[event.tid] = event.host_tid

    def snapshot(self, min_ns: int, activity: bool = True) -> ThreadSnapshot:
        """Every tracked thread's loop time, and those out of epoll for ``min_ns`` now.

        ``activity``: also what each of those did so far (the cause of a hang);
        the trace linker needs only who is out of epoll.
        """
        if self._threads is None:
            msg = "the BPF program is not loaded"
            raise RuntimeError(msg)
        cpu = self._process_cpu_ns if activity and self.tracks_activity else None
        return self._threads.snapshot(min_ns, cpu)

    def out_since(self, tid: int) -> int:
        """When ``tid`` last left epoll; 0 while it is inside, or untracked. One map lookup."""
        key = self._host_tid(tid)
        return self._threads.out_since(key) if self._threads and key is not None else 0

    def in_progress(self, min_ns: int) -> list[InProgress]:
        """Threads out of epoll for at least ``min_ns`` now: blocks still going on."""
        return list(self.snapshot(min_ns).ongoing)

    def ongoing(self, tid: int) -> InProgress | None:
        """The block ``tid`` is in now, with what it did so far; None inside epoll. One lookup."""
        key = self._host_tid(tid)
        if self._threads is None or key is None:
            return None
        cpu = self._process_cpu_ns if self.tracks_activity else None
        now = time.monotonic_ns()
        item = self._threads.ongoing(key, now, cpu)
        if item is None or not self.config.tracks_segments:
            return item
        raw = self._loaded().map("loop_contexts").lookup(u32(key))
        if raw is None:
            return item
        loop = LoopContextC.from_buffer_copy(raw)
        if not loop.armed:
            return item  # watched from the middle of this block: no segments for it
        segments = segments_from_c(loop.segments, item.start_ns, now, item.activity)
        # Read apart from the thread's state: of this block only if it still goes on.
        if self.out_since(tid) != item.start_ns:
            return item
        return replace(item, segments=segments)

    def _process_cpu_ns(self, tgid: int) -> int:
        """CPU time of the process with host id ``tgid`` so far (the kernel's books)."""
        raw = self._loaded().map("watched").lookup(u32(tgid))
        return int(WatchStateC.from_buffer_copy(raw).cpu_ns) if raw is not None else 0

    def poll(self, timeout_ms: int | None) -> list[KernelEvent]:
        """Wait up to ``timeout_ms`` (None: with no limit) for the kernel, or a ``wake_on`` fd.

        Returns the blocks and triggers that arrived, in the order each ring
        buffer gave them.
        """
        if self._user_ticks is not None:
            tick_ms = -(-self.config.tick_ns // NS_PER_MS)
            timeout_ms = tick_ms if timeout_ms is None else min(timeout_ms, tick_ms)
        if self._user_wake is not None:
            # Rounded up to a millisecond: fewer writes, and never earlier than the wake-up.
            wake_ms = (
                -(-time.monotonic_ns() // NS_PER_MS) + timeout_ms + 1
                if timeout_ms is not None
                else 0
            )
            self._user_wake.publish(wake_ms * NS_PER_MS)
        program = self._loaded()
        # What came without waking us (or before the publish) needs no wait.
        program.consume()
        if not self._pending:
            self._waiter.poll(-1 if timeout_ms is None else timeout_ms / 1000)
            program.consume()
        if self._user_ticks is not None:
            self._pending.extend(self._user_ticks.look(time.monotonic_ns()))
        events, self._pending = self._pending, []
        self._learn_host_tids(events)
        return events

    def counters(self) -> Counters:
        counters = read_counters(self._loaded().map("counters"))
        self.losses.observe(Loss.KERNEL_EVENTS, counters.lost_events)
        self.losses.observe(Loss.KERNEL_THREADS, counters.untracked_threads)
        self.losses.observe(Loss.KERNEL_TRIGGERS, counters.lost_triggers)
        return counters

    def histogram(self) -> HistogramSnapshot:
        """Read the stats-mode histogram and reset the extremes."""
        program = self._loaded()
        return read_histogram(program.map("iter_hist"), program.map("iter_extremes"))

    @property
    def program(self) -> loader.LoadedProgram:
        """The loaded maps and programs (RuntimeError before ``load()`` or after ``close()``)."""
        return self._loaded()

    def _loaded(self) -> loader.LoadedProgram:
        if self._program is None:
            msg = "the BPF program is not loaded"
            raise RuntimeError(msg)
        return self._program

    def close(self) -> None:
        self._waiter.close()
        if self._program is not None:
            self._program.close()
            self._program = None
