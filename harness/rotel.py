"""Rotel, a real OpenTelemetry collector from PyPI, run in front of an ``OtlpReceiver``.

Rotel receives OTLP on gRPC and HTTP on free ports of 127.0.0.1 and forwards
traces, metrics and logs with its ``otlp`` exporter, over gRPC (the default)
or HTTP/protobuf, to the receiver::

    with OtlpReceiver() as receiver, Rotel(receiver) as collector:
        exporter = OTLPSpanExporter(endpoint=collector.grpc_endpoint, insecure=True)
        ...
        receiver.wait_for_spans(1)

The binary is the ``rotel-agent`` shipped in the ``rotel`` wheel (class
attribute ``BINARY``; a test may subclass with another path). It runs in the
foreground, never as a daemon, with its own pid file, and is always stopped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Literal, Self

from harness import HarnessError
from harness.otlp import HOST, WAIT_S, OtlpReceiver, free_port

START_S = 15.0
"""Bound on rotel starting to listen."""
STOP_S = 10.0
"""Bound on rotel exiting after SIGTERM, before it is killed."""
CONNECT_RETRY_S = 0.01
"""Between two connection attempts, the time rotel is given to exit instead."""

Protocol = Literal["grpc", "http"]


def rotel_binary() -> Path:
    """``rotel-agent`` inside the installed ``rotel`` package."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("failed to find rotel: the package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "rotel-agent"


class Rotel:
    """One ``rotel-agent start`` process forwarding every signal to ``receiver``.

    ``protocol`` is how rotel exports to the receiver (``grpc`` goes to its
    gRPC port, ``http`` to its HTTP port; rotel adds ``/v1/traces`` etc.).
    The receiver need not be running, but its ports must be known: start it
    first or give it fixed ports (``free_port()``). ``args`` are appended to
    the command line, e.g. ``("--batch-timeout", "10ms")``.
    """

    BINARY: ClassVar[Path] = rotel_binary()

    def __init__(
        self,
        receiver: OtlpReceiver,
        *,
        protocol: Protocol = "grpc",
        grpc_port: int = 0,
        http_port: int = 0,
        args: Sequence[str] = (),
    ) -> None:
        target_port = receiver.grpc_port if protocol == "grpc" else receiver.http_port
        if target_port == 0:
            raise ValueError("the receiver's ports are not known yet: start it or fix them")
        self.exporter_endpoint = f"http://{HOST}:{target_port}"
        self.protocol = protocol
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.args = tuple(args)
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="rotel-")
        self._lines: list[str] = []
        self._lines_changed = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def grpc_endpoint(self) -> str:
        """``host:port`` for the gRPC exporters (with ``insecure=True``)."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """Base URL; the HTTP exporters want ``f"{http_endpoint}/v1/traces"`` etc."""
        return f"http://{HOST}:{self.http_port}"

    def command(self) -> list[str]:
        workdir = Path(self._workdir.name)
        return [
            str(self.BINARY),
            "start",
            "--otlp-grpc-endpoint",
            self.grpc_endpoint,
            "--otlp-http-endpoint",
            f"{HOST}:{self.http_port}",
            "--exporter",
            "otlp",
            "--otlp-exporter-endpoint",
            self.exporter_endpoint,
            "--otlp-exporter-protocol",
            self.protocol,
            "--pid-file",
            str(workdir / "rotel.pid"),
            "--log-file",
            str(workdir / "rotel.log"),
            *self.args,
        ]

    def log(self) -> str:
        """What rotel wrote so far (stdout and stderr), across restarts."""
        with self._lines_changed:
            return "".join(self._lines)

    def wait_for_log(self, needle: str, timeout: float = WAIT_S) -> str:
        """The first line of rotel's output containing ``needle``; fail after ``timeout``."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self._lines if needle in line]
            return bool(found)

        with self._lines_changed:
            if self._lines_changed.wait_for(seen, timeout):
                return found[0]
        raise HarnessError(f"rotel said nothing with {needle!r} within {timeout} s:\n{self.log()}")

    def _read_output(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with self._lines_changed:
                self._lines.append(raw.decode(errors="replace"))
                self._lines_changed.notify_all()
        stream.close()

    def start(self) -> Self:
        """Start rotel; return once both of its ports accept connections."""
        if self.process is not None:
            return self
        # ROTEL_* variables of the caller would silently change the flags' meaning.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
        env["NO_COLOR"] = "1"
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=self._read_output, args=(self.process.stdout,), name="rotel-output", daemon=True
        )
        self._reader.start()
        try:
            deadline = time.monotonic() + START_S
            self._wait_for_port(self.grpc_port, deadline)
            self._wait_for_port(self.http_port, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_port(self, port: int, deadline: float) -> None:
        assert self.process is not None
        while True:
            with contextlib.suppress(ConnectionRefusedError):
                socket.create_connection((HOST, port), timeout=START_S).close()
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                msg = f"rotel did not listen on {port} within {START_S} s:\n{self.log()}"
                raise HarnessError(msg)
            # Waiting on the process, not sleeping: a rotel that dies ends the wait at once.
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.process.wait(timeout=min(CONNECT_RETRY_S, remaining))
                raise HarnessError(f"rotel exited with {code} before listening:\n{self.log()}")

    def stop(self) -> int | None:
        """SIGTERM (rotel flushes what it holds), then SIGKILL after ``STOP_S``; the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_S)
        if self._reader is not None:
            self._reader.join(timeout=STOP_S)
            self._reader = None
        return process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        self._workdir.cleanup()
