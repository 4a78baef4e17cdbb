"""Command line: ``otel-blocksnoop [OPTIONS] PID`` or ``otel-blocksnoop [OPTIONS] -- CMD ARGS...``.

Only ``main`` prints errors; it maps each ``BlocksnoopError`` to its exit code.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from otel_blocksnoop import __version__, preflight
from otel_blocksnoop.analysis.trace_link import TraceLinker
from otel_blocksnoop.errors import BlocksnoopError, ExitCode
from otel_blocksnoop.events import NS_PER_MS
from otel_blocksnoop.export import otlp
from otel_blocksnoop.export.console import ConsoleSink
from otel_blocksnoop.export.jsonlines import JsonLinesSink
from otel_blocksnoop.export.sink import Sink
from otel_blocksnoop.kernel.detector import Detector, DetectorConfig, program_cflags, program_source
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.process.target import (
    ExitWatch,
    LaunchedCommand,
    TargetInfo,
    check_command,
    inspect_target,
)
from otel_blocksnoop.session import Session, SessionOptions
from otel_blocksnoop.stacks.austin import Austin, AustinError
from otel_blocksnoop.stacks.sampler import SamplerPool, interval_for
from otel_blocksnoop.stacks.threads import ThreadClassifier

PROG = "otel-blocksnoop"
DEFAULT_THRESHOLD_MS = 100.0

log = logging.getLogger(PROG)

EXAMPLES = """\
examples:
  otel-blocksnoop 1234                  # report loop blocks of PID 1234 over 100 ms
  otel-blocksnoop -t 10 1234            # ... over 10 ms
  otel-blocksnoop --json 1234           # one JSON object per block, per line
  otel-blocksnoop --stats 1234          # live distribution of loop iterations
  otel-blocksnoop --tid 1240 1234       # only the loop on thread 1240
  otel-blocksnoop 1234 1240 1251        # several processes at once
  otel-blocksnoop -- python3 app.py     # launch app.py, watched from its start
  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 otel-blocksnoop 1234
                                        # ... and send spans and metrics to a collector
  otel-blocksnoop doctor                # check BCC, headers, tracefs, Austin
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message} (see --help)\n")
        raise SystemExit(ExitCode.USAGE)


def threshold_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"not a number: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not math.isfinite(value) or value <= 0:
        msg = f"must be a positive number of milliseconds, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        msg = f"not a whole number: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value <= 0:
        msg = f"must be positive, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [OPTIONS] PID [PID...] | {PROG} [OPTIONS] -- CMD [ARGS...] | {PROG} doctor",
        description="Report every time an asyncio event loop in a Python process is blocked.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "pids", nargs="*", type=positive_int, metavar="PID", help="process(es) to watch"
    )
    parser.add_argument(
        "-t",
        "--threshold",
        type=threshold_ms,
        default=DEFAULT_THRESHOLD_MS,
        metavar="MS",
        help=f"report loop iterations at least this long (default {DEFAULT_THRESHOLD_MS:g})",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    parser.add_argument(
        "--stats",
        action="store_true",
        help="show the distribution of all loop iterations each second instead of blocks",
    )
    parser.add_argument("--tid", type=positive_int, help="watch only this thread of PID")
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="report every thread that calls epoll, not only event-loop threads",
    )
    parser.add_argument(
        "--no-cause",
        action="store_true",
        help="do not follow the loop thread on and off CPU (blocks are reported without a cause)",
    )
    parser.add_argument(
        "--no-trace-link",
        action="store_true",
        help="do not read the app's active OpenTelemetry span and asyncio task "
        "(blocks start their own traces and name no task)",
    )
    parser.add_argument(
        "--no-stacks",
        action="store_true",
        help="do not sample Python stacks (blocks are reported without code)",
    )
    parser.add_argument(
        "--sample-interval",
        type=threshold_ms,
        metavar="MS",
        help="Austin's sampling interval (default: threshold/10, between 1 and 10 ms)",
    )
    parser.add_argument(
        "--austin", metavar="PATH", help="Austin binary (default: $AUSTINPATH, the venv, $PATH)"
    )
    otlp_group = parser.add_argument_group(
        "OpenTelemetry export",
        "Configured by the standard OTEL_* environment variables; these flags override them. "
        "Export is on when an endpoint is set.",
    )
    otlp_group.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="collector endpoint (default: $OTEL_EXPORTER_OTLP_ENDPOINT), e.g. http://localhost:4318",
    )
    otlp_group.add_argument(
        "--otlp-protocol",
        choices=otlp.PROTOCOLS,
        help=f"OTLP transport (default: $OTEL_EXPORTER_OTLP_PROTOCOL or {otlp.DEFAULT_PROTOCOL})",
    )
    otlp_group.add_argument(
        "--export-unsampled",
        action="store_true",
        help="export the spans of blocks inside requests the app did not sample",
    )
    otlp_group.add_argument(
        "--service",
        metavar="NAME",
        help="service.name for apps that do not set their own OTEL_SERVICE_NAME "
        "(default: $OTEL_SERVICE_NAME, else unknown_service:python)",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug messages on stderr")
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors on stderr"
    )
    parser.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


@dataclass(frozen=True, slots=True)
class Arguments:
    pids: tuple[int, ...]
    command: list[str]
    threshold_ns: int
    json: bool
    stats: bool
    tid: int
    all_threads: bool
    austin: str | None
    otlp_endpoint: str | None
    otlp_protocol: str | None
    service: str | None
    cause: bool
    trace_link: bool
    export_unsampled: bool
    stacks: bool
    sample_interval_us: int | None
    verbose: bool
    quiet: bool
    ebpf: bool


def parse_arguments(argv: Sequence[str]) -> Arguments:
    argv = list(argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not ns.ebpf:
        if ns.pids and command:
            parser.error("give either a PID or a command after `--`, not both")
        if not ns.pids and not command:
            parser.error("give a PID to watch, or a command after `--` to launch")
    if ns.tid is not None and len(ns.pids) != 1:
        parser.error("--tid needs exactly one PID: the thread's process")
    return Arguments(
        pids=tuple(dict.fromkeys(ns.pids)),
        command=command,
        threshold_ns=round(ns.threshold * NS_PER_MS),
        json=ns.json,
        stats=ns.stats,
        tid=ns.tid or 0,
        all_threads=ns.all_threads,
        austin=ns.austin,
        otlp_endpoint=ns.otlp_endpoint,
        otlp_protocol=ns.otlp_protocol,
        service=ns.service,
        cause=not ns.no_cause,
        trace_link=not ns.no_trace_link,
        export_unsampled=ns.export_unsampled,
        stacks=not ns.no_stacks,
        sample_interval_us=round(ns.sample_interval * 1000) if ns.sample_interval else None,
        verbose=ns.verbose,
        quiet=ns.quiet,
        ebpf=ns.ebpf,
    )


def _configure_logging(args: Arguments) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _doctor(argv: Sequence[str]) -> int:
    parser = _Parser(prog=f"{PROG} doctor", description="Check what the sidecar needs.")
    parser.add_argument("--austin", metavar="PATH", help="Austin binary to check")
    ns = parser.parse_args(list(argv))
    checks = preflight.run_checks(ns.austin)
    for check in checks:
        mark = "ok" if check.ok else ("MISSING" if check.required else "warning")
        print(f"[{mark:^7}] {check.name:<15} {check.detail}")
        if not check.ok and check.error is not None and check.error.hint:
            print(f"{'':10}{'':16}fix: {check.error.hint}")
    failed = [c for c in checks if c.required and not c.ok and c.error is not None]
    return int(failed[0].error.exit_code) if failed and failed[0].error else 0


def _find_austin(args: Arguments) -> Austin | None:
    if args.stats or (args.all_threads and not args.stacks):
        return None
    try:
        austin = Austin.find(args.austin)
        austin.version()
    except AustinError as exc:
        log.warning(
            "%s; blocks are reported without stacks, and every epoll thread is reported", exc
        )
        return None
    return austin


def _classifier(args: Arguments, austin: Austin | None) -> ThreadClassifier | None:
    if args.all_threads or args.tid or austin is None:
        return None
    return ThreadClassifier(austin)


def _stacks(args: Arguments, austin: Austin | None) -> SamplerPool | None:
    if not args.stacks or austin is None:
        return None
    interval = args.sample_interval_us or interval_for(args.threshold_ns)
    log.info("sampling Python stacks with Austin every %g ms", interval / 1000)
    return SamplerPool(austin, interval)


def _linker(args: Arguments, detector: Detector) -> TraceLinker | None:
    if args.stats or not args.trace_link:
        return None
    linker = TraceLinker(detector, args.threshold_ns)
    linker.start()
    return linker


def _sinks(args: Arguments, settings: otlp.OtlpSettings) -> list[Sink]:
    sinks: list[Sink] = [JsonLinesSink() if args.json else ConsoleSink()]
    if args.stats:
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
    sinks.append(OtelSink(otlp.build_exporters(settings), settings, Losses()))
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


def run(args: Arguments) -> int:
    config = DetectorConfig(
        threshold_ns=args.threshold_ns, tid=args.tid, stats=args.stats, activity=args.cause
    )
    if args.ebpf:
        print(f"// cflags: {' '.join(program_cflags(config))}")
        print(program_source())
        return ExitCode.OK

    targets = [inspect_target(pid) for pid in args.pids]
    if not targets:
        check_command(args.command)
    settings = otlp.settings_from(
        os.environ,
        args.otlp_endpoint,
        args.otlp_protocol,
        args.service,
        follow_app_sampling=not args.export_unsampled,
    )
    preflight.require(preflight.run_checks(args.austin)[:4])

    detector = Detector(config)
    log.info("compiling and loading the BPF program...")
    detector.load()
    austin = _find_austin(args)
    stacks = _stacks(args, austin)
    linker = _linker(args, detector)
    try:
        log.info("attached to %s", ", ".join(detector.attached))
        session = Session(
            detector,
            _sinks(args, settings),
            _classifier(args, austin),
            SessionOptions(
                threshold_ns=args.threshold_ns, stats=args.stats, all_threads=args.all_threads
            ),
            stacks=stacks,
            linker=linker,
        )
        what = (
            "loop iterations" if args.stats else f"blocks >= {args.threshold_ns / NS_PER_MS:g} ms"
        )
        if targets:
            for target in targets:
                if linker is not None:
                    linker.prepare(target.pid)
            return _watch_running(detector, session, targets, what, stacks)
        return _watch_launched(detector, session, args.command, what, stacks)
    finally:
        if linker is not None:
            linker.stop()
        if stacks is not None:
            stacks.stop()
        detector.close()


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
    stacks: SamplerPool | None,
) -> int:
    """Launch mode: the command runs once its PID is watched; its exit code is ours."""
    child = LaunchedCommand(command)
    detector.watch(child.pid)
    _Signals(session, child)
    child.release()
    if stacks is not None:
        stacks.ensure(child.pid)
    log.info("launched PID %d (%s), watching for %s", child.pid, _short(command), what)
    session.run(child)
    child.process.wait()
    code = child.exit_code()
    return code if code is not None else ExitCode.FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["doctor"]:
        return _doctor(argv[1:])
    args = parse_arguments(argv)
    _configure_logging(args)
    try:
        return run(args)
    except BlocksnoopError as exc:
        hint = f" (hint: {exc.hint})" if exc.hint else ""
        sys.stderr.write(f"{PROG}: {exc}{hint}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return ExitCode.OK
