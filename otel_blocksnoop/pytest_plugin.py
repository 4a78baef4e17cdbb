"""``pytest --blocksnoop=MS``: fail each test during which an event loop blocked at least MS.

Installed with the package (a ``pytest11`` entry point), idle unless the
option is given. Then it starts the sidecar on the test process itself
(``otel-blocksnoop --json --sync -t MS PID``, root needed like any run) and
gives each test phase (setup, call, teardown) a window from its start to its
end. A block belongs to the phase during which it ended. At the end of a
phase the plugin asks the sidecar whether it has reported every block that
ended by then (``--sync``) and waits for the answer (well under a
millisecond when no block is on its way, bounded by ``SYNC_TIMEOUT_S``), so
a test is judged on everything, and a test that did not block waits only
for that answer. A phase with a block fails, naming the call site and its
stack; the tests themselves are not changed.

If the sidecar cannot start (no root, no BCC, ...) the run stops before any
test with the sidecar's own one-line error: a gate that was asked for and
silently skipped would pass every build.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import IO, Any

import pytest

OPTION = "blocksnoop"
START_TIMEOUT_S = 60.0
"""From starting the sidecar to its watching (it compiles BPF: ~1 s, more on a busy machine)."""
SYNC_TIMEOUT_S = 15.0
"""At most this long for the sidecar to report up to a phase's end: its longest own waits are
a block's samples (~2.2 s) and its thread's first classification (~2.5 s)."""
STOP_TIMEOUT_S = 10.0
READY_LINE = "Ctrl-C to stop"
KEPT_STDERR_LINES = 20


def milliseconds(text: str) -> float:
    """``--blocksnoop``'s value, checked as the sidecar's ``-t`` is (imported only when used)."""
    from otel_blocksnoop.cli import threshold_ms  # noqa: PLC0415 - keeps every pytest start light

    return threshold_ms(text)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(OPTION, "otel-blocksnoop: fail tests that block an event loop")
    group.addoption(
        f"--{OPTION}",
        type=milliseconds,
        metavar="MS",
        default=None,
        help="watch this test process with otel-blocksnoop (needs root) and fail each test "
        "during which an event loop was blocked at least MS milliseconds",
    )


def pytest_configure(config: pytest.Config) -> None:
    threshold_ms: float | None = config.getoption(OPTION)
    if threshold_ms is None:
        return
    if getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput"):
        return  # pytest-xdist's controller runs no test: each worker watches itself
    watcher = Watcher(threshold_ms, os.getpid())
    watcher.start()
    config.add_cleanup(watcher.stop)
    config.pluginmanager.register(BlockJudge(watcher, threshold_ms), f"{OPTION}-judge")


@dataclass(frozen=True, slots=True)
class SeenBlock:
    """A block as the sidecar's JSON line gave it; what a failure message needs."""

    end_ns: int
    duration_ms: float
    iteration: str
    record: dict[str, Any]

    @property
    def in_a_loop(self) -> bool:
        """Whether its stack shows an event loop running (or no stack was sampled).

        A thread the sidecar could not class as a loop's (a test process's
        main thread runs many loops, and pytest's own code between them) is
        reported whatever it ran; out of epoll with no loop running (a sync
        test between two async ones) no loop was held up.
        """
        from otel_blocksnoop.events import Frame, ThreadKind  # noqa: PLC0415 - light start
        from otel_blocksnoop.stacks.threads import classify  # noqa: PLC0415 - same

        stack = self.record.get("stack") or []
        if not stack:
            return True
        frames = [Frame(str(f["function"]), str(f["file"]), int(f["line"])) for f in stack]
        return classify(frames) == ThreadKind.LOOP

    @classmethod
    def of(cls, record: dict[str, Any]) -> SeenBlock:
        iteration = record.get("iteration") or {}
        return cls(
            end_ns=int(record["end_monotonic_ns"]),
            duration_ms=float(iteration.get("duration_ms", record["duration_ms"])),
            iteration=str(iteration.get("id", record["end_monotonic_ns"])),
            record=record,
        )


class Watcher:
    """The sidecar on this process: started, read in the background, asked, stopped."""

    def __init__(self, threshold_ms: float, pid: int) -> None:
        self._argv = [
            sys.executable,
            "-m",
            "otel_blocksnoop",
            "--json",
            "--sync",
            "-t",
            f"{threshold_ms:g}",
            str(pid),
        ]
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Condition()
        self._blocks: list[SeenBlock] = []
        self._synced_ns = 0
        self._ready = False
        self._ended = False
        self._stderr: deque[str] = deque(maxlen=KEPT_STDERR_LINES)
        self._readers: list[threading.Thread] = []

    def start(self) -> None:
        """Start the sidecar and wait until it watches; a ``UsageError`` with its reason if not."""
        try:
            self._process = subprocess.Popen(
                self._argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        except OSError as error:
            msg = f"--{OPTION}: failed to start otel-blocksnoop: {error}"
            raise pytest.UsageError(msg) from None
        # Plain blocking reads in threads: a thread of ours polling with epoll would
        # look like an event loop to the sidecar.
        readers = (
            (self._read_records, self._process.stdout),
            (self._read_stderr, self._process.stderr),
        )
        for target, stream in readers:
            reader = threading.Thread(
                target=target, args=(stream,), name=f"{OPTION}-reader", daemon=True
            )
            reader.start()
            self._readers.append(reader)
        with self._lock:
            self._lock.wait_for(lambda: self._ready or self._ended, timeout=START_TIMEOUT_S)
            ready = self._ready
        if not ready:
            self.stop()
            # Its stdout may close before its reason is read from stderr: read it all.
            for reader in self._readers:
                reader.join(STOP_TIMEOUT_S)
            msg = f"--{OPTION}: cannot watch the test process: {self.last_error()}"
            raise pytest.UsageError(msg)

    def last_error(self) -> str:
        """The sidecar's last line on stderr: its one-line reason when it stopped."""
        with self._lock:
            lines = [line for line in self._stderr if line.strip()]
        if lines:
            return lines[-1]
        if self._process is not None and self._process.poll() is not None:
            return f"otel-blocksnoop exited with code {self._process.returncode}"
        return f"otel-blocksnoop did not start watching within {START_TIMEOUT_S:g} s"

    def _read_records(self, stream: IO[str] | None) -> None:
        for line in stream or ():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if record.get("type") == "block":
                    self._blocks.append(SeenBlock.of(record))
                elif record.get("type") == "synced":
                    self._synced_ns = max(self._synced_ns, int(record["monotonic_ns"]))
                else:
                    continue
                self._lock.notify_all()
        with self._lock:
            self._ended = True
            self._lock.notify_all()

    def _read_stderr(self, stream: IO[str] | None) -> None:
        for line in stream or ():
            with self._lock:
                self._stderr.append(line.rstrip("\n"))
                if READY_LINE in line:
                    self._ready = True
                    self._lock.notify_all()
        with self._lock:
            self._ended = True
            self._lock.notify_all()

    def blocks_until(self, until_ns: int) -> list[SeenBlock] | None:
        """Every block that ended by ``until_ns``, once the sidecar says it has reported them.

        None: it did not say so within ``SYNC_TIMEOUT_S`` (or it stopped).
        """
        process = self._process
        if process is None or process.stdin is None:
            return None
        try:
            process.stdin.write(f"{until_ns}\n")
            process.stdin.flush()
        except OSError:
            return None
        with self._lock:
            if not self._lock.wait_for(
                lambda: self._synced_ns >= until_ns or self._ended, timeout=SYNC_TIMEOUT_S
            ):
                return None
            if self._synced_ns < until_ns:
                return None
            return list(self._blocks)

    def stop(self) -> None:
        """Close its questions (it stops by itself then), and wait a bounded time."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class BlockJudge:
    """Gives each test phase its window, and fails the phase a block ended in."""

    def __init__(self, watcher: Watcher, threshold_ms: float) -> None:
        self._watcher = watcher
        self._threshold_ms = threshold_ms
        self._phase_start_ns = 0
        self._judged: set[str] = set()  # iterations already blamed (a block counts once)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        _ = item
        self._phase_start_ns = time.monotonic_ns()
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._judge(item, "setup"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._judge(item, "call"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._judge(item, "teardown"))

    def _judge(self, item: pytest.Item, phase: str) -> Generator[None, None, None]:
        start_ns = self._phase_start_ns
        failure: Exception | None = None
        try:
            yield
        except Exception as error:  # noqa: BLE001 - the phase failed itself: say what blocked too
            failure = error
        end_ns = time.monotonic_ns()
        self._phase_start_ns = end_ns
        blocks = self._watcher.blocks_until(end_ns)
        if blocks is None:
            message = (
                f"{OPTION}: could not judge this test's {phase}: otel-blocksnoop did not report "
                f"up to its end within {SYNC_TIMEOUT_S:g} s ({self._watcher.last_error()})"
            )
        else:
            found = self._ended_in(blocks, start_ns, end_ns)
            message = self._message(found, phase, str(item.path)) if found else ""
        if failure is not None:
            if message:
                item.add_report_section(phase, OPTION, message)
            raise failure
        if message:
            pytest.fail(message, pytrace=False)

    def _ended_in(self, blocks: list[SeenBlock], start_ns: int, end_ns: int) -> list[SeenBlock]:
        """The blocks at least the threshold that ended in the window, one per iteration."""
        longest: dict[str, SeenBlock] = {}
        for block in blocks:
            if not start_ns < block.end_ns <= end_ns or block.iteration in self._judged:
                continue
            if block.duration_ms < self._threshold_ms or not block.in_a_loop:
                continue
            kept = longest.get(block.iteration)
            if kept is None or block.record["duration_ms"] > kept.record["duration_ms"]:
                longest[block.iteration] = block
        self._judged.update(longest)
        return sorted(longest.values(), key=lambda block: -block.duration_ms)

    def _message(self, blocks: list[SeenBlock], phase: str, test_file: str) -> str:
        plural = "s" if len(blocks) != 1 else ""
        head = (
            f"event loop blocked during this test's {phase} ({len(blocks)} block{plural} "
            f"of at least {self._threshold_ms:g} ms, --{OPTION}):"
        )
        lines = [head]
        for block in blocks:
            lines.extend(describe(block, test_file))
        return "\n".join(lines)


def describe(block: SeenBlock, test_file: str = "") -> list[str]:
    """A block's lines in a failure: how long, where (function, file:line), why, its stack.

    The stack starts at the outermost frame in ``test_file`` (pytest's and the
    runner's frames above it say nothing), or is whole if none is there.
    """
    record = block.record
    site = record.get("call_site")
    where = (
        f"at {site['function']} ({site['file']}:{site['line']})"
        if site
        else "(no stack was sampled)"
    )
    cause = f"{record['syscall']}()" if record.get("syscall") else record.get("cause", "unknown")
    thread = f"thread {record.get('tid')} ({record.get('thread_name')})"
    lines = [f"  {block.duration_ms:.1f} ms {where}, {thread}, cause {cause}"]
    stack = record.get("stack") or []
    files = [frame.get("file") for frame in stack]
    if test_file in files:
        stack = stack[files.index(test_file) :]
    if stack:
        lines.append("    Traceback (most recent call last):")
        for frame in stack:
            lines.append(
                f'      File "{frame["file"]}", line {frame["line"]}, in {frame["function"]}'
            )
            if frame.get("source"):
                lines.append(f"        {frame['source']}")
    return lines
