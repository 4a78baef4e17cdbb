"""Command line: ``otel-blocksnoop [OPTIONS] PID`` or ``otel-blocksnoop [OPTIONS] -- CMD ARGS...``.

Only ``main`` prints errors; it maps each ``BlocksnoopError`` to its exit code.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from otel_blocksnoop import __version__, preflight, session
from otel_blocksnoop.config import Config
from otel_blocksnoop.errors import BlocksnoopError, ExitCode
from otel_blocksnoop.events import NS_PER_MS
from otel_blocksnoop.export import otlp
from otel_blocksnoop.kernel.program import program_cflags, program_source

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


def parse_arguments(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """The run's configuration: the command line, over the ``OTEL_*`` environment."""
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
    return Config(
        pids=tuple(dict.fromkeys(ns.pids)),
        command=command,
        threshold_ns=round(ns.threshold * NS_PER_MS),
        json=ns.json,
        stats=ns.stats,
        tid=ns.tid or 0,
        all_threads=ns.all_threads,
        austin=ns.austin,
        otlp=otlp.settings_from(
            os.environ if environ is None else environ,
            ns.otlp_endpoint,
            ns.otlp_protocol,
            ns.service,
            follow_app_sampling=not ns.export_unsampled,
        ),
        cause=not ns.no_cause,
        trace_link=not ns.no_trace_link,
        stacks=not ns.no_stacks,
        sample_interval_us=round(ns.sample_interval * 1000) if ns.sample_interval else None,
        verbose=ns.verbose,
        quiet=ns.quiet,
        ebpf=ns.ebpf,
    )


def _configure_logging(args: Config) -> None:
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
    checks = preflight.run_checks(ns.austin, try_import=True)
    for check in checks:
        mark = "ok" if check.ok else ("MISSING" if check.required else "warning")
        print(f"[{mark:^7}] {check.name:<15} {check.detail}")
        if not check.ok and check.error is not None and check.error.hint:
            print(f"{'':10}{'':16}fix: {check.error.hint}")
    failed = [c for c in checks if c.required and not c.ok and c.error is not None]
    return int(failed[0].error.exit_code) if failed and failed[0].error else 0


def run(config: Config) -> int:
    """``--ebpf`` prints the kernel side; otherwise a session runs to its end."""
    if config.ebpf:
        print(f"// cflags: {' '.join(program_cflags(config.detector))}")
        print(program_source())
        return ExitCode.OK
    return session.run(config)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["doctor"]:
        return _doctor(argv[1:])
    try:
        # The OTEL_* environment is read here: a value it cannot use is a ConfigError.
        config = parse_arguments(argv)
        _configure_logging(config)
        return run(config)
    except BlocksnoopError as exc:
        hint = f" (hint: {exc.hint})" if exc.hint else ""
        sys.stderr.write(f"{PROG}: {exc}{hint}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return ExitCode.OK
