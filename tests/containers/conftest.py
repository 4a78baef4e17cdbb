"""A real Docker engine, the two images built from this checkout, and the layouts run with them.

The engine and the base image come from ``make docker-setup``
(scripts/docker-setup.sh). Outside CI a missing engine skips these tests;
under CI it fails them. Builds use the host's network (the engine runs
without NAT rules here) and the classic builder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from harness.otlp import OtlpReceiver, ReceivedSpan, attributes
from tests.helpers import IN_CI, ROOT, PipeLines

IMAGE_TAG = os.environ.get("BLOCKSNOOP_IMAGE_TAG", "dev")
"""The images' tag: checkouts that test side by side on one engine give each their own."""
SIDECAR_IMAGE = f"otel-blocksnoop:{IMAGE_TAG}"
APP_IMAGE = f"blocking-service:{IMAGE_TAG}"
COMPOSE_FILE = ROOT / "docker-compose.yml"
BUILD_TIMEOUT_S = 900
RUN_TIMEOUT_S = 120
WATCHING = "Ctrl-C to stop"
"""What the sidecar says once its probes are attached and it watches."""
BLOCK_SPAN = "eventloop.block"
APP_SERVICE = "blocking-service"
BLOCKS_TO_SEE = 8
"""Blocking requests the app makes while watched, two of each kind (BLOCK_EVERY_S=1)."""
SETTLE_S = 10.0
"""After the last of them, how long spans may take to arrive (export is within 1 s)."""
BLOCKING_LINE = re.compile(r"blocking service: (/\w+) blocks the loop in (\w+)\(\)")
# The app's functions and the cause each blocks with (examples/blocking_service.py).
EXPECTED_CAUSE = {
    "sleepy_handler": ("syscall", "clock_nanosleep"),
    "hash_password": ("cpu", None),
    "render_report": ("cpu", None),
    "read_config": ("syscall", "futex"),
}
HARDENED = (
    "--cap-drop",
    "ALL",
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "SYS_PTRACE",
    "--read-only",
    "--tmpfs",
    "/tmp",  # noqa: S108 - the container's tmpfs
    "--security-opt",
    "no-new-privileges:true",
)
"""The sidecar's options in docker-compose.yml, for ``docker run``."""
HOST_MOUNTS = (
    "-v",
    "/sys/kernel/tracing:/sys/kernel/tracing:ro",
    "-v",
    "/lib/modules:/lib/modules:ro",
    "-v",
    "/usr/src:/usr/src:ro",
)
BUILD_ENV = {**os.environ, "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI must run the container tests: {reason} (make docker-setup)")
    pytest.skip(f"{reason} (make docker-setup)")


def docker(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``docker ARGS``, its output as text; never raises on a non-zero exit."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def inspect(container: str, template: str) -> str:
    result = docker("inspect", "-f", template, container)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="session")
def engine() -> None:
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        unavailable("docker or docker-compose is not installed")
    if docker("info", timeout=30).returncode != 0:
        unavailable("no Docker engine answers")


@dataclass(frozen=True)
class Images:
    """Both images, built from this checkout; their sizes in bytes."""

    sidecar_size: int
    app_size: int


@pytest.fixture(scope="session")
def images(engine: None) -> Images:  # noqa: ARG001 - needs the engine checked
    for tag, dockerfile in ((SIDECAR_IMAGE, "Dockerfile"), (APP_IMAGE, "Dockerfile.app")):
        build = subprocess.run(
            ["docker", "build", "--network", "host", "-q", "-f", dockerfile, "-t", tag, "."],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
            cwd=ROOT,
            env=BUILD_ENV,
        )
        assert build.returncode == 0, f"docker build of {dockerfile} failed:\n{build.stderr}"
    # A rebuild leaves the previous image dangling.
    docker("image", "prune", "-f")
    return Images(
        sidecar_size=int(inspect(SIDECAR_IMAGE, "{{.Size}}")),
        app_size=int(inspect(APP_IMAGE, "{{.Size}}")),
    )


@pytest.fixture(scope="session")
def gateway(engine: None) -> str:  # noqa: ARG001 - needs the engine checked
    """The host's address on Docker's default bridge (docker0), which every container reaches."""
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", "docker0"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", shown)
    assert found, f"docker0 has no IPv4 address: {shown!r}"
    return found[1]


@pytest.fixture
def receiver(gateway: str) -> Iterator[OtlpReceiver]:
    """A real OTLP receiver the containers reach at the bridge gateway."""
    with OtlpReceiver(host=gateway) as listening:
        yield listening


def log_time_ns(stamp: str) -> int:
    """Docker's RFC 3339 log timestamp (nanoseconds, UTC) as Unix nanoseconds."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(seconds + "+00:00").timestamp()
    return int(whole) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9])


@dataclass(frozen=True)
class TrueBlock:
    """A blocking request, as the app logged it just before it blocked."""

    at_ns: int
    route: str
    function: str


@dataclass
class LayoutRun:
    """What one layout's run showed: the app's blocks, the spans, the containers."""

    app_container: str
    sidecar_container: str
    watching_ns: int
    true_blocks: list[TrueBlock] = field(default_factory=list)
    spans: list[ReceivedSpan] = field(default_factory=list)
    sidecar_log: str = ""
    sidecar_exit: int | None = None
    stop_s: float | None = None

    @property
    def block_spans(self) -> list[ReceivedSpan]:
        return [
            s
            for s in self.spans
            if s.span.name == BLOCK_SPAN and s.resource.get("service.name") == APP_SERVICE
        ]

    @property
    def request_spans(self) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.span.name.startswith("GET ")]

    def span_for(self, block: TrueBlock) -> list[ReceivedSpan]:
        """Block spans that cover the moment the app said it was about to block."""
        return [
            s
            for s in self.block_spans
            if s.span.start_time_unix_nano - 20_000_000 <= block.at_ns <= s.span.end_time_unix_nano
        ]


def follow_logs(container: str) -> tuple[subprocess.Popen[str], PipeLines]:
    process = subprocess.Popen(
        ["docker", "logs", "-f", "-t", container],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    return process, PipeLines(process.stdout)


def watch(run: LayoutRun, receiver: OtlpReceiver) -> None:
    """Collect the app's blocks once the sidecar watches, and the spans that arrive for them."""
    follower, lines = follow_logs(run.app_container)
    try:
        while len(run.true_blocks) < BLOCKS_TO_SEE:
            line = lines.wait_for("blocks the loop in", timeout=30)
            stamp, _, text = line.partition(" ")
            match = BLOCKING_LINE.search(text)
            assert match, line
            at_ns = log_time_ns(stamp)
            if at_ns > run.watching_ns:
                run.true_blocks.append(TrueBlock(at_ns, match[1], match[2]))
    finally:
        follower.kill()
        follower.wait()

    def covered(_spans: list[ReceivedSpan]) -> bool:
        return all(run.span_for(block) for block in run.true_blocks)

    with contextlib.suppress(AssertionError):  # what arrived is judged by each test
        receiver.wait_for_spans(covered, timeout=SETTLE_S)
    run.spans = receiver.spans()


def sidecar_watching_ns(container: str, timeout: float = 60) -> tuple[int, str]:
    """When the sidecar said it was watching (Unix ns), and what it said until then."""
    follower, lines = follow_logs(container)
    try:
        line = lines.wait_for(WATCHING, timeout=timeout)
    finally:
        follower.kill()
        follower.wait()
    return log_time_ns(line.partition(" ")[0]), "\n".join(lines.seen)


def stop_container(container: str) -> tuple[int, float, str]:
    """``docker stop`` (SIGTERM, then SIGKILL after 10 s): exit code, seconds taken, its log."""
    started = time.monotonic()
    docker("stop", "-t", "10", container)
    took = time.monotonic() - started
    exit_code = int(inspect(container, "{{.State.ExitCode}}"))
    log = docker("logs", container)
    return exit_code, took, log.stdout + log.stderr


def attribute(span: ReceivedSpan, name: str) -> Any:
    return attributes(span.span.attributes).get(name)


def compose(project: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-p", project, "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        cwd=ROOT,
        env={**os.environ, "BLOCKSNOOP_IMAGE_TAG": IMAGE_TAG, **env},
    )


def compose_container(project: str, service: str, env: dict[str, str]) -> str:
    result = compose(project, "ps", "-q", service, env=env)
    assert result.returncode == 0, result.stderr
    container = result.stdout.strip()
    assert container, f"compose started no {service} container"
    return container


def app_env(receiver: OtlpReceiver) -> dict[str, str]:
    """The compose variables that point app and sidecar at the test's receiver."""
    return {
        "BLOCK_EVERY_S": "1",
        "APP_OTLP_ENDPOINT": receiver.http_endpoint,
        "SIDECAR_OTLP_ENDPOINT": f"http://{receiver.grpc_endpoint}",
    }


def project_name(tag: str) -> str:
    return f"obs{tag}{os.getpid()}"
