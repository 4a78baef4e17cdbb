"""The layouts users deploy, run with a real engine: every block of a containerised app, as spans.

The app is examples/blocking_service.py in its own image (Dockerfile.app), in
its own PID and mount namespaces; it blocks its loop once a second, in turn in
``time.sleep``, ``pbkdf2_hmac``, a pure-Python loop and a held lock, each
inside a ``GET`` request span it exports itself, and logs each block just
before it. Spans from the sidecar and the app go to a real OTLP receiver on
the host. Two layouts:

- ``compose``: docker-compose.yml as shipped, the sidecar in the app's PID
  namespace (``pid: "service:app"``), hardened (two capabilities, read-only,
  no-new-privileges), as a pod with ``shareProcessNamespace``;
- ``host-pid``: the sidecar in the host's PID namespace (``--pid host``, the
  DaemonSet's ``hostPID``), equally hardened, running the DaemonSet's own
  command (deploy/kubernetes/daemonset.yaml): node mode, which finds the app
  by its command line.

What a user expects from each is asserted: every block a span of the app's
service, with its stack, cause, parent, container and the app's own ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import yaml  # type: ignore[import-untyped]

from harness.otlp import OtlpReceiver, ReceivedSpan, attributes
from tests.containers.conftest import (
    EXPECTED_CAUSE,
    HARDENED,
    HOST_MOUNTS,
    SIDECAR_IMAGE,
    LayoutRun,
    TrueBlock,
    app_env,
    attribute,
    compose,
    compose_container,
    docker,
    inspect,
    project_name,
    sidecar_watching_ns,
    stop_container,
    watch,
)
from tests.helpers import ROOT

pytestmark = [pytest.mark.containers, pytest.mark.usefixtures("bpf_host")]

LAYOUTS = ("compose", "host-pid")
DAEMONSET = ROOT / "deploy" / "kubernetes" / "daemonset.yaml"
APP_COMMAND_PATTERN = "python3 -u examples/blocking_service[.]py"
"""The demo app's command line, as a DaemonSet user would set WATCH_COMMAND for it."""
STOP_S = 5.0
"""A sidecar told to stop has delivered what it had and exited within this."""


def start_sidecar(layout: str, project: str, env: dict[str, str], app: str) -> str:
    """The sidecar of ``layout``, started; its container id."""
    if layout == "compose":
        up = compose(project, "up", "-d", "--no-deps", "--no-build", "sidecar", env=env)
        assert up.returncode == 0, up.stderr
        return compose_container(project, "sidecar", env)
    del app  # found by the DaemonSet's command, by its command line
    (daemonset,) = yaml.safe_load_all(DAEMONSET.read_text())
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    manifest_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # The kubelet's expansion of $(NAME), with the app's pattern for WATCH_COMMAND.
    values = {**manifest_env, "WATCH_COMMAND": APP_COMMAND_PATTERN}
    argv = [
        re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values[m.group(1)], part)
        for part in [*container["command"], *container.get("args", [])]
    ]
    started = docker(
        "run",
        "-d",
        "--name",
        f"{project}_host_sidecar",
        "--pid",
        "host",
        *HARDENED,
        *HOST_MOUNTS,
        "-e",
        f"OTEL_EXPORTER_OTLP_ENDPOINT={env['SIDECAR_OTLP_ENDPOINT']}",
        "-e",
        "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
        "--entrypoint",
        argv[0],
        SIDECAR_IMAGE,
        *argv[1:],
    )
    assert started.returncode == 0, started.stderr
    return started.stdout.strip()


@pytest.fixture(scope="module", params=LAYOUTS)
def layout_run(request: pytest.FixtureRequest, images: object, gateway: str) -> Iterator[LayoutRun]:
    """One layout run until the app has blocked eight times while watched, then stopped."""
    del images  # built first
    layout: str = request.param
    project = project_name(layout.replace("-", ""))
    with OtlpReceiver(host=gateway) as receiver:
        env = app_env(receiver)
        sidecar = ""
        try:
            up = compose(project, "up", "-d", "--no-deps", "--no-build", "app", env=env)
            assert up.returncode == 0, up.stderr
            app = compose_container(project, "app", env)
            sidecar = start_sidecar(layout, project, env, app)
            watching_ns, _said = sidecar_watching_ns(sidecar)
            run = LayoutRun(app_container=app, sidecar_container=sidecar, watching_ns=watching_ns)
            watch(run, receiver)
            run.sidecar_exit, run.stop_s, run.sidecar_log = stop_container(sidecar)
            yield run
        finally:
            if sidecar and layout == "host-pid":
                docker("rm", "-f", sidecar)
            compose(project, "down", "-t", "5", "-v", env=env)


def layout_of(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["layout_run"])


def test_the_sidecar_runs_hardened_and_attaches(layout_run: LayoutRun) -> None:
    # GIVEN the sidecar as the layout runs it
    sidecar = layout_run.sidecar_container
    # THEN it has two capabilities, a read-only root and no way to gain privileges
    assert inspect(sidecar, "{{.HostConfig.Privileged}}") == "false"
    assert inspect(sidecar, "{{.HostConfig.CapDrop}}") in ("[ALL]", "[CAP_ALL]")
    added = set(inspect(sidecar, "{{.HostConfig.CapAdd}}").strip("[]").split())
    assert {cap.removeprefix("CAP_") for cap in added} == {"SYS_ADMIN", "SYS_PTRACE"}
    assert inspect(sidecar, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    # (the engine adds label=disable to a container in the host's PID namespace)
    options = inspect(sidecar, "{{.HostConfig.SecurityOpt}}").strip("[]").split()
    assert set(options) - {"label=disable"} == {"no-new-privileges:true"}
    # AND it loaded its BPF programs and watched the app (the fixture waited for that)
    assert layout_run.watching_ns > 0
    assert "attached to epoll_wait" in layout_run.sidecar_log


def test_the_sidecar_shares_the_pid_namespace_the_layout_gives_it_and_finds_the_app(
    request: pytest.FixtureRequest, layout_run: LayoutRun
) -> None:
    # GIVEN the layout's PID namespace: the app's own, or the host's
    app = layout_run.app_container
    mode = inspect(layout_run.sidecar_container, "{{.HostConfig.PidMode}}")
    expected_mode = {"compose": f"container:{app}", "host-pid": "host"}
    assert mode == expected_mode[layout_of(request)]
    # THEN the sidecar's command found the app by its command line, by the PID it has there
    pid = {"compose": "1", "host-pid": inspect(app, "{{.State.Pid}}")}[layout_of(request)]
    assert f"watching PID {pid} (python3 -u examples/blocking_service.py)" in (
        layout_run.sidecar_log
    )


def test_the_sidecar_stops_promptly_and_cleanly_on_sigterm(layout_run: LayoutRun) -> None:
    assert layout_run.stop_s is not None
    assert layout_run.stop_s < STOP_S, layout_run.sidecar_log[-2000:]
    assert layout_run.sidecar_exit == 0, layout_run.sidecar_log[-2000:]


def test_every_block_of_the_app_is_a_span(layout_run: LayoutRun) -> None:
    # GIVEN the blocking requests the app made while watched
    assert len(layout_run.true_blocks) >= 8
    # THEN each is covered by exactly one block span of the app's service
    missed = [b for b in layout_run.true_blocks if len(layout_run.span_for(b)) != 1]
    assert not missed, f"{len(missed)} of {len(layout_run.true_blocks)} blocks: {missed}"


def test_each_block_names_the_function_that_blocked_and_why(layout_run: LayoutRun) -> None:
    for block in layout_run.true_blocks:
        (span,) = layout_run.span_for(block)
        assert attribute(span, "code.function.name") == block.function
        assert "examples/blocking_service.py" in attribute(span, "code.file.path")
        cause, syscall = EXPECTED_CAUSE[block.function]
        assert attribute(span, "blocksnoop.cause") == cause
        assert attribute(span, "blocksnoop.syscall") == syscall


def test_each_block_is_a_child_of_the_request_that_blocked(layout_run: LayoutRun) -> None:
    for block in layout_run.true_blocks:
        (span,) = layout_run.span_for(block)
        (parent,) = [
            r
            for r in layout_run.request_spans
            if r.span.name == f"GET {block.route}"
            and r.span.start_time_unix_nano <= block.at_ns <= r.span.end_time_unix_nano
        ]
        where = blocked_in(layout_run, block, span, parent)
        assert span.span.trace_id == parent.span.trace_id, where
        assert span.span.parent_span_id == parent.span.span_id, where


def blocked_in(
    run: LayoutRun, block: TrueBlock, span: ReceivedSpan, parent: ReceivedSpan
) -> dict[str, object]:
    """What a wrong parent is judged on: the block, its span, the request and the span's parent."""

    def times(found: ReceivedSpan) -> tuple[str, int, int]:
        return (found.span.name, found.span.start_time_unix_nano, found.span.end_time_unix_nano)

    given = [r for r in run.request_spans if r.span.span_id == span.span.parent_span_id]
    return {
        "block": block,
        "span": (*times(span), attributes(span.span.attributes)),
        "request": times(parent),
        "span's parent": [times(r) for r in given],
        "sidecar log": run.sidecar_log[-2000:],
    }


def test_block_spans_name_the_apps_container_and_its_own_pid(layout_run: LayoutRun) -> None:
    # GIVEN the app container, PID 1 in its own namespace
    app = layout_run.app_container
    full_id = inspect(app, "{{.Id}}")
    hostname = inspect(app, "{{.Config.Hostname}}")
    assert layout_run.block_spans
    for span in layout_run.block_spans:
        # THEN each span's resource is the app as it sees itself
        assert span.resource.get("container.id") == full_id
        assert span.resource.get("host.name") == hostname
        assert span.resource.get("process.pid") == 1


CONSOLE_BLOCK = re.compile(
    r"^\d\d:\d\d:\d\d\.\d+\s+(\d+)\s+(\d+)\s+\S+\s+[\d.]+ ms\s+(?!.*STILL BLOCKED)"
)
"""A block's line on the sidecar's console: time, PID, thread id, name, duration."""


def test_the_sidecar_reports_each_block_on_the_ids_the_app_sees(layout_run: LayoutRun) -> None:
    # GIVEN the app, PID 1 with its loop in its main thread in its own namespace, and the
    # sidecar in that namespace (compose) or in the host's (host-pid)
    ids = [
        m.groups()[:2] for m in map(CONSOLE_BLOCK.match, layout_run.sidecar_log.splitlines()) if m
    ]
    # THEN each block the app made while watched was reported, on PID 1 and thread 1
    assert len(ids) >= len(layout_run.true_blocks) - 1, layout_run.sidecar_log[-2000:]
    assert set(ids) == {("1", "1")}, layout_run.sidecar_log[-2000:]
