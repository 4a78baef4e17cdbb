"""The BPF program loaded by a short-lived child, held here by its fds alone: no bcc here.

``load(config)`` starts ``python -m otel_blocksnoop.kernel.compile`` on one
end of a socket pair, sends it the ``DetectorConfig``, and receives the fds of
every map and program it loaded (SCM_RIGHTS). Compiling maps libbcc, LLVM
and clang into the process that does it and leaves ~130 MiB there for good
(BENCHMARKS.md, "Memory"); the child takes them away when it exits.

The ``LoadedProgram`` then does here what BCC did:

- ``attach()``: each program named ``tracepoint__<category>__<event>`` on
  its tracepoint (BCC's convention), and the (function, tracepoint) pairs
  given, through perf events (``tracepoints``); ``attach_cpu_clock()``: a
  perf-event program on every CPU's cpu-clock;
- ``map(name)`` / ``map_fd(name)``: map elements through the bpf() syscall
  (``bpf_map``, ``bpf_syscall``);
- ``ring_buffer(name, callback)`` then ``poll(timeout_ms)``: ring buffer
  records, mapped into this process and waited for with epoll (``ringbuf``).

``close()`` (or leaving the ``with`` block) detaches and frees everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from otel_blocksnoop.errors import BpfLoadError
from otel_blocksnoop.kernel import bpf_syscall
from otel_blocksnoop.kernel.bpf_map import BpfMap, MapSpec
from otel_blocksnoop.kernel.compile import MAX_FDS, REPLY_MAX, Reply, Request
from otel_blocksnoop.kernel.program import (
    DetectorConfig,
    first_error,
    program_source,
    read_capture,
)
from otel_blocksnoop.kernel.ringbuf import MappedRing, RecordCallback, RingReader
from otel_blocksnoop.kernel.tracepoints import attach_cpu_clock, attach_tracepoint

log = logging.getLogger(__name__)

BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_PERF_EVENT = 7
EPOLL_PROGRAMS: dict[str, int] = {
    "on_epoll_enter": BPF_PROG_TYPE_TRACEPOINT,
    "on_epoll_exit": BPF_PROG_TYPE_TRACEPOINT,
    "on_close_enter": BPF_PROG_TYPE_TRACEPOINT,
}
"""The detector's functions BCC does not load by itself (attached to each epoll variant)."""
AUTO_TRACEPOINT = "tracepoint__"
"""BCC's prefix of programs that name their own tracepoint: tracepoint__<category>__<event>."""
LOAD_TIMEOUT_S = 120.0
"""Bound on the child's compile and load (~1 s on a quiet 2-vCPU machine)."""


class LoadedProgram:
    """Maps and programs by their fds (owned: ``close()`` releases them), attached on demand."""

    def __init__(
        self, maps: Mapping[str, tuple[int, MapSpec]], programs: Mapping[str, int]
    ) -> None:
        self._maps = dict(maps)
        self._programs = dict(programs)
        self._links: list[tuple[str, str, int]] = []  # (function, tracepoint, perf event fd)
        self._clock_fds: list[int] = []  # cpu-clock perf events, one per CPU
        self._rings: list[tuple[MappedRing, RingReader]] = []
        self._epoll: select.epoll | None = None
        self.load_s = 0.0
        """Seconds from starting the child to holding the fds."""

    # What was loaded.

    @property
    def maps(self) -> dict[str, MapSpec]:
        return {name: spec for name, (_, spec) in self._maps.items()}

    @property
    def programs(self) -> tuple[str, ...]:
        return tuple(self._programs)

    @property
    def attached(self) -> tuple[str, ...]:
        """Tracepoints with a program on them, as ``category:event``."""
        return tuple(tracepoint for _, tracepoint, _ in self._links)

    def map_fd(self, name: str) -> int:
        try:
            return self._maps[name][0]
        except KeyError:
            msg = f"no map {name!r} in the BPF program (it has {', '.join(self._maps)})"
            raise KeyError(msg) from None

    def map(self, name: str) -> BpfMap:
        """Map ``name`` for element reads and writes (valid until ``close()``)."""
        fd = self.map_fd(name)
        return BpfMap(fd, self._maps[name][1])

    def program_fd(self, name: str) -> int:
        try:
            return self._programs[name]
        except KeyError:
            msg = f"no program {name!r} loaded (loaded: {', '.join(self._programs)})"
            raise KeyError(msg) from None

    # Attaching.

    def attach_tracepoint(self, function: str, tracepoint: str) -> None:
        """Run program ``function`` at ``category:event``; BpfLoadError if the kernel refuses."""
        category, _, event = tracepoint.partition(":")
        try:
            fd = attach_tracepoint(self.program_fd(function), category, event)
        except (OSError, KeyError) as exc:
            msg = f"failed to attach {function} to {tracepoint}: {exc}"
            raise BpfLoadError(msg) from exc
        self._links.append((function, tracepoint, fd))

    def attach_cpu_clock(self, function: str, period_ns: int) -> None:
        """Run perf-event program ``function`` every ``period_ns`` of each CPU's busy time.

        OSError (or KeyError: no such program) when it cannot; nothing is attached then.
        """
        self._clock_fds.extend(attach_cpu_clock(self.program_fd(function), period_ns))

    def attach(self, tracepoints: Iterable[tuple[str, str]] = ()) -> tuple[str, ...]:
        """Attach every ``tracepoint__<category>__<event>`` program, then each (function, tp) given.

        Returns every tracepoint attached so far.
        """
        for function in self._programs:
            if function.startswith(AUTO_TRACEPOINT):
                category, _, event = function.removeprefix(AUTO_TRACEPOINT).partition("__")
                self.attach_tracepoint(function, f"{category}:{event}")
        for function, tracepoint in tracepoints:
            self.attach_tracepoint(function, tracepoint)
        return self.attached

    # Ring buffers.

    def ring_buffer(self, name: str, callback: RecordCallback) -> None:
        """Hand each record of ring buffer map ``name`` to ``callback`` during ``poll()``."""
        fd = self.map_fd(name)
        spec = self._maps[name][1]
        if spec.type != bpf_syscall.BPF_MAP_TYPE_RINGBUF:
            msg = f"map {name!r} is not a ring buffer (type {spec.type})"
            raise ValueError(msg)
        ring = MappedRing(fd, spec.max_entries)
        self._rings.append((ring, RingReader(ring.memory, callback)))
        if self._epoll is None:
            self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)

    def poll(self, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` (-1: no limit) for records; hand them over; return how many."""
        if self._epoll is None:
            msg = "no ring buffer to poll: call ring_buffer() first"
            raise RuntimeError(msg)
        ready = self._epoll.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1)
        if not ready:
            return 0
        ready_fds = {fd for fd, _ in ready}
        return sum(reader.consume() for ring, reader in self._rings if ring.fd in ready_fds)

    def consume(self) -> int:
        """Hand over whatever records are there now, without waiting."""
        return sum(reader.consume() for _, reader in self._rings)

    # Lifetime.

    def close(self) -> None:
        """Detach every program, unmap the ring buffers, close every fd (idempotent)."""
        for _, _, fd in self._links:
            os.close(fd)
        self._links.clear()
        for fd in self._clock_fds:
            os.close(fd)
        self._clock_fds.clear()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        for ring, _ in self._rings:
            ring.close()
        self._rings.clear()
        for fd in self._programs.values():
            os.close(fd)
        self._programs.clear()
        for fd, _ in self._maps.values():
            os.close(fd)
        self._maps.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()


def compiler_command(fd: int) -> list[str]:
    """The child's command line: this interpreter, this package."""
    return [sys.executable, "-m", "otel_blocksnoop.kernel.compile", str(fd)]


def _child_env() -> dict[str, str]:
    """Our environment, with this package importable however we found it."""
    package_parent = str(Path(__file__).resolve().parent.parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, path) if p)}


def load(
    config: DetectorConfig,
    programs: Mapping[str, int] = EPOLL_PROGRAMS,
    timeout_s: float = LOAD_TIMEOUT_S,
    source: str | None = None,
) -> LoadedProgram:
    """Compile and load the detector for ``config`` in a child; hold its maps and programs here.

    ``programs``: functions to load beside those BCC loads itself, with their
    BPF program type; ``source``: the C text (default ``program_source()``).
    Raises what ``compile_program`` raises (BpfLoadError, NoPrivilegesError),
    BccMissingError when the child cannot import bcc, and BpfLoadError when
    the child fails in any other way, with the compiler's reason when it
    wrote one (LLVM ends the child with ``exit(1)`` on some errors).
    """
    started = time.monotonic()
    # The compiler's output goes to a memfd held here, so it outlives the child.
    capture = os.memfd_create("otel-blocksnoop-compiler")
    try:
        request = Request(
            config,
            dict(programs),
            logging.getLogger().getEffectiveLevel(),
            source=program_source() if source is None else source,
            capture_fd=capture,
        )
        data, fds, returncode = _ask_child(request, timeout_s)
        if not data:
            raise BpfLoadError(_child_failure(read_capture(capture), returncode))
    finally:
        os.close(capture)
    try:
        program = _hold(Reply.decode(data), fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    program.load_s = time.monotonic() - started
    log.debug(
        "BPF program loaded by the compiler process in %.2f s: maps %s, programs %s",
        program.load_s,
        ", ".join(program.maps),
        ", ".join(program.programs),
    )
    return program


def _ask_child(request: Request, timeout_s: float) -> tuple[bytes, list[int], int | None]:
    """Start the compiler process, send ``request``: its reply, the fds with it, its status."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    passed = (
        [theirs.fileno()] if request.capture_fd is None else [theirs.fileno(), request.capture_fd]
    )
    with ours:
        try:
            # Its stdout goes to our stderr: ours may carry JSON lines.
            child = subprocess.Popen(
                compiler_command(theirs.fileno()),
                pass_fds=passed,
                stdin=subprocess.DEVNULL,
                stdout=2,
                env=_child_env(),
            )
        except OSError as exc:
            msg = f"failed to start the BPF compiler process: {exc}"
            raise BpfLoadError(msg) from exc
        finally:
            theirs.close()
        try:
            ours.settimeout(timeout_s)
            ours.send(request.encode())
            data, fds, _, _ = socket.recv_fds(ours, REPLY_MAX, MAX_FDS)
        except OSError as exc:  # TimeoutError included
            child.kill()
            child.wait()
            msg = f"failed to load BPF program: no answer from the compiler process ({exc})"
            raise BpfLoadError(msg) from exc
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout_s)
    return data, fds, child.returncode


def _child_failure(output: str, returncode: int | None) -> str:
    """One line for a compiler process that ended without a reply: its reason, and how it ended."""
    if returncode is None:
        ended = "did not exit"
    elif returncode < 0:
        ended = f"was killed by {signal.Signals(-returncode).name}"
    else:
        ended = f"exited with status {returncode}"
    reason = first_error(output) if output.strip() else None
    if reason is None:
        return f"failed to load BPF program: the compiler process {ended}"
    return f"failed to compile BPF program: {reason} (the compiler process {ended})"


def _hold(reply: Reply, fds: list[int]) -> LoadedProgram:
    """The reply's fds under their names; each map described by the kernel, not the child."""
    reply.raise_error()
    if len(fds) != len(reply.maps) + len(reply.programs):
        msg = (
            f"failed to load BPF program: {len(fds)} fds for "
            f"{len(reply.maps)} maps and {len(reply.programs)} programs"
        )
        raise BpfLoadError(msg)
    maps = {}
    for name, fd in zip(reply.maps, fds, strict=False):
        info = bpf_syscall.map_info(fd)
        spec = MapSpec(
            name, info.type, info.key_size, info.value_size, info.max_entries, info.flags
        )
        maps[name] = (fd, spec)
    programs = dict(zip(reply.programs, fds[len(reply.maps) :], strict=True))
    return LoadedProgram(maps, programs)
