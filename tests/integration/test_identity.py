"""Who the app is: its spans' resource names its container, pod and hostname, not the sidecar's.

The app runs under ``unshare --uts --pid --fork --mount-proc`` with a
hostname of its own, in a real cgroup made here and named as a container
engine or the kubelet names theirs (``/docker/<id>``,
``/kubepods/besteffort/pod<uid>/<id>``), on the hierarchy with the ``cpu``
controller (cgroup v1 on the machines CI uses; else the v2 one), and removed
after. The sidecar watches it by its host PID and exports to the in-test
OTLP receiver.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.otlp import OtlpReceiver, attributes
from harness.procs import children
from otel_blocksnoop.process import cgroup
from tests.helpers import BLOCKER, IN_CI, WAIT_S
from tests.integration.test_export import Running, endpoint_of, otlp_env

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

CONTAINER_ID = "5e1d0c9b8a7f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a2918f0e1d2c"
POD_UID = "0b3c5d7e-9f1a-4b2c-8d3e-5f6a7b8c9d0e"
APP_HOSTNAME = "blocksnoop-app-7f9c"
POLL_S = 0.2
"""How often the wait for the app's "ready" checks that it is still there."""
PLACEMENT_KEYS = (
    "host.name",
    "container.id",
    "k8s.pod.uid",
    "k8s.pod.name",
    "k8s.namespace.name",
    "k8s.container.name",
)
# The app's hostname set, maybe in its own /etc/hostname (as Docker does), then the app.
IN_NAMESPACES = """
hostname "$1" || exit 90
if [ -n "$2" ]; then
    echo "$1" > "$2" && mount --bind "$2" /etc/hostname || exit 91
fi
shift 2
exec "$@"
"""


@dataclass(frozen=True)
class Layout:
    """Where the app runs and what it is given; what its resource must then say."""

    cgroup: tuple[str, ...]  # path under the hierarchy's root
    hostname_from: str  # "env": HOSTNAME set; "file": its own /etc/hostname; "": neither
    env: dict[str, str]
    expected: dict[str, str]


LAYOUTS = {
    "docker-own-etc-hostname": Layout(
        cgroup=("docker", CONTAINER_ID),
        hostname_from="file",
        env={},
        expected={"host.name": APP_HOSTNAME, "container.id": CONTAINER_ID},
    ),
    "kubepods-downward-api": Layout(
        cgroup=("kubepods", "besteffort", f"pod{POD_UID}", CONTAINER_ID),
        hostname_from="env",
        env={
            "HOSTNAME": APP_HOSTNAME,
            "KUBERNETES_SERVICE_HOST": "10.96.0.1",
            "K8S_POD_NAME": APP_HOSTNAME,
            "K8S_NAMESPACE": "shop",
            "K8S_CONTAINER_NAME": "app",
        },
        expected={
            "host.name": APP_HOSTNAME,
            "container.id": CONTAINER_ID,
            "k8s.pod.uid": POD_UID,
            "k8s.pod.name": APP_HOSTNAME,
            "k8s.namespace.name": "shop",
            "k8s.container.name": "app",
        },
    ),
    # Its own UTS namespace, but the sidecar's /etc/hostname and no HOSTNAME:
    # the name it was given cannot be read, and the sidecar's is not put in its place.
    "docker-hostname-unreadable": Layout(
        cgroup=("docker", CONTAINER_ID),
        hostname_from="",
        env={},
        expected={"container.id": CONTAINER_ID},
    ),
}


def _hierarchy() -> Path:
    """The root of the v1 hierarchy with the ``cpu`` controller, else of the v2 one."""
    mounts = [m for m in cgroup.own_mounts() if m.root == "/"]
    for mount in sorted(mounts, key=lambda m: m.v2):  # v1 first
        return Path(mount.point)
    if IN_CI:
        pytest.fail("no cgroup hierarchy is mounted here: CI must have one")
    pytest.skip("no cgroup hierarchy is mounted here")


@pytest.fixture
def app_cgroup(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The layout's cgroup, made fresh; every directory made is removed after."""
    layout: Layout = request.node.callspec.params["layout"]
    made: list[Path] = []
    group = _hierarchy()
    try:
        for part in layout.cgroup:
            group /= part
            if not group.exists():  # it may be left by a run that was killed
                group.mkdir()
                made.append(group)
        yield group
    finally:
        for directory in reversed(made):
            directory.rmdir()  # empty: the app was stopped before (``app`` is torn down first)


@dataclass
class App:
    """The blocker app in its own UTS, PID and mount namespaces."""

    unshare: subprocess.Popen[str]
    pid: int  # the host PID of the Python process

    def go(self) -> None:
        assert self.unshare.stdin is not None
        self.unshare.stdin.write("go\n")
        self.unshare.stdin.close()


@pytest.fixture
def apps() -> Iterator[list[App]]:
    started: list[App] = []
    yield started
    for app in started:
        if app.unshare.poll() is None:
            app.unshare.kill()  # the app is PID 1 of its namespace: it goes with it
        app.unshare.wait()


def _ready_line(fifo: Path, unshare: subprocess.Popen[str]) -> str:
    """The app's "ready" line; fails if it exits first (e.g. it could not set its hostname)."""
    # Opened for writing too, so the open does not wait for the app and no EOF
    # comes before it writes.
    fd = os.open(fifo, os.O_RDWR)
    try:
        deadline = time.monotonic() + WAIT_S
        data = b""
        while b"\n" not in data:
            if unshare.poll() is not None:
                assert unshare.stderr is not None
                pytest.fail(f"the app exited with {unshare.returncode}: {unshare.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not say ready within {WAIT_S} s")
            readable, _, _ = select.select([fd], [], [], POLL_S)
            if readable:
                data += os.read(fd, 4096)
    finally:
        os.close(fd)
    return data.decode()


def _start(tmp_path: Path, layout: Layout, apps: list[App]) -> App:
    fifo = tmp_path / "ready.fifo"
    os.mkfifo(fifo)
    hostname_file = str(tmp_path / "hostname") if layout.hostname_from == "file" else ""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "K8S_", "KUBERNETES_")) and k != "HOSTNAME"
    }
    unshare = subprocess.Popen(
        ["unshare", "--uts", "--pid", "--fork", "--mount-proc",
         "sh", "-c", IN_NAMESPACES, "sh", APP_HOSTNAME, hostname_file,
         sys.executable, str(BLOCKER), "sleep", "--ready", str(fifo), "--go",
         "--out", str(tmp_path / "truth.jsonl")],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, **layout.env},
    )  # fmt: skip
    line = _ready_line(fifo, unshare)
    assert line.startswith("ready"), line
    ((pid, _, _),) = children(unshare.pid)  # sh, which became the app
    app = App(unshare, pid)
    apps.append(app)
    return app


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=list(LAYOUTS))
def test_the_spans_resource_names_the_apps_container_pod_and_hostname(
    tmp_path: Path, layout: Layout, app_cgroup: Path, apps: list[App], running: list[Running]
) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed here")
    # GIVEN an asyncio app with its own hostname, PID namespace and container cgroup
    app = _start(tmp_path, layout, apps)
    (app_cgroup / "cgroup.procs").write_text(f"{app.pid}\n")
    assert f"/{'/'.join(layout.cgroup)}\n" in Path(f"/proc/{app.pid}/cgroup").read_text()
    with OtlpReceiver() as receiver:
        # WHEN the sidecar, on the host, watches it block once
        run = Running(
            # Every thread: which is the loop is told by thread ids, and the app's own
            # (its PID namespace's) are not yet matched with the kernel's here.
            ["--no-stacks", "--all-threads", "-t", "50", str(app.pid)],
            otlp_env(endpoint_of(receiver, "grpc"), "grpc"),
        )
        running.append(run)
        run.wait_attached()
        app.go()
        code, _, stderr = run.finish()
        assert code == 0, stderr
        spans = receiver.wait_for_spans(1)
    # THEN its spans' resource says where the app runs, and nothing of the sidecar's
    assert [s.span.name for s in spans if s.span.name == "eventloop.block"], spans
    for span in spans:
        found = {key: span.resource[key] for key in PLACEMENT_KEYS if key in span.resource}
        assert found == layout.expected, [attributes(s.span.attributes) for s in spans]
        assert span.resource["process.pid"] in {app.pid, 1}


APP_UID = 10001
"""The app's user: not root, as in Dockerfile.app; its /proc/PID/environ is 0400 to it."""
READ_IDENTITY = """
import json, sys
from pathlib import Path
from otel_blocksnoop.process.identity import read_identity
pid = int(sys.argv[1])
try:
    Path(f"/proc/{pid}/environ").read_bytes()
    opened = "opened"
except PermissionError:
    opened = "refused"
identity = read_identity(pid)
print(json.dumps([opened, identity.service_name, dict(identity.resource_attributes)]))
"""


def _as_root_without(*caps: str) -> list[str]:
    """Run as uid 0 without ``caps``: root gets no more than its bounding set at exec."""
    return ["setpriv", "--inh-caps=-all", f"--bounding-set={','.join('-' + c for c in caps)}"]


@pytest.fixture
def app_of_another_user() -> Iterator[int]:
    """A Python process of uid 10001 with its own OTel settings, waiting on stdin; its PID."""
    app = subprocess.Popen(
        ["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups", "--",
         "/usr/bin/python3", "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "OTEL_SERVICE_NAME": "checkout",
             "OTEL_RESOURCE_ATTRIBUTES": "team=payments"},
    )  # fmt: skip
    try:
        assert app.stdout is not None
        assert app.stdout.readline() == "ready\n"
        yield app.pid
    finally:
        app.communicate("")


@pytest.mark.parametrize(
    ("dropped", "expected"),
    [
        (("dac_override", "dac_read_search"), ["refused", "checkout", {"team": "payments"}]),
        (("dac_override", "dac_read_search", "sys_ptrace"), ["refused", None, {}]),
    ],
    ids=["with-sys-ptrace", "without-sys-ptrace"],
)
def test_an_apps_settings_are_read_from_its_memory_when_its_environ_is_closed(
    app_of_another_user: int, dropped: tuple[str, ...], expected: list[object]
) -> None:
    # GIVEN an app of another user, and a reader that is root without the DAC
    # capabilities (the hardened layouts: cap_drop ALL + SYS_ADMIN + SYS_PTRACE)
    reader = [*_as_root_without(*dropped), "--", sys.executable, "-c", READ_IDENTITY]
    # WHEN it reads the app's identity
    result = subprocess.run(
        [*reader, str(app_of_another_user)],
        capture_output=True, text=True, check=False, timeout=WAIT_S,
    )  # fmt: skip
    # THEN it could not open /proc/PID/environ, yet with CAP_SYS_PTRACE it has the
    # app's service name and attributes from its memory, and without it nothing
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected
