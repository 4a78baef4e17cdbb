"""Wiring: build each stage once from the ``Config``, connect them, run until told to stop.

The stages do the work: the kernel detects (``kernel``), the samplers and
readers gather evidence (``stacks``, ``process``), ``analysis.flow`` turns
kernel events into blocks, and the sinks (``export``) ship them. This module
only decides which stages a run needs, hands each its own settings, and
stops them in order: a stop request (SIGINT/SIGTERM) or the target's exit
ends the loop, then the flow drains what the kernel already saw.

The loop sleeps on the kernel's ring buffers with no timeout but the flow's
own timers and the once-a-second loop-times record; the target's exit (a
pidfd) and a stop request (a pipe) wake it too.

A stop is bounded (``stop_timeout_s``, 5 s unless OTEL_BSP_EXPORT_TIMEOUT
says otherwise) from the first SIGINT/SIGTERM to exit, whatever the
collector or a launched command does: the command gets the signal, then
SIGTERM and SIGKILL (its whole process group) if it outlives its grace; the
flow, the samplers and the sinks share what is left. A second signal exits
at once, saying what it left undelivered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import FrameType
from typing import NoReturn, Protocol

from otel_blocksnoop import preflight
from otel_blocksnoop.analysis.enrich import Enricher
from otel_blocksnoop.analysis.flow import POLL_MS, BlockFlow
from otel_blocksnoop.analysis.stats import IntervalStats
from otel_blocksnoop.analysis.throttle import ThrottleWatch
from otel_blocksnoop.analysis.trace_link import TraceLinker
from otel_blocksnoop.config import Config
from otel_blocksnoop.errors import ExitCode, PidNamespaceError
from otel_blocksnoop.events import (
    NS_PER_MS,
    Block,
    ProcessExited,
    Record,
    SessionSummary,
    Synced,
    ThreadKind,
)
from otel_blocksnoop.export import otlp
from otel_blocksnoop.export.console import ConsoleSink
from otel_blocksnoop.export.gate import Gate
from otel_blocksnoop.export.jsonlines import JsonLinesSink
from otel_blocksnoop.export.sink import Sink
from otel_blocksnoop.kernel.detector import Detector
from otel_blocksnoop.kernel.program import DetectorConfig
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.node import NodeWatch
from otel_blocksnoop.process.discovery import Discovery, Selector, has_event_poll
from otel_blocksnoop.process.pidns import NamespaceIds, sidecar_pid_namespace
from otel_blocksnoop.process.target import (
    ExecIdentity,
    ExitWatch,
    LaunchedCommand,
    TargetInfo,
    check_command,
    inspect_target,
)
from otel_blocksnoop.stacks.austin import Austin, AustinError
from otel_blocksnoop.stacks.memory import StackSources
from otel_blocksnoop.stacks.pool import SamplerPool
from otel_blocksnoop.stacks.sampler import interval_for
from otel_blocksnoop.stacks.threads import ThreadClassifier, classify

log = logging.getLogger(__name__)


class Watched(Protocol):
    """The watched process, as far as the session cares."""

    def exited(self) -> bool:
        """True once the process is gone."""

    def fileno(self) -> int:
        """A file descriptor that becomes readable when ``exited`` may have changed."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Each asks for a bounded stop (SIGHUP: the terminal went away); a second one exits at once."""
DEFAULT_STOP_S = otlp.DEFAULT_SHUTDOWN_S
"""From a stop request (or the target's exit) to the sidecar's exit, at most."""
TERM_AFTER = 0.4
"""A launched command still running this share of the stop bound after the first signal
(2 s of 5) gets SIGTERM, its whole process group..."""
KILL_AFTER = 0.6
"""...and SIGKILL at this share (3 s of 5), leaving the rest to deliver what is queued."""
GROUP_POLL_S = 0.01
"""How often a launched command's group is looked at while it is being stopped."""
EXIT_MARGIN_S = 0.5
"""Kept back from the stop bound for what follows the sinks' shutdown (the interpreter's exit)."""


@dataclass(frozen=True, slots=True)
class SessionOptions:
    threshold_ns: int
    stats: bool = False
    all_threads: bool = False
    stats_interval_s: float = 1.0
    stop_timeout_s: float = DEFAULT_STOP_S


class Escalation:
    """A launched command that outlives a stop: SIGTERM, then SIGKILL to its process group."""

    def __init__(self, child: LaunchedCommand, stop_timeout_s: float) -> None:
        self._child = child
        self._kill_after_s = stop_timeout_s * KILL_AFTER
        self._steps = [
            (stop_timeout_s * TERM_AFTER, signal.SIGTERM),
            (self._kill_after_s, signal.SIGKILL),
        ]

    def step(self, asked_at: float) -> float | None:
        """Signal what is due since the stop request at ``asked_at``; when to step again."""
        since_s = time.monotonic() - asked_at
        while self._steps and self._steps[0][0] <= since_s:
            _, signum = self._steps.pop(0)
            if not self._child.exited():
                log.warning(
                    "the launched command still runs %.1f s after the stop; sending %s to its "
                    "process group",
                    since_s,
                    signal.Signals(signum).name,
                )
                self._child.signal_group(signum)
        return asked_at + self._steps[0][0] if self._steps else None

    def finish(self, asked_at: float) -> None:
        """The command exited after a stop request; what is left of its group goes too.

        A shell dies of SIGINT while its background job, which ignores SIGINT,
        runs on: the group gets SIGTERM now, and SIGKILL if it is still there
        at the kill time (at most ``KILL_AFTER`` of the bound after the request).
        """
        if not self._child.group_alive():
            return
        if any(signum == signal.SIGTERM for _, signum in self._steps):
            log.warning(
                "the launched command exited, but not all of its process group; sending SIGTERM"
            )
            self._child.signal_group(signal.SIGTERM)
        while self._child.group_alive():
            if time.monotonic() - asked_at >= self._kill_after_s:
                log.warning("its process group is still there; sending SIGKILL")
                self._child.signal_group(signal.SIGKILL)
                return
            time.sleep(GROUP_POLL_S)


class SyncRequests:
    """Questions asked on a pipe (``--sync``): one CLOCK_MONOTONIC time in ns per line.

    Each is answered with a ``Synced`` record once every block that ended by
    then has been handed on: the pytest plugin judges a test as soon as the
    sidecar has caught up with its end, and waits no longer. The asker
    closing the pipe asks the sidecar to stop.
    """

    MAX_LINE = 32

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        self._buffer = b""
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    def read(self) -> list[int]:
        """The times asked since the last read; a line that is not a number is ignored."""
        while not self.closed:
            try:
                chunk = os.read(self._fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                self.closed = True
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        self._buffer = self._buffer[-self.MAX_LINE :]
        return [int(line) for line in lines if line.strip().isdigit()]


class Session:
    """Runs the flow (or stats) until a stop request or the target's exit, then sums up."""

    def __init__(  # noqa: PLR0913 - every stage is passed in, none is built here
        self,
        detector: Detector,
        sinks: Sequence[Sink],
        classifier: ThreadClassifier | None,
        options: SessionOptions,
        *,
        stacks: SamplerPool | None = None,
        linker: TraceLinker | None = None,
        losses: Losses | None = None,
        ids: NamespaceIds | None = None,
        sync: SyncRequests | None = None,
    ) -> None:
        self._detector = detector
        self._sync = sync
        self._asked: list[int] = []  # sync times not answered yet, in the order asked
        self._sinks = sinks
        self._options = options
        self._losses = losses if losses is not None else Losses()
        # Reads the cgroup's CPU stats twice per confirmed block, never between: always on.
        throttle = ThrottleWatch()
        self._kinds = None if options.all_threads else classifier
        self._classifier = classifier
        self._enricher = Enricher(options.threshold_ns, linker, throttle, ids)
        self._flow = BlockFlow(
            detector,
            self._enricher,
            self._emit,
            self._losses,
            threshold_ns=options.threshold_ns,
            kinds=self._kinds,
            stacks=stacks,
            followers=(throttle,) if linker is None else (linker, throttle),
        )
        self._stats = IntervalStats(detector)
        self._stacks = stacks
        self._linker = linker
        self._stop_requested = False
        self._stop_asked_at: float | None = None  # time.monotonic() of the first stop request
        self._announced = False
        self._lost_reported = 0
        # A stop request wakes the loop through this pipe: a signal handler runs while
        # the wait is retried (PEP 475), so setting the flag alone would not end it.
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def request_stop(self, *, until_target_exits: bool = False) -> None:
        """Ask the loop to drain and return within the stop bound; safe from a signal handler.

        ``until_target_exits``: the loop goes on until the target exits (a
        launched command told to stop), but the bound counts from now.
        """
        if self._stop_asked_at is None:
            self._stop_asked_at = time.monotonic()
        if not until_target_exits:
            self._stop_requested = True
        if self._wake_write >= 0:
            with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                os.write(self._wake_write, b"x")

    @property
    def stopping(self) -> bool:
        return self._stop_requested

    def adopt(self, pid: int) -> None:
        """Follow the loops of ``pid`` already blocked now (``BlockFlow.adopt``)."""
        if self._options.stats or not self._detector.config.triggers or self._kinds is None:
            return  # loops are told apart by their stacks: without them nothing is adopted
        log.info("looking for loops of PID %d that are blocked already", pid)
        self._flow.adopt(pid, self._detector, self._kinds)

    def holds(self, pid: int) -> bool:
        """Whether a block of ``pid`` is still being analysed (node mode waits for it)."""
        return self._flow.holds(pid)

    def forget(self, pid: int) -> None:
        """``pid`` exited and its blocks are out: who it was and its threads' kinds go."""
        self._enricher.forget(pid)
        self._emit(ProcessExited(pid))
        if self._classifier is not None:
            self._classifier.forget(pid)
        if self._stacks is not None:
            self._stacks.forget(pid)
        if self._linker is not None:
            self._linker.forget(pid)

    @property
    def identities(self) -> int:
        """Processes whose identity is held."""
        return self._enricher.known

    def expect(self, pid: int, holder: ExecIdentity | None) -> None:
        """A command about to be launched: its trace links are prepared before its loop runs."""
        if self._linker is not None:
            self._linker.expect(pid, holder)

    @property
    def stop_asked(self) -> bool:
        """A stop was asked for (a signal came), whether or not the loop has ended."""
        return self._stop_asked_at is not None

    def undelivered(self) -> dict[str, int]:
        """What would be lost by exiting now: blocks being analysed, records being sent.

        Read from a signal handler: lengths only, no locks.
        """
        found: dict[str, int] = {}
        if self._flow.pending:
            found["blocks being analysed"] = self._flow.pending
        for sink in self._sinks:
            for what, count in sink.pending().items():
                if count:
                    found[what] = found.get(what, 0) + count
        return found

    def run(
        self,
        target: Watched,
        escalation: Escalation | None = None,
        node: NodeWatch | None = None,
    ) -> SessionSummary:
        """Until a stop request or the target's exit; ``node``: its processes come and go."""
        try:
            return self._run(target, escalation, node)
        finally:
            # No longer written to by a late signal (its number may be reused).
            read_fd, write_fd = self._wake_read, self._wake_write
            self._wake_write = -1
            os.close(write_fd)
            os.close(read_fd)

    def _run(
        self, target: Watched, escalation: Escalation | None, node: NodeWatch | None
    ) -> SessionSummary:
        started = time.monotonic()
        every_s = self._options.stats_interval_s
        next_stats = started + every_s
        last_stats = started
        if not self._options.stats:
            self._detector.wake_on(target.fileno())
            self._detector.wake_on(self._wake_read)
            if self._sync is not None:
                self._detector.wake_on(self._sync.fileno())
        while not self._stop_requested and not target.exited():
            wake_at = next_stats if node is None else min(next_stats, node.step())
            if escalation is not None and self._stop_asked_at is not None:
                due = escalation.step(self._stop_asked_at)
                wake_at = wake_at if due is None else min(wake_at, due)
            if self._options.stats:
                time.sleep(min(POLL_MS / 1000, max(0.0, wake_at - time.monotonic())))
            else:
                self._flow.step(until_ns=int(wake_at * 1e9))
                self._answer_sync()
            now = time.monotonic()
            if now >= next_stats:
                if self._options.stats:
                    self._emit(self._stats.next(now - last_stats))
                    last_stats = now
                else:
                    self._emit(self._flow.loop_times())
                self._warn_lost()
                next_stats = now + every_s
            self._announce_stop()
        if escalation is not None and self._stop_asked_at is not None:
            escalation.finish(self._stop_asked_at)
        return self._finish(started, node)

    def _answer_sync(self) -> None:
        """Say ``Synced`` for each time asked once the blocks that ended by then are out."""
        if self._sync is None:
            return
        asked = self._sync.read()
        if self._sync.closed:
            self._sync = None
            self.request_stop()
        if asked:
            # The kernel queued every block that ended by then before it was asked:
            # take what it holds now, not only what woke us.
            self._flow.step(until_ns=0)
            self._asked.extend(asked)
        while self._asked and self._flow.settled(self._asked[0]):
            self._emit(Synced(self._asked.pop(0)))

    def _announce_stop(self) -> None:
        """Say once that a stop was asked for (not from the handler: logging takes locks)."""
        if self._stop_asked_at is not None and not self._announced:
            self._announced = True
            log.info(
                "stopping within %g s (a second Ctrl-C or SIGTERM exits at once)",
                self._options.stop_timeout_s,
            )

    def _finish(self, started: float, node: NodeWatch | None = None) -> SessionSummary:
        """Drain, sum up and deliver, by one deadline from the stop request (or the exit)."""
        self._announce_stop()
        stop_from = self._stop_asked_at if self._stop_asked_at is not None else time.monotonic()
        deadline = stop_from + self._options.stop_timeout_s - EXIT_MARGIN_S
        if not self._options.stats:
            self._flow.finish(deadline_ns=int(deadline * 1e9))
        # Evidence and the kernel are no longer needed: they end before the sinks' last
        # delivery, which takes what is left (detaching the BPF programs takes ~0.4 s).
        if self._linker is not None:
            self._linker.stop()
        if self._stacks is not None:
            self._stacks.stop()
        summary = self._flow.summary(time.monotonic() - started)
        if node is not None:
            summary = replace(summary, processes=node.counts())
        self._detector.close()
        for sink in self._sinks:
            sink.drain(deadline)
        # What the drain could not deliver is in the summary's losses.
        summary = replace(summary, losses=self._losses.snapshot())
        self._emit(summary)
        for sink in self._sinks:
            sink.shutdown(deadline)
        return summary

    def _emit(self, record: Record) -> None:
        for sink in self._sinks:
            sink.export(record)

    def _warn_lost(self) -> None:
        lost = self._detector.counters().lost_events
        if lost > self._lost_reported:
            log.warning(
                "lost %d blocks: the ring buffer was full (the sidecar fell behind)",
                lost - self._lost_reported,
            )
            self._lost_reported = lost


def run(config: Config) -> int:
    """One run of the sidecar from its configuration; the exit code."""
    if not config.pids and config.select is None:
        check_command(config.command)
    # What `otel-blocksnoop doctor PID...` checks, in its order: the same first failure.
    preflight.require(preflight.run_checks(config.pids))
    targets = [inspect_target(pid) for pid in config.pids]
    kernel = detector_config(config)
    if kernel.pidns is not None:
        _check_namespaces(targets)

    losses = Losses()
    gate = (
        Gate(config.fail_on_ns, config.fail_on_loss, counts=_loop_was_running)
        if config.fail_on_ns is not None or config.fail_on_loss
        else None
    )
    code = _run(config, targets, kernel, losses, gate)
    return code if gate is None else gate.verdict(code)


def _run(
    config: Config,
    targets: list[TargetInfo],
    kernel: DetectorConfig,
    losses: Losses,
    gate: Gate | None,
) -> int:
    """Load, attach, watch until the end; the exit code before the gate's verdict."""
    detector = Detector(kernel, losses)
    detector.load()
    austin = _find_austin(config)
    ids = NamespaceIds()  # the app's ids of our threads, read once per thread
    sources = StackSources(config.stacks_from)
    stacks = _stacks(config, austin, losses, ids, sources)
    linker = _linker(config, detector, losses)
    classifier = _classifier(config, austin, ids, sources)
    try:
        log.info("attached to %s", ", ".join(detector.attached))
        session = Session(
            detector,
            [*_sinks(config, losses), *([] if gate is None else [gate])],
            classifier,
            SessionOptions(
                threshold_ns=config.threshold_ns,
                stats=config.stats,
                all_threads=config.all_threads,
                stop_timeout_s=config.otlp.shutdown_timeout_s,
            ),
            stacks=stacks,
            linker=linker,
            losses=losses,
            ids=ids,
            sync=SyncRequests(sys.stdin.fileno()) if config.sync else None,
        )
        what = (
            "loop iterations"
            if config.stats
            else f"blocks >= {config.threshold_ns / NS_PER_MS:g} ms"
        )
        if config.select is not None:
            stages = _NodeStages(detector, session, stacks, linker)
            discovery = Discovery(config.select)
            node = NodeWatch(discovery, stages, config.max_processes)
            return _watch_node(session, node, config.select, what)
        if targets:
            for target in targets:
                if linker is not None:
                    linker.prepare(target.pid)
            return _watch_running(detector, session, targets, what, stacks)
        return _watch_launched(
            detector, session, config.command, what, config.otlp.shutdown_timeout_s
        )
    finally:
        if classifier is not None:
            classifier.close()
        if linker is not None:
            linker.stop()
        if stacks is not None:
            stacks.stop()
        detector.close()


def _loop_was_running(block: Block) -> bool:
    """Whether a block can fail the run: its stack shows an event loop running, or is unknown.

    A thread that ran a loop, then plain code (pytest between two tests, a
    program between two ``asyncio.run``), then another loop is out of epoll
    all along and reported as one block; no loop was held up.
    """
    return not block.stack or classify(block.stack) == ThreadKind.LOOP


def detector_config(config: Config) -> DetectorConfig:
    """The kernel side for ``config``, built for the PID namespace our /proc shows."""
    return replace(config.detector, pidns=sidecar_pid_namespace())


def _check_namespaces(targets: list[TargetInfo]) -> None:
    """From a PID namespace that is not the host's, the kernel names only threads of ours.

    bpf_get_ns_current_pid_tgid gives a thread's ids in the namespace it runs
    in, not in one above it: a target in a namespace nested in the sidecar's
    (not the host's) could not be told apart, and would show no block.
    """
    ids = NamespaceIds()
    for target in targets:
        if ids.nested(target.pid):
            msg = (
                f"failed to watch process {target.pid}: it runs in a PID namespace nested "
                "in the sidecar's, which is not the host's"
            )
            raise PidNamespaceError(msg)


def _find_austin(config: Config) -> Austin | None:
    if config.stats or (config.all_threads and not config.stacks):
        return None
    try:
        austin = Austin.find(config.austin)
        austin.version()
    except AustinError as exc:
        log.warning(
            "%s; blocks are reported without stacks, and every epoll thread is reported", exc
        )
        return None
    return austin


def _classifier(
    config: Config, austin: Austin | None, ids: NamespaceIds, sources: StackSources
) -> ThreadClassifier | None:
    if config.all_threads or config.tid or austin is None:
        return None
    return ThreadClassifier(austin, ids, sources)


READERS_SAID = {
    "auto": "from the app's memory, or by Austin where only it can read the app",
    "austin": "Austin",
    "memory": "read from the app's memory",
}
"""The start-up line's words for each ``--stacks-from``: ``auto`` picks per process."""


def _stacks(
    config: Config,
    austin: Austin | None,
    losses: Losses,
    ids: NamespaceIds,
    sources: StackSources,
) -> SamplerPool | None:
    if not config.stacks or austin is None:
        return None
    interval = config.sample_interval_us or interval_for(config.threshold_ns)
    log.info(
        "sampling Python stacks every %g ms while a loop is blocked (%s)",
        interval / 1000,
        READERS_SAID[config.stacks_from],
    )
    # On demand: the kernel's triggers resume Austin (flow.begin/end); stats mode
    # has no stacks at all, so no mode needs Austin to sample all the time.
    return SamplerPool(austin, interval, losses, on_demand=True, ids=ids, sources=sources)


def _linker(config: Config, detector: Detector, losses: Losses) -> TraceLinker | None:
    if config.stats or not config.trace_link:
        return None
    linker = TraceLinker(detector, config.threshold_ns, losses=losses)
    linker.start()
    return linker


def _sinks(config: Config, losses: Losses) -> list[Sink]:
    sinks: list[Sink] = [JsonLinesSink() if config.json else ConsoleSink()]
    if config.report is not None:
        # Jinja2 loads only when a report is asked for.
        from otel_blocksnoop.export.report import ReportSink  # noqa: PLC0415

        sinks.append(ReportSink(config.report, _watched(config)))
    settings = config.otlp
    if config.stats:
        return sinks
    if not settings.enabled:
        log.info("OTLP export is off (set OTEL_EXPORTER_OTLP_ENDPOINT or --otlp-endpoint)")
        return sinks
    from otel_blocksnoop.export.otel import OtelSink  # noqa: PLC0415 - the SDK loads only if used

    log.info("exporting %s", otlp.describe(settings))
    if (problem := otlp.reachable(settings)) is not None:
        log.warning(
            "collector not reachable yet (%s); blocks are kept (up to %d) and sent when it is",
            problem,
            settings.max_queue,
        )
    elif (problem := otlp.wrong_protocol(settings)) is not None:
        log.warning("%s", problem)
    sinks.append(OtelSink(otlp.build_exporters(settings), settings, losses))
    return sinks


def _watched(config: Config) -> str:
    """What a run watched, as its report's title says."""
    if config.command:
        return " ".join(config.command)
    if config.pids:
        return "PID " + ", ".join(map(str, config.pids))
    return "the Python processes of the node"


class _Signals:
    """The first SIGINT/SIGTERM asks for a bounded stop; a second one exits at once.

    In launch mode the first also goes to the command's process group.
    """

    def __init__(self, session: Session, child: LaunchedCommand | None) -> None:
        self._session = session
        self._child = child
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self._session.stop_asked:
            self._exit_now()
        if self._child is None:
            self._session.request_stop()
            return
        # Launch mode: the session ends when the child does (the bound counts from now).
        # The child has its own process group: a terminal's Ctrl-C reached only us.
        self._session.request_stop(until_target_exits=True)
        self._child.signal_group(signum)

    def _exit_now(self) -> NoReturn:
        """Second signal: kill the launched command's group, say what is dropped, exit."""
        if self._child is not None and not self._child.exited():
            self._child.signal_group(signal.SIGKILL)
        with contextlib.suppress(Exception):  # the main thread may be writing it: best effort
            sys.stdout.flush()
        what = _listed(self._session.undelivered())
        line = f"stopped at once by a second signal: {what or 'nothing'} left undelivered\n"
        with contextlib.suppress(OSError):
            os.write(sys.stderr.fileno(), f"otel-blocksnoop: {line}".encode())
        os._exit(ExitCode.STOPPED_AT_ONCE)


def _listed(counts: Mapping[str, int]) -> str:
    """``{"spans": 3, "hang records": 1}`` as "3 spans, 1 hang records"."""
    return ", ".join(f"{count} {what}" for what, count in counts.items())


def _short(command: Sequence[str], limit: int = 60) -> str:
    text = " ".join(command).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _watch_running(
    detector: Detector,
    session: Session,
    targets: list[TargetInfo],
    what: str,
    stacks: SamplerPool | None,
) -> int:
    """Attach mode: until every target has exited, or a signal says stop."""
    for target in targets:
        detector.watch(target.pid)
        if stacks is not None:
            stacks.ensure(target.pid)
        log.info("watching PID %d (%s) for %s", target.pid, _short([target.cmdline]), what)
    watch = ExitWatch([target.pid for target in targets])
    _Signals(session, None)
    for target in targets:
        session.adopt(target.pid)
    log.info("Ctrl-C to stop")
    try:
        session.run(watch)
    finally:
        watch.close()
    if not session.stopping:
        log.info("watched process%s exited", "es" if len(targets) > 1 else "")
    return ExitCode.OK


class _NodeStages:
    """Node mode's hands on the stages: attach a process found, let go of one that exited."""

    def __init__(
        self,
        detector: Detector,
        session: Session,
        stacks: SamplerPool | None,
        linker: TraceLinker | None,
    ) -> None:
        self._detector = detector
        self._session = session
        self._stacks = stacks
        self._linker = linker

    def attach(self, target: TargetInfo, *, running: bool) -> None:
        """Watch ``target``; one found at start with an epoll fd is made ready as attach mode does.

        Its loop may idle in epoll: the kernel first sees it at its first block,
        too late to start its sampler and reader for that block. A process that
        starts later is made ready when its loop first returns from epoll (the
        flow's NEW_THREAD), so one that runs no loop costs only its kernel entry.
        """
        self._detector.watch(target.pid)
        log.info("watching PID %d (%s)", target.pid, _short([target.cmdline]))
        if not running or not has_event_poll(target.pid):
            return
        if self._linker is not None:
            self._linker.prepare(target.pid)
        if self._stacks is not None:
            self._stacks.ensure(target.pid)
        self._session.adopt(target.pid)

    def holds(self, pid: int) -> bool:
        return self._session.holds(pid)

    def release(self, pid: int) -> None:
        self._detector.unwatch(pid)
        self._session.forget(pid)

    def held(self) -> dict[str, int]:
        return {
            "kernel_watch_entries": self._detector.watched_count(),
            "samplers": len(self._stacks) if self._stacks is not None else 0,
            "identities": self._session.identities,
        }


def _watch_node(session: Session, node: NodeWatch, select: Selector, what: str) -> int:
    """Node mode: until a signal says stop, whatever the processes do."""
    _Signals(session, None)
    try:
        found = node.start()
        log.info("watching %s for %s: %d now, more as they start", select.describe(), what, found)
        log.info("Ctrl-C to stop")
        session.run(node, node=node)
    finally:
        node.close()
    return ExitCode.OK


def _watch_launched(
    detector: Detector,
    session: Session,
    command: list[str],
    what: str,
    stop_timeout_s: float,
) -> int:
    """Launch mode: the command runs once its PID is watched; its exit code is ours."""
    child = LaunchedCommand(command)
    detector.watch(child.pid)
    session.expect(child.pid, child.holder)
    _Signals(session, child)
    # Its Austin starts when its loop first returns from epoll (the flow's NEW_THREAD):
    # started now, it would attach to the holder, whose exec ends it.
    child.release()
    log.info("launched PID %d (%s), watching for %s", child.pid, _short(command), what)
    try:
        session.run(child, Escalation(child, stop_timeout_s))
    finally:
        child.close()
    child.process.wait()
    code = child.exit_code()
    return code if code is not None else ExitCode.FAILURE
