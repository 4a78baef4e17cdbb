"""The short-lived process that compiles and loads the BPF program with BCC, then hands it over.

``python -m otel_blocksnoop.kernel.compile FD``: FD is this side of a
``SOCK_SEQPACKET`` socket pair. One request arrives (``Request``: the C
source, the ``DetectorConfig``, the functions to load beside those BCC
loads itself, and the parent's fd that takes the compiler's output), one
reply leaves (``Reply``: the names of the maps and programs, in the order
of the fds sent with it as SCM_RIGHTS), and the process exits. Its BCC
object and fds go with it; the kernel keeps maps and programs alive for as
long as the receiver holds their fds.

Only this process imports bcc: libbcc, LLVM and clang (about 140 MiB
resident after a compile, BENCHMARKS.md) never enter the sidecar. This
module imports bcc inside ``load_with_bcc`` only, so the parent may import
it for the wire format.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from otel_blocksnoop.errors import (
    BccMissingError,
    BlocksnoopError,
    BpfLoadError,
    NoPrivilegesError,
)
from otel_blocksnoop.kernel.program import DetectorConfig, captured_stderr, compile_program

log = logging.getLogger(__name__)

REQUEST_MAX = 1 << 17
"""Bytes of one request, the C source included (about 32 KiB); within a socket's send buffer."""
REPLY_MAX = 1 << 16
MAX_FDS = 253
"""SCM_MAX_FD: the most fds one message carries."""

ERRORS: dict[str, type[BlocksnoopError]] = {
    error.__name__: error for error in (BpfLoadError, NoPrivilegesError, BccMissingError)
}
"""The failures the child reports by name; the parent raises the same class."""


@dataclass(frozen=True, slots=True)
class Request:
    """What to compile (``source`` for ``config``), and functions to load with their BPF type.

    ``capture_fd``: the fd (passed to the child under the same number) that
    takes what the compiler writes to stderr; the parent reads it if the
    child dies without a reply (LLVM ends a process with ``exit(1)`` on some
    errors). None: the child's own.
    """

    config: DetectorConfig
    programs: dict[str, int]
    log_level: int = logging.WARNING
    source: str | None = None
    capture_fd: int | None = None

    def encode(self) -> bytes:
        return json.dumps(
            {
                "config": dataclasses.asdict(self.config),
                "programs": self.programs,
                "log_level": self.log_level,
                "source": self.source,
                "capture_fd": self.capture_fd,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Request:
        fields = json.loads(data)
        source, capture_fd = fields.get("source"), fields.get("capture_fd")
        return cls(
            config=_config(fields["config"]),
            programs={str(name): int(kind) for name, kind in fields["programs"].items()},
            log_level=int(fields["log_level"]),
            source=str(source) if source is not None else None,
            capture_fd=int(capture_fd) if capture_fd is not None else None,
        )


def _config(fields: dict[str, Any]) -> DetectorConfig:
    """The ``DetectorConfig`` JSON gave back (its tuples came as lists)."""
    pidns = fields.get("pidns")
    return DetectorConfig(**{**fields, "pidns": tuple(pidns) if pidns is not None else None})


@dataclass(frozen=True, slots=True)
class Reply:
    """Map and program names, in the order of the fds that come with them (maps first)."""

    maps: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    error: str | None = None  # a name in ``ERRORS``
    message: str = ""

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Reply:
        fields = json.loads(data)
        return cls(
            maps=tuple(fields["maps"]),
            programs=tuple(fields["programs"]),
            error=fields["error"],
            message=fields["message"],
        )

    def raise_error(self) -> None:
        """Raise what the child reported, as the class it named (BpfLoadError if unknown)."""
        if self.error is not None:
            raise ERRORS.get(self.error, BpfLoadError)(self.message)


def load_with_bcc(request: Request) -> tuple[Reply, list[int], Any]:
    """Compile and load ``request`` with BCC: the reply, its fds, the BPF object holding them."""
    try:
        from bcc import BPF, libbcc  # noqa: PLC0415 - only this process may import bcc
    except ImportError as exc:
        msg = f"failed to import bcc: {exc}"
        raise BccMissingError(msg) from exc

    # Said once bcc imports, so that a missing bcc is the run's only line.
    log.info("compiling and loading the BPF program...")
    bpf = compile_program(BPF, request.config, request.source, request.capture_fd)
    # libbcc writes the verifier's log to fd 2: kept for -v, out of the user's way
    # (nothing may log inside: fd 2 is the capture there).
    failure: tuple[str, Exception] | None = None
    with captured_stderr(request.capture_fd) as read_output:
        for name, kind in request.programs.items():
            try:
                bpf.load_func(name.encode(), kind)
            except Exception as exc:  # noqa: BLE001 - raised below, once fd 2 is back
                failure = (name, exc)
                break
        output = read_output()
    if failure is not None:
        function, error = failure
        log.debug("verifier output:\n%s", output)
        msg = f"failed to load BPF function {function}: {error}"
        raise BpfLoadError(msg) from error
    lib = ctypes.CDLL(libbcc.lib._name)  # noqa: SLF001 (the file BCC loaded; our own prototypes)
    lib.bpf_num_tables.argtypes = (ctypes.c_void_p,)
    lib.bpf_num_tables.restype = ctypes.c_ulonglong
    lib.bpf_table_name.argtypes = (ctypes.c_void_p, ctypes.c_ulonglong)
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_fd_id.argtypes = (ctypes.c_void_p, ctypes.c_ulonglong)
    lib.bpf_table_fd_id.restype = ctypes.c_int
    maps, fds = [], []
    for index in range(lib.bpf_num_tables(bpf.module)):
        maps.append(lib.bpf_table_name(bpf.module, index).decode())
        fds.append(lib.bpf_table_fd_id(bpf.module, index))
    programs = [name.decode() for name in bpf.funcs]
    fds.extend(function.fd for function in bpf.funcs.values())
    if any(fd < 0 for fd in fds) or len(fds) > MAX_FDS:
        msg = f"failed to hand over the BPF program: {len(fds)} fds, some invalid or too many"
        raise BpfLoadError(msg)
    return Reply(maps=tuple(maps), programs=tuple(programs)), fds, bpf


def serve(sock: socket.socket) -> None:
    """Answer the one request on ``sock``."""
    request = Request.decode(sock.recv(REQUEST_MAX))
    logging.getLogger().setLevel(request.log_level)
    try:
        # The BPF object keeps the fds open until they are sent.
        reply, fds, _bpf = load_with_bcc(request)
    except BlocksnoopError as exc:
        sock.send(Reply(error=type(exc).__name__, message=str(exc)).encode())
        return
    except Exception as exc:  # noqa: BLE001 - whatever BCC raised, the parent gets one error
        message = f"failed to load BPF program: {exc}"
        sock.send(Reply(error=BpfLoadError.__name__, message=message).encode())
        return
    socket.send_fds(sock, [reply.encode()], fds)
    # The fds are in flight: the parent holds the program now. Exit at once, skipping
    # BCC's clean-up (detaching, freeing LLVM's memory: up to 0.6 s, BENCHMARKS.md);
    # the kernel closes our fds and detaches what BCC attached here.
    logging.shutdown()
    os._exit(0)


def main(argv: Sequence[str]) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("otel-blocksnoop (compiler): %(message)s"))
    logging.getLogger().addHandler(handler)
    if len(argv) != 1 or not argv[0].isdigit():
        log.error("usage: python -m otel_blocksnoop.kernel.compile FD")
        return 2
    with socket.socket(fileno=int(argv[0])) as sock:
        serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
