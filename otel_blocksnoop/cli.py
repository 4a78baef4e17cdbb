"""Command line: ``otel-blocksnoop [OPTIONS] PID`` or ``otel-blocksnoop [OPTIONS] -- CMD ARGS...``.

Only ``main`` prints errors; it maps each ``BlocksnoopError`` to its exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from otel_blocksnoop import __version__, preflight, session
from otel_blocksnoop.bounded import MAX_WATCHED_PROCESSES
from otel_blocksnoop.config import Config
from otel_blocksnoop.errors import BlocksnoopError, ExitCode, RecordingError
from otel_blocksnoop.events import NS_PER_MS
from otel_blocksnoop.export import otlp
from otel_blocksnoop.kernel.program import program_cflags, program_source
from otel_blocksnoop.node import DEFAULT_MAX_PROCESSES
from otel_blocksnoop.process.discovery import PodSelector, Selector
from otel_blocksnoop.stacks.memory import STACK_READERS

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
  otel-blocksnoop --fail-on 50 -- pytest tests/
                                        # ... and exit 13 if any loop blocked 50 ms or more
  otel-blocksnoop --all                 # every Python process on the node, as they come and go
  otel-blocksnoop --match 'uvicorn|gunicorn'
                                        # ... those whose command line matches (as pgrep -f)
  otel-blocksnoop --container 3f2a9c1b7d4e
                                        # ... those in this container (id or its prefix)
  otel-blocksnoop --pod shop/checkout-7d9f8b6c5-x2x4q
                                        # ... those in this pod (NAMESPACE/NAME, NAME or uid)
  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 otel-blocksnoop 1234
                                        # ... and send spans and metrics to a collector
  otel-blocksnoop --report r.html -- python3 app.py
                                        # ... and write an HTML report of its blocks at the end
  otel-blocksnoop report run.jsonl -o r.html
                                        # the HTML report of a recording made with --json
  otel-blocksnoop doctor                # check privileges, BCC, tracefs, headers, Austin
  otel-blocksnoop doctor 1234           # ... and that PID 1234 can be read
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message} (see --help)\n")
        raise SystemExit(ExitCode.USAGE)


MIN_THRESHOLD_MS = 0.001
"""1 us: below it the threshold rounds to 0 ns and every loop iteration would cross it."""
MAX_THRESHOLD_MS = 3_600_000.0
"""1 hour: the kernel's histogram of iterations ends at 2^42 ns (73 min), and the nanosecond
cflags overflow 64 bits near 5,000 hours (``-t 1e14`` was a compile error)."""
MIN_SAMPLE_INTERVAL_MS = 0.001
"""1 us: Austin's interval is a whole number of microseconds."""
MAX_SAMPLE_INTERVAL_MS = 1000.0
"""1 s: sparser samples would explain no block, and Austin would be slow to stop."""
MAX_PID = 4_194_304
"""PID_MAX_LIMIT: no process or thread id is larger on a 64-bit kernel."""


def _milliseconds(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: milliseconds from ``low`` to ``high``, both included."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            msg = f"not a number: {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if not math.isfinite(value) or not low <= value <= high:
            msg = f"must be from {low:g} to {high:g} milliseconds, not {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


threshold_ms = _milliseconds(MIN_THRESHOLD_MS, MAX_THRESHOLD_MS)
sample_interval_ms = _milliseconds(MIN_SAMPLE_INTERVAL_MS, MAX_SAMPLE_INTERVAL_MS)


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


def process_cap(text: str) -> int:
    """``--max-processes``: at least 1, at most what the per-process tables hold."""
    value = positive_int(text)
    if value > MAX_WATCHED_PROCESSES:
        msg = f"at most {MAX_WATCHED_PROCESSES}, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def process_id(text: str) -> int:
    """A PID or TID: a whole number from 1 to the kernel's limit."""
    try:
        value = int(text)
    except ValueError:
        msg = f"not a whole number: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not 1 <= value <= MAX_PID:
        msg = f"not a process id: {text!r} (ids go from 1 to {MAX_PID})"
        raise argparse.ArgumentTypeError(msg)
    return value


def command_pattern(text: str) -> re.Pattern[str]:
    """A regular expression to search command lines with (``--match``)."""
    try:
        return re.compile(text)
    except re.error as exc:
        msg = f"not a regular expression: {text!r} ({exc})"
        raise argparse.ArgumentTypeError(msg) from None


CONTAINER_ID = re.compile(r"[0-9a-f]{1,64}")
POD_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
"""A DNS subdomain name (RFC 1123), as Kubernetes requires of a pod's name."""
NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""A DNS label (RFC 1123), as Kubernetes requires of a namespace's name."""


def pod_selector(text: str) -> PodSelector:
    """A pod as ``kubectl`` names it: ``NAMESPACE/NAME``, ``NAME``, or its uid."""
    value = text.strip().removeprefix("pod/")
    if POD_UID.fullmatch(value.lower()):
        return PodSelector(uid=value.lower())
    namespace, _, name = value.rpartition("/")
    if POD_NAME.fullmatch(name) and (not namespace or NAMESPACE.fullmatch(namespace)):
        return PodSelector(name=name, namespace=namespace or None)
    msg = (
        f"not a pod: {text!r} (NAMESPACE/NAME or NAME as `kubectl get pods` shows it, "
        "or its metadata.uid)"
    )
    raise argparse.ArgumentTypeError(msg)


def container_id(text: str) -> str:
    """A container id, or its prefix, as ``docker ps`` and ``crictl ps`` show it."""
    value = text.strip().lower()
    for prefix in ("docker://", "containerd://", "cri-o://"):  # as `kubectl get pod -o yaml`
        value = value.removeprefix(prefix)
    if not CONTAINER_ID.fullmatch(value):
        msg = f"not a container id: {text!r} (hex digits, e.g. the 12 that `docker ps` shows)"
        raise argparse.ArgumentTypeError(msg)
    return value


def report_path(text: str) -> Path:
    """Where to write an HTML report: a file in a directory that exists."""
    path = Path(text)
    if not text or path.is_dir():
        msg = f"not a file to write: {text!r}"
        raise argparse.ArgumentTypeError(msg)
    if not path.parent.is_dir():
        msg = f"no such directory: {str(path.parent)!r}"
        raise argparse.ArgumentTypeError(msg)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [OPTIONS] PID [PID...] | {PROG} [OPTIONS] -- CMD [ARGS...] "
        f"| {PROG} [OPTIONS] --all | --match REGEX | --container ID | {PROG} doctor [PID...] "
        f"| {PROG} report RECORDING [-o FILE]",
        description="Report every time an asyncio event loop in a Python process is blocked.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "pids", nargs="*", type=process_id, metavar="PID", help="process(es) to watch"
    )
    parser.add_argument(
        "-t",
        "--threshold",
        type=threshold_ms,
        metavar="MS",
        help=f"report loop iterations at least this long (default {DEFAULT_THRESHOLD_MS:g}, "
        f"or the --fail-on value; from {MIN_THRESHOLD_MS:g} to {MAX_THRESHOLD_MS:g})",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    parser.add_argument(
        "--stats",
        action="store_true",
        help="show the distribution of all loop iterations each second instead of blocks",
    )
    parser.add_argument(
        "--report",
        type=report_path,
        metavar="FILE",
        help="when the run stops, write an HTML report of its blocks to FILE "
        f"(as `{PROG} report` makes of a --json recording)",
    )
    parser.add_argument("--tid", type=process_id, help="watch only this thread of PID")
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
        type=sample_interval_ms,
        metavar="MS",
        help="Austin's sampling interval, rounded to the microsecond "
        "(default: threshold/10, between 1 and 10 ms)",
    )
    parser.add_argument(
        "--austin", metavar="PATH", help="Austin binary (default: $AUSTINPATH, the venv, $PATH)"
    )
    parser.add_argument(
        "--stacks-from",
        choices=STACK_READERS,
        default="auto",
        help="who reads the stacks: Austin, or the sidecar from the app's memory (CPython "
        "3.11+: with the offsets 3.13+ publish, or the layouts generated for 3.11 and 3.12; "
        "each stack timed by its read; needs no Austin in the app's mount namespace; "
        "Austin still reads 3.9 and 3.10); "
        "auto: memory, and Austin where the sidecar's reader cannot read an app that Austin "
        "can (CPython up to 3.14 with a GIL, in a mount namespace the sidecar may enter: "
        "CAP_SYS_ADMIN and CAP_SYS_CHROOT)",
    )
    gate = parser.add_argument_group(
        "Failing a build",
        f"At the end, print each block that fails the run with its stack on stderr and exit "
        f"{int(ExitCode.LOOP_BLOCKED)} (a block) or {int(ExitCode.EVENTS_LOST)} (a loss); "
        "a launched command that fails keeps its own exit code.",
    )
    gate.add_argument(
        "--fail-on",
        type=threshold_ms,
        metavar="MS",
        help="fail when any loop blocked at least this long (-t defaults to it)",
    )
    gate.add_argument(
        "--fail-on-loss",
        action="store_true",
        help="fail when events were lost that can hide a block or its call site "
        "(kernel.events, kernel.threads, kernel.triggers, stacks.unknown)",
    )
    parser.add_argument("--sync", action="store_true", help=argparse.SUPPRESS)
    node = parser.add_argument_group(
        "Node mode",
        "Instead of PIDs: find the Python processes to watch, as they start, and let go of "
        "each as it exits (one sidecar per node or pod). --match, --container and --pod "
        "narrow --all and each other.",
    )
    node.add_argument(
        "--all",
        action="store_true",
        dest="all_processes",
        help="watch every Python process the sidecar can see",
    )
    node.add_argument(
        "--match",
        type=command_pattern,
        metavar="REGEX",
        help="only processes whose command line matches (searched, as `pgrep -f` does)",
    )
    node.add_argument(
        "--container",
        type=container_id,
        metavar="ID",
        help="only processes in this container (its id or a prefix, read from their cgroup)",
    )
    node.add_argument(
        "--pod",
        type=pod_selector,
        metavar="POD",
        help="only processes in this Kubernetes pod: NAMESPACE/NAME or NAME (from their "
        "environment: the downward API's POD_NAME/POD_NAMESPACE, else HOSTNAME and the "
        "service account's namespace), or the pod's uid (from their cgroup)",
    )
    node.add_argument(
        "--max-processes",
        type=process_cap,
        default=DEFAULT_MAX_PROCESSES,
        metavar="N",
        help=f"watch at most N processes at once, up to {MAX_WATCHED_PROCESSES}; more are "
        f"counted and warned of (default {DEFAULT_MAX_PROCESSES})",
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
    node = ns.all_processes or any(x is not None for x in (ns.match, ns.container, ns.pod))
    if node and (ns.pids or command):
        parser.error(
            "give PIDs, a command after `--`, or --all/--match/--container/--pod: one of them"
        )
    if node and ns.tid is not None:
        parser.error("--tid needs a PID: it cannot be used with --all/--match/--container/--pod")
    if not ns.ebpf and not node:
        if ns.pids and command:
            parser.error("give either a PID or a command after `--`, not both")
        if not ns.pids and not command:
            parser.error(
                "give a PID to watch, a command after `--` to launch, or --all to watch "
                "every Python process"
            )
    if ns.report is not None and ns.stats:
        parser.error("--report draws blocks, and --stats reports none: give one of them")
    if ns.tid is not None and len(ns.pids) != 1:
        parser.error("--tid needs exactly one PID: the thread's process")
    threshold = _threshold(parser, ns)
    if ns.sync and (not ns.json or ns.stats):
        parser.error("--sync answers in JSON lines, about blocks: it needs --json, not --stats")
    return Config(
        pids=tuple(dict.fromkeys(ns.pids)),
        command=command,
        threshold_ns=round(threshold * NS_PER_MS),
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
        sample_interval_us=(
            max(1, round(ns.sample_interval * 1000)) if ns.sample_interval is not None else None
        ),
        verbose=ns.verbose,
        quiet=ns.quiet,
        ebpf=ns.ebpf,
        stacks_from=ns.stacks_from,
        select=Selector(pattern=ns.match, container=ns.container, pod=ns.pod) if node else None,
        max_processes=ns.max_processes,
        report=ns.report,
        fail_on_ns=None if ns.fail_on is None else round(ns.fail_on * NS_PER_MS),
        fail_on_loss=ns.fail_on_loss,
        sync=ns.sync,
    )


def _threshold(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> float:
    """``-t``, else ``--fail-on``, else the default; a gate below ``-t`` would see nothing."""
    if ns.fail_on is None:
        return float(ns.threshold if ns.threshold is not None else DEFAULT_THRESHOLD_MS)
    if ns.stats:
        parser.error("--fail-on needs blocks, and --stats reports none: use one of them")
    if ns.threshold is None:
        return float(ns.fail_on)
    if ns.fail_on < ns.threshold:
        parser.error(
            f"--fail-on {ns.fail_on:g} is below -t {ns.threshold:g}: blocks between them would "
            "not be seen; lower -t, or leave it out (it defaults to --fail-on)"
        )
    return float(ns.threshold)


OUR_LOGGERS = ("otel_blocksnoop", PROG)
LIBRARY_LINE_MAX = 300
"""Characters of another library's message shown: its first line, this long at most."""
REPEAT_WINDOW_S = 60.0
"""Another library's message that says the same again within this long is not shown again."""


def one_line(text: str, limit: int = LIBRARY_LINE_MAX) -> str:
    """The first non-blank line of ``text``, unprintable characters escaped, at most ``limit``."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in first)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class _OneLineFormatter(logging.Formatter):
    """Every record is one line on stderr; a traceback only with ``-v``.

    Other libraries' messages (the OTLP exporters, urllib3, gRPC, Python
    warnings) are cut to their first line and cleaned, and a failure the OTLP
    exporter cannot explain (an HTTP/2 answer read as a ``BadStatusLine``) is
    said plainly.
    """

    def __init__(self, verbose: bool) -> None:
        super().__init__(f"{PROG}: %(message)s")
        self._verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if not record.name.startswith(OUR_LOGGERS):
            text = otlp.explain_export_failure(text) or one_line(text)
        if record.exc_info and record.exc_info[1] is not None:
            if self._verbose:
                text += "\n" + self.formatException(record.exc_info)
            else:
                error = record.exc_info[1]
                text += " " if text.endswith(":") else ": "
                text += one_line(f"{type(error).__name__}: {error}")
        return f"{PROG}: {text}"


class _LibraryRepeats(logging.Filter):
    """Drops another library's message that repeats one shown in the last REPEAT_WINDOW_S.

    The OTLP exporters say "retrying in 0.91s", then "in 1.77s", on every
    retry of every round while a collector is away; numbers do not make a
    message new.
    """

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self._window_s = window_s
        self._shown: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(OUR_LOGGERS):
            return True
        key = (record.name, re.sub(r"\d+(\.\d+)?", "#", one_line(record.getMessage())))
        now = record.created
        last = self._shown.get(key)
        if last is not None and now - last < self._window_s:
            return False
        if len(self._shown) >= 256:
            self._shown.clear()
        self._shown[key] = now
        return True


def _configure_logging(args: Config) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(verbose=args.verbose))
    if not args.verbose:
        handler.addFilter(_LibraryRepeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python warnings (urllib3's and others') become records: one line each, like the rest.
    logging.captureWarnings(capture=True)


def error_line(error: BlocksnoopError, container: bool) -> str:
    """The one line a failure is reported with (by a run, and by ``doctor``'s verdict)."""
    fix = error.hint_for(container)
    hint = f" (hint: {fix})" if fix else ""
    return f"{PROG}: {error}{hint}"


def _doctor(argv: Sequence[str]) -> int:
    parser = _Parser(
        prog=f"{PROG} doctor",
        description="Check what a run needs, with the checks a run makes: "
        "the same verdict, message and exit code.",
    )
    parser.add_argument(
        "pids", nargs="*", type=positive_int, metavar="PID", help="also check access to these"
    )
    parser.add_argument("--austin", metavar="PATH", help="Austin binary to check")
    ns = parser.parse_args(list(argv))
    checks = preflight.run_checks(ns.pids, ns.austin, doctor=True)
    container = preflight.in_container()
    for check in checks:
        if check.skipped:
            mark = "skipped"
        else:
            mark = "ok" if check.ok else ("MISSING" if check.required else "warning")
        print(f"[{mark:^7}] {check.name:<15} {check.detail}")
        hint = check.error.hint_for(container) if check.error is not None else ""
        if not check.ok and hint:
            print(f"{'':10}{'':16}fix: {hint}")
    error = preflight.first_failure(checks)
    if error is None:
        print(f"verdict: ready to {_ready_for(ns.pids, checks)}")
        return ExitCode.OK
    print(f"verdict: a run stops here, exit {int(error.exit_code)}: {error_line(error, container)}")
    return error.exit_code


def _ready_for(pids: Sequence[int], checks: list[preflight.Check]) -> str:
    """What a run may do, when no required check failed."""
    if pids:
        return f"watch PID{'s' if len(pids) > 1 else ''} {', '.join(map(str, pids))}"
    if all(check.ok for check in checks if check.name == "ptrace"):
        return "launch a command, or watch any process"
    return "launch a command (`doctor PID` checks whether a process can be watched)"


def _report(argv: Sequence[str]) -> int:
    """``report RECORDING [-o FILE]``: the HTML page of a recording made with ``--json``."""
    parser = _Parser(
        prog=f"{PROG} report",
        description="Write one self-contained HTML page (opens offline) of the blocks in a "
        "recording: a timeline per loop thread, a flame graph of blocked time, the top call "
        "sites and the durations.",
        epilog="examples:\n"
        f"  {PROG} --json -- python3 app.py > run.jsonl\n"
        f"  {PROG} report run.jsonl -o run.html     # then open run.html in a browser",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "recording", metavar="RECORDING", help="the JSON lines a run wrote with --json (- : stdin)"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=report_path,
        metavar="FILE",
        help="the page to write (default: RECORDING with .html instead of its suffix)",
    )
    ns = parser.parse_args(list(argv))
    # Jinja2 loads only for a report.
    from otel_blocksnoop.export.report import read_recording, write_report  # noqa: PLC0415

    name = "stdin" if ns.recording == "-" else ns.recording
    try:
        if ns.recording == "-":
            recording = read_recording(sys.stdin, name)
        else:
            with Path(ns.recording).open(encoding="utf-8") as lines:
                recording = read_recording(lines, name)
    except OSError as error:
        msg = f"failed to read recording {name}: {error.strerror or error}"
        raise RecordingError(msg) from None
    except UnicodeDecodeError:
        msg = f"failed to read recording {name}: not text"
        raise RecordingError(msg) from None
    output = ns.output
    if output is None:
        if ns.recording == "-":
            parser.error("give -o FILE when the recording comes from stdin")
        output = Path(ns.recording).with_suffix(".html")
    write_report(recording, name, output)
    threads = len({(block.pid, block.tid) for block in recording.blocks})
    count = len(recording.blocks)
    print(
        f"wrote {output}: {count} block{'' if count == 1 else 's'} "
        f"on {threads} loop thread{'' if threads == 1 else 's'}"
    )
    return ExitCode.OK


def run(config: Config) -> int:
    """``--ebpf`` prints the kernel side; otherwise a session runs to its end."""
    if config.ebpf:
        print(f"// cflags: {' '.join(program_cflags(session.detector_config(config)))}")
        print(program_source())
        return ExitCode.OK
    return session.run(config)


def main(argv: Sequence[str] | None = None) -> int:
    """One run of the command line; its exit code (``entry`` exits with it)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["doctor"]:
        return _doctor(argv[1:])
    try:
        if argv[:1] == ["report"]:
            return _report(argv[1:])
        # A bad OTEL_* value is found while the configuration is read.
        config = parse_arguments(argv)
        _configure_logging(config)
        code = run(config)
    except BlocksnoopError as exc:
        sys.stderr.write(error_line(exc, preflight.in_container()) + "\n")
        code = exc.exit_code
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:
        code = ExitCode.OK
    return code


def entry() -> NoReturn:
    """The ``otel-blocksnoop`` command and ``python -m otel_blocksnoop``: ``main``, then leave."""
    _leave(main())


def _leave(code: int) -> NoReturn:
    """Exit with ``code`` once everything is written, skipping the interpreter's teardown.

    A run leaves gRPC, protobuf and the OpenTelemetry SDK loaded (and export
    threads given up on at the stop's deadline): tearing the interpreter down
    took 0.2-0.4 s more, outside the stop's bound. Nothing is left to do by then:
    the sinks have drained and the streams are flushed here.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
