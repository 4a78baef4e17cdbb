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
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import FrameType
from typing import Protocol

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
    Record,
    SessionSummary,
)
from otel_blocksnoop.export import otlp
from otel_blocksnoop.export.console import ConsoleSink
from otel_blocksnoop.export.jsonlines import JsonLinesSink
from otel_blocksnoop.export.sink import Sink
from otel_blocksnoop.kernel.detector import Detector
from otel_blocksnoop.kernel.program import DetectorConfig
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.process.pidns import NamespaceIds, sidecar_pid_namespace
from otel_blocksnoop.process.target import (
    ExitWatch,
    LaunchedCommand,
    TargetInfo,
    check_command,
    inspect_target,
)
from otel_blocksnoop.stacks.austin import Austin, AustinError
from otel_blocksnoop.stacks.pool import SamplerPool
from otel_blocksnoop.stacks.sampler import interval_for
from otel_blocksnoop.stacks.threads import ThreadClassifier

log = logging.getLogger(__name__)


class Watched(Protocol):
    """The watched process, as far as the session cares."""

    def exited(self) -> bool:
        """True once the process is gone."""

    def fileno(self) -> int:
        """A file descriptor that becomes readable when ``exited`` may have changed."""


@dataclass(frozen=True, slots=True)
class SessionOptions:
    threshold_ns: int
    stats: bool = False
    all_threads: bool = False
    stats_interval_s: float = 1.0


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
    ) -> None:
        self._detector = detector
        self._sinks = sinks
        self._options = options
        self._losses = losses if losses is not None else Losses()
        # Reads the cgroup's CPU stats twice per confirmed block, never between: always on.
        throttle = ThrottleWatch()
        self._flow = BlockFlow(
            detector,
            Enricher(options.threshold_ns, linker, throttle, ids),
            self._emit,
            self._losses,
            threshold_ns=options.threshold_ns,
            kinds=None if options.all_threads else classifier,
            stacks=stacks,
            followers=(throttle,) if linker is None else (linker, throttle),
        )
        self._stats = IntervalStats(detector)
        self._stop_requested = False
        self._lost_reported = 0
        # A stop request wakes the loop through this pipe: a signal handler runs while
        # the wait is retried (PEP 475), so setting the flag alone would not end it.
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def request_stop(self) -> None:
        """Ask the loop to drain and return; safe from a signal handler."""
        self._stop_requested = True
        if self._wake_write >= 0:
            with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                os.write(self._wake_write, b"x")

    @property
    def stopping(self) -> bool:
        return self._stop_requested

    def adopt(self, pid: int) -> None:
        """Follow the loops of ``pid`` already blocked now (``BlockFlow.adopt``)."""
        if self._options.stats or not self._detector.config.triggers:
            return
        log.info("looking for loops of PID %d that are blocked already", pid)
        self._flow.adopt(pid, self._detector)

    def run(self, target: Watched) -> SessionSummary:
        try:
            return self._run(target)
        finally:
            # No longer written to by a late signal (its number may be reused).
            read_fd, write_fd = self._wake_read, self._wake_write
            self._wake_write = -1
            os.close(write_fd)
            os.close(read_fd)

    def _run(self, target: Watched) -> SessionSummary:
        started = time.monotonic()
        every_s = self._options.stats_interval_s
        next_stats = started + every_s
        last_stats = started
        if not self._options.stats:
            self._detector.wake_on(target.fileno())
            self._detector.wake_on(self._wake_read)
        while not self._stop_requested and not target.exited():
            if self._options.stats:
                time.sleep(min(POLL_MS / 1000, max(0.0, next_stats - time.monotonic())))
            else:
                self._flow.step(until_ns=int(next_stats * 1e9))
            now = time.monotonic()
            if now >= next_stats:
                if self._options.stats:
                    self._emit(self._stats.next(now - last_stats))
                    last_stats = now
                else:
                    self._emit(self._flow.loop_times())
                self._warn_lost()
                next_stats = now + every_s
        if not self._options.stats:
            self._flow.finish()
        summary = self._flow.summary(time.monotonic() - started)
        self._emit(summary)
        for sink in self._sinks:
            sink.shutdown()
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
    if not config.pids:
        check_command(config.command)
    # What `otel-blocksnoop doctor PID...` checks, in its order: the same first failure.
    preflight.require(preflight.run_checks(config.pids))
    targets = [inspect_target(pid) for pid in config.pids]
    kernel = detector_config(config)
    if kernel.pidns is not None:
        _check_namespaces(targets)

    losses = Losses()
    detector = Detector(kernel, losses)
    detector.load()
    austin = _find_austin(config)
    ids = NamespaceIds()  # the app's ids of our threads, read once per thread
    stacks = _stacks(config, austin, losses, ids)
    linker = _linker(config, detector, losses)
    try:
        log.info("attached to %s", ", ".join(detector.attached))
        session = Session(
            detector,
            _sinks(config, losses),
            _classifier(config, austin, ids),
            SessionOptions(
                threshold_ns=config.threshold_ns,
                stats=config.stats,
                all_threads=config.all_threads,
            ),
            stacks=stacks,
            linker=linker,
            losses=losses,
            ids=ids,
        )
        what = (
            "loop iterations"
            if config.stats
            else f"blocks >= {config.threshold_ns / NS_PER_MS:g} ms"
        )
        if targets:
            for target in targets:
                if linker is not None:
                    linker.prepare(target.pid)
            return _watch_running(detector, session, targets, what, stacks)
        return _watch_launched(detector, session, config.command, what)
    finally:
        if linker is not None:
            linker.stop()
        if stacks is not None:
            stacks.stop()
        detector.close()


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
    config: Config, austin: Austin | None, ids: NamespaceIds
) -> ThreadClassifier | None:
    if config.all_threads or config.tid or austin is None:
        return None
    return ThreadClassifier(austin, ids)


def _stacks(
    config: Config, austin: Austin | None, losses: Losses, ids: NamespaceIds
) -> SamplerPool | None:
    if not config.stacks or austin is None:
        return None
    interval = config.sample_interval_us or interval_for(config.threshold_ns)
    log.info(
        "sampling Python stacks with Austin every %g ms while a loop is blocked", interval / 1000
    )
    # On demand: the kernel's triggers resume Austin (flow.begin/end); stats mode
    # has no stacks at all, so no mode needs Austin to sample all the time.
    return SamplerPool(austin, interval, losses, on_demand=True, ids=ids)


def _linker(config: Config, detector: Detector, losses: Losses) -> TraceLinker | None:
    if config.stats or not config.trace_link:
        return None
    linker = TraceLinker(detector, config.threshold_ns, losses=losses)
    linker.start()
    return linker


def _sinks(config: Config, losses: Losses) -> list[Sink]:
    sinks: list[Sink] = [JsonLinesSink() if config.json else ConsoleSink()]
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


class _Signals:
    """SIGINT/SIGTERM ask the session to drain and stop; in launch mode they reach the child."""

    def __init__(self, session: Session, child: LaunchedCommand | None) -> None:
        self._session = session
        self._child = child
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self._child is None:
            self._session.request_stop()
            return
        # Launch mode: the session ends when the child does. A terminal's
        # Ctrl-C already reached the child (same foreground group).
        if signum == signal.SIGINT and _foreground_terminal():
            return
        self._child.process.send_signal(signum)


def _short(command: Sequence[str], limit: int = 60) -> str:
    text = " ".join(command).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _foreground_terminal() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        return False


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


def _watch_launched(
    detector: Detector,
    session: Session,
    command: list[str],
    what: str,
) -> int:
    """Launch mode: the command runs once its PID is watched; its exit code is ours."""
    child = LaunchedCommand(command)
    detector.watch(child.pid)
    _Signals(session, child)
    # Its Austin starts when its loop first returns from epoll (the flow's NEW_THREAD):
    # started now, it would attach to the holder, whose exec ends it.
    child.release()
    log.info("launched PID %d (%s), watching for %s", child.pid, _short(command), what)
    try:
        session.run(child)
    finally:
        child.close()
    child.process.wait()
    code = child.exit_code()
    return code if code is not None else ExitCode.FAILURE
