"""Which epoll-calling threads are event loops.

An asyncio-compatible loop always runs Python, so a thread with no Python
thread state (absent from Austin's dump) is a native library's poller: gRPC
core, libzmq's I/O threads, a C extension's worker. Such threads and Python
threads parked in a known non-asyncio poller are not reported. Every other
thread is: a Python thread inside asyncio or uvloop is a loop for certain,
and one Austin cannot read (or any, if Austin is unavailable) is reported
rather than risk missing a real block.

Austin names threads as the app sees them (its own PID namespace), the
sidecar by its own ids: the two are matched through ``NamespaceIds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from otel_blocksnoop.bounded import BoundedDict
from otel_blocksnoop.events import Frame, ThreadKind
from otel_blocksnoop.process.pidns import NamespaceIds
from otel_blocksnoop.stacks.austin import Austin, AustinError

log = logging.getLogger(__name__)

RECHECK_S = 10.0
"""A thread not seen as a loop is looked at again at most this often."""

LOOP_PATH_PARTS = ("/asyncio/", "/uvloop/")
"""Source paths of event-loop machinery: a frame from here means a loop thread."""

MAX_REMEMBERED = 4096
"""Threads whose kind is cached; the oldest are forgotten (and asked again) past this."""

KNOWN_POLLERS = (
    ("/grpc/_server.py", "_serve"),
    ("/grpc/_channel.py", "channel_spin"),
    ("/grpc/_channel.py", "_run_channel_spin_thread"),
    # The OpenTelemetry SDK's export threads: with a gRPC exporter, gRPC polls
    # (epoll) in the calling thread, between waits of seconds.
    ("/opentelemetry/sdk/_shared_internal/__init__.py", "worker"),
    ("/opentelemetry/sdk/trace/export/__init__.py", "worker"),
    ("/opentelemetry/sdk/_logs/_internal/export/__init__.py", "worker"),
    ("/opentelemetry/sdk/metrics/_internal/export/__init__.py", "_ticker"),
)
"""Python functions that drive a non-asyncio epoll loop: (path suffix, function)."""

RUNNERS = "/asyncio/runners.py"
TEARDOWN_FUNCTIONS = frozenset({"close", "__exit__"})
"""``asyncio.Runner``'s ways out: past them the loop runs no iteration of its own."""
ITERATING_FUNCTIONS = frozenset({"run_until_complete", "run_forever", "_run_once"})
"""Loop machinery that runs iterations (``Runner.close`` runs some to cancel tasks)."""


def _last_name(frame: Frame) -> str:
    return frame.function.rsplit(".", 1)[-1]


def closing_loop(stack: Sequence[Frame]) -> bool:
    """Whether ``stack`` is a loop being closed after its last iteration, not one running.

    ``asyncio.run`` ends in ``Runner.close`` (3.11+) or, before 3.11, in its
    own ``finally`` calling ``loop.close()``; uvloop's ``run`` goes through
    the same runner. Its frames are loop machinery, but no iteration runs: the
    thread is out of epoll for good, and a busy machine can stretch that last
    stretch past the threshold. Cancelling the remaining tasks and shutting
    down the default executor inside ``close`` run iterations: those are not
    closing.
    """
    for index in range(len(stack) - 1, -1, -1):
        frame = stack[index]
        if not frame.file.endswith(RUNNERS):
            continue
        deeper = stack[index + 1 :]
        if any(_last_name(f) in ITERATING_FUNCTIONS for f in deeper):
            return False
        name = _last_name(frame)
        return name in TEARDOWN_FUNCTIONS or (
            name == "run" and bool(deeper) and _last_name(deeper[0]) == "close"
        )
    return False


def classify(stack: Sequence[Frame] | None) -> ThreadKind:
    """Kind of a thread from its Python stack (None: not a Python thread)."""
    if stack is None:
        return ThreadKind.NATIVE
    if any(part in frame.file for frame in stack for part in LOOP_PATH_PARTS):
        return ThreadKind.UNKNOWN if closing_loop(stack) else ThreadKind.LOOP
    for frame in stack:
        for suffix, function in KNOWN_POLLERS:
            if frame.file.endswith(suffix) and frame.function.endswith(function):
                return ThreadKind.POLLER
    return ThreadKind.UNKNOWN


def reported(kind: ThreadKind) -> bool:
    return kind in (ThreadKind.LOOP, ThreadKind.UNKNOWN)


class ThreadClassifier:
    """Caches each thread's kind; asks Austin for a fresh dump when one is needed."""

    def __init__(self, austin: Austin | None, ids: NamespaceIds | None = None) -> None:
        self._austin = austin
        self._ids = ids if ids is not None else NamespaceIds()
        self._kinds: BoundedDict[tuple[int, int], tuple[ThreadKind, float]] = BoundedDict(
            MAX_REMEMBERED
        )
        self._warned: set[int] = set()

    def kind(self, pid: int, tid: int) -> ThreadKind:
        cached = self._kinds.get((pid, tid))
        now = time.monotonic()
        if cached and (cached[0] == ThreadKind.LOOP or now - cached[1] < RECHECK_S):
            return cached[0]
        if self._austin is None:
            return ThreadKind.UNKNOWN
        try:
            stacks = self._austin.where(pid)
        except AustinError as exc:
            if pid not in self._warned:
                self._warned.add(pid)
                log.warning("%s; reporting every thread of %d", exc, pid)
            return ThreadKind.UNKNOWN
        # Austin's tids are the app's; the other threads are remembered by ours.
        ours = self._ids.sidecar_tids(pid) if self._ids.nested(pid) else None
        for seen_tid, stack in stacks.items():
            mine = ours.get(seen_tid) if ours is not None else seen_tid
            if mine is not None:
                self._remember(pid, mine, classify(stack), now)
        app_tid = self._ids.app_tid(pid, tid)
        kind = classify(stacks[app_tid]) if app_tid in stacks else ThreadKind.NATIVE
        if app_tid not in stacks and not (Path("/proc") / str(pid) / "task" / str(tid)).exists():
            kind = ThreadKind.UNKNOWN  # gone before it could be looked at
        self._remember(pid, tid, kind, now)
        return kind

    def _remember(self, pid: int, tid: int, kind: ThreadKind, now: float) -> None:
        self._kinds[(pid, tid)] = (kind, now)  # an update is the newest: dropped last
