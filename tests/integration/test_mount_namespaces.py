"""Apps in a filesystem of their own (pivot_root, chroot), the sidecar on the host.

The interpreter sits at a prefix the host does not have (harness.mntns), so
the app's /proc/PID/maps names files that exist only on its side: Austin and
our own readers must find them through the app's namespace and root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness import TARGETS
from harness.interpreters import SID_MINORS, WEB_APP_MODULES, WEB_APP_PACKAGES, pyenv_python
from harness.mntns import (
    PYTHON_PREFIX,
    Root,
    chroot_root,
    pivot_root_command,
    python_inside,
    python_root,
    sid_root,
    site_packages_of,
)
from harness.otlp import OtlpReceiver
from otel_blocksnoop.process.namespaces import reach
from otel_blocksnoop.stacks.austin import Austin
from otel_blocksnoop.stacks.memory import AUSTIN_NEWEST
from otel_blocksnoop.stacks.on_demand import process_state
from tests.helpers import (
    SIDECAR,
    WAIT_S,
    PipeLines,
    Sidecar,
    Target,
    matching_block,
    parse_json_lines,
    truth,
)
from tests.integration.conftest import otel_venv, sid_python
from tests.integration.test_export import otlp_env, span_for
from tests.integration.test_stacks import CALL_SITES, CAUSES
from tests.integration.test_trace_link import blocks_in, hex_ids, requests_in

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

APP = "/app"
"""Where the target apps are inside the root (the host has no /app)."""
SHARED = "/shared"
"""Where the test's own tmp_path is inside the root (FIFOs, the app's truth)."""
MINORS = (11, 13)
"""A libpython build whose maps name libpython3.X.so (3.11), and one with _Py_DebugOffsets."""


def pyenv_prefix(minor: int) -> Path:
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"no pyenv CPython 3.{minor} here")
    return python.parent.parent


def rooted(root: Root, tmp_path: Path) -> Root:
    """``root`` with the target apps at /app and ``tmp_path`` at /shared."""
    return replace(
        root,
        binds=(*root.binds, (str(TARGETS), APP)),
        writable=(*root.writable, (str(tmp_path), SHARED)),
    )


def inside(root: Root) -> tuple[Callable[[list[str]], list[str]], str, str, str]:
    """How tests.helpers.Target runs blocker.py in ``root``."""
    return (
        lambda argv: pivot_root_command(root, argv),
        python_inside(),
        f"{APP}/blocker.py",
        SHARED,
    )


def assert_call_site(block: dict[str, Any], scenario: str) -> None:
    """The stack ends in the blocking call, its source line read from the app's root; the
    cause is the scenario's."""
    assert_code(block, scenario)
    cause, syscalls = CAUSES[scenario]
    assert (block["cause"], block["syscall"]) in {(cause, name) for name in syscalls}, block


def assert_code(block: dict[str, Any], scenario: str) -> None:
    """The stack ends in the blocking call, its source line read from the app's root."""
    function, snippet = CALL_SITES[scenario]
    site = block["call_site"]
    assert site is not None, f"{scenario}: no stack"
    assert site["function"].endswith(function), (scenario, site)
    assert site["file"] == f"{APP}/blocker.py", site  # as the app sees it
    line = (TARGETS / "blocker.py").read_text().splitlines()[site["line"] - 1]
    assert snippet in line, (scenario, line)
    # the source lines were read through the app's root: /app is not the host's
    (frame,) = [f for f in block["stack"] if (f["file"], f["line"]) == (site["file"], site["line"])]
    assert snippet in (frame["source"] or ""), frame
    assert block["stack"][-1]["source"], block["stack"][-1]


@pytest.fixture
def cleanup() -> Iterator[list[Target | Sidecar]]:
    started: list[Target | Sidecar] = []
    yield started
    for thing in started:
        if isinstance(thing, Target):
            thing.stop()
        elif thing.process.poll() is None:
            thing.process.kill()
            thing.process.wait()


PIVOTED = [
    *((minor, "asyncio") for minor in MINORS),
    *((minor, loop) for minor in SID_MINORS for loop in ("asyncio", "uvloop")),
]
"""pyenv's, then Debian sid's CPython 3.14 and 3.15 in their own root (both loops)."""


@pytest.mark.parametrize(("minor", "loop"), PIVOTED, ids=[f"3.{m}-{loop}" for m, loop in PIVOTED])
def test_an_app_under_pivot_root_gets_the_stack_and_cause_of_each_block(
    tmp_path: Path, minor: int, loop: str
) -> None:
    # GIVEN an app under pivot_root whose interpreter is at a prefix the host lacks
    # (pyenv's moved, or sid's), launched by the sidecar, blocking seven known ways
    if minor in SID_MINORS:
        root, python = rooted(sid_root(), tmp_path), sid_python(f"py3.{minor}").python
    else:
        root, python = rooted(python_root(pyenv_prefix(minor)), tmp_path), python_inside()
    # (after 1 s on pyenv's: Austin attaches to a started interpreter; sid's need no wait)
    delay = [] if minor in SID_MINORS else ["--delay", "1"]
    extra = ["--uvloop"] if loop == "uvloop" else []
    app = [python, f"{APP}/blocker.py", "all", *delay, "--out", f"{SHARED}/t.jsonl", *extra]
    # (Austin asked for where it reads the version: auto would read 3.11+ from memory)
    reader = "austin" if (3, minor) <= AUSTIN_NEWEST else "auto"
    result = subprocess.run(
        [*SIDECAR, "--json", "-v", "-t", "50", "--stacks-from", reader, "--",
         *pivot_root_command(root, app)],
        capture_output=True, text=True, check=False, timeout=2 * WAIT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # THEN its stacks came from Austin, run in its mount namespace, where Austin reads its
    # version (up to 3.14), else from its memory (3.15)
    from_memory = f"(CPython 3.{minor}) from its memory" in result.stderr
    assert from_memory == ((3, minor) > AUSTIN_NEWEST), result.stderr
    # AND each block names the code that blocked, down to the line, and why
    blocks = [r for r in parse_json_lines(result.stdout) if r["type"] == "block"]
    expected = truth(tmp_path / "t.jsonl")
    assert [r["scenario"] for r in expected] == list(CALL_SITES)
    for true_block in expected:
        assert_call_site(matching_block(blocks, true_block), true_block["scenario"])


def test_a_sidecar_attached_from_the_host_reads_stacks_and_task_of_an_app_under_pivot_root(
    tmp_path: Path, cleanup: list[Target | Sidecar]
) -> None:
    # GIVEN a running app under pivot_root (3.11: its maps name a libpython the host
    # does not have, where Austin run on the host finds no interpreter)
    root = rooted(python_root(pyenv_prefix(11)), tmp_path)
    target = Target(tmp_path, "cpu", inside=inside(root))
    cleanup.append(target)
    maps = Path(f"/proc/{target.pid}/maps").read_text()
    libpython = next(line.split()[-1] for line in maps.splitlines() if "libpython" in line)
    assert libpython.startswith(PYTHON_PREFIX), libpython
    assert not Path(libpython).exists()
    assert reach(target.pid).mount_ns is not None
    # WHEN the sidecar on the host attaches to it by PID and the app blocks
    sidecar = Sidecar("-t", "50", str(target.pid))
    cleanup.append(sidecar)
    target.go()
    target.process.wait(timeout=WAIT_S)
    code, records = sidecar.finish()
    # THEN the block has its stack and cause, and the task the app's own memory names
    assert code == 0
    (true_block,) = truth(target.out)
    block = matching_block([r for r in records if r["type"] == "block"], true_block)
    assert_call_site(block, "cpu")
    assert block["task"] is not None, "the context reader found the interpreter's _PyRuntime"


HARDENED_CAPS = ["setpriv", "--bounding-set=-sys_chroot", "--inh-caps=-sys_chroot"]
"""A sidecar without CAP_SYS_CHROOT, as the hardened compose layout runs it: it may read
the app's memory, not enter its mount namespace (where Austin must run)."""


@pytest.mark.parametrize("minor", [11, 12], ids=["3.11", "3.12"])
def test_a_sidecar_that_may_not_enter_the_apps_mount_namespace_reads_its_stacks_from_memory(
    tmp_path: Path, cleanup: list[Target | Sidecar], minor: int
) -> None:
    # GIVEN an app under pivot_root blocking seven known ways, and a sidecar on the host
    # without CAP_SYS_CHROOT attached to it by PID, with the default stack source
    root = rooted(python_root(pyenv_prefix(minor)), tmp_path)
    target = Target(tmp_path, "all", inside=inside(root))
    cleanup.append(target)
    sidecar = subprocess.Popen(
        [*HARDENED_CAPS, *SIDECAR, "--json", "-v", "-t", "50", str(target.pid)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sidecar.stderr is not None
    said = PipeLines(sidecar.stderr)
    said.wait_for("Ctrl-C to stop")
    # WHEN it blocks
    target.go()
    assert target.process.wait(timeout=2 * WAIT_S) == 0
    stdout, rest = sidecar.communicate(timeout=WAIT_S)
    stderr = "\n".join([*said.seen, rest])
    # THEN the sidecar chose its own reader, saying why, and ran no Austin
    assert sidecar.returncode == 0, stderr
    why = "Austin cannot enter its mount namespace without CAP_SYS_CHROOT"
    assert f"(CPython 3.{minor}) from its memory ({why})" in stderr, stderr
    assert "austin -P" not in stderr
    # AND each block names the code that blocked, down to the line (the cause, the
    # kernel's and not the stack reader's, is asserted above)
    blocks = [r for r in parse_json_lines(stdout) if r["type"] == "block"]
    expected = truth(target.out)
    assert [r["scenario"] for r in expected] == list(CALL_SITES)
    for true_block in expected:
        assert_code(matching_block(blocks, true_block), true_block["scenario"])


def test_block_spans_of_an_app_under_pivot_root_are_children_of_its_request_spans(
    tmp_path: Path,
) -> None:
    # GIVEN an app under pivot_root, with OpenTelemetry, whose requests block the loop
    web_python = otel_venv("web-py3.11", pyenv_python(11), WEB_APP_PACKAGES, WEB_APP_MODULES)
    root = rooted(python_root(pyenv_prefix(11), site_packages_of(web_python)), tmp_path)
    app = [python_inside(), f"{APP}/traced_app.py", "--out", f"{SHARED}/t.jsonl"]
    with OtlpReceiver() as receiver:
        env = otlp_env(receiver.http_endpoint, "http/protobuf")
        result = subprocess.run(
            [*SIDECAR, "--json", "-q", "-t", "50", "--", *pivot_root_command(root, app)],
            capture_output=True, text=True, env=env, check=False, timeout=2 * WAIT_S,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        expected = truth(tmp_path / "t.jsonl")
        sampled = [b for b in expected if b["sampled"] is not False]
        spans = receiver.wait_for_spans(
            lambda got: len(blocks_in(got)) >= len(sampled) and len(requests_in(got)) >= 2
        )
    assert len(expected) == 6
    records = [r for r in parse_json_lines(result.stdout) if r["type"] == "block"]
    for true_block in sampled:
        trace_id, span_id = hex_ids(true_block)
        (record,) = [
            r
            for r in records
            if r["start_monotonic_ns"] < true_block["end_ns"]
            and r["end_monotonic_ns"] > true_block["start_ns"]
        ]
        # THEN each block is in the request's trace, a child of the request's span
        assert (record["trace_id"], record["parent_span_id"]) == (trace_id, span_id), true_block
        assert record["call_site"]["function"] == "sleep_in_context", record["call_site"]
        span = span_for(spans, true_block).span
        if trace_id is None:
            assert not span.parent_span_id
        else:
            assert (span.trace_id.hex(), span.parent_span_id.hex()) == (trace_id, span_id)
            assert span_id in {r.span.span_id.hex() for r in requests_in(spans)}


def test_an_app_under_chroot_gets_its_stack_and_task(cleanup: list[Target | Sidecar]) -> None:
    # GIVEN an app started with chroot (our mount namespace, another root)
    chroot = chroot_root(pyenv_prefix(11), TARGETS)
    shared = Path(tempfile.mkdtemp(dir=chroot / "tmp"))
    try:
        chrooted = (
            lambda argv: ["chroot", str(chroot), *argv],
            python_inside(),
            f"{APP}/blocker.py",
            f"/tmp/{shared.name}",  # noqa: S108 - inside the chroot
        )
        env = {"LD_LIBRARY_PATH": f"{PYTHON_PREFIX}/lib"}
        target = Target(shared, "sleep", env=env, inside=chrooted)
        cleanup.append(target)
        # (its maps name our paths, which its /proc/PID/root does not hold)
        maps = Path(f"/proc/{target.pid}/maps").read_text()
        libpython = next(line.split()[-1] for line in maps.splitlines() if "libpython" in line)
        assert libpython.startswith(str(chroot)), libpython
        assert not Path(f"/proc/{target.pid}/root{libpython}").exists()
        sidecar = Sidecar("-t", "50", str(target.pid))
        cleanup.append(sidecar)
        # WHEN it blocks
        target.go()
        target.process.wait(timeout=WAIT_S)
        code, records = sidecar.finish()
        # THEN the block has its stack, and the task read from the app's memory
        assert code == 0
        (true_block,) = truth(target.out)
        block = matching_block([r for r in records if r["type"] == "block"], true_block)
        assert block["call_site"]["function"] == "block_once", block["call_site"]
        assert block["call_site"]["file"] == f"{APP}/blocker.py"
        assert block["task"] is not None, "the context reader found the interpreter's _PyRuntime"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def own_pid_namespace_command(root: Root, argv: list[str]) -> list[str]:
    """``argv`` in ``root``, and in a PID namespace of its own with its own /proc."""
    command = pivot_root_command(replace(root, own_proc=True), argv)
    return ["unshare", "--pid", "--fork", "--kill-child", *command]


def test_austin_dumps_an_app_in_its_own_mount_and_pid_namespaces(tmp_path: Path) -> None:
    # GIVEN an app in its own mount and PID namespaces, blocked in a known function
    root = rooted(python_root(pyenv_prefix(11)), tmp_path)
    fifo = tmp_path / "ready.fifo"
    os.mkfifo(fifo)
    app = [python_inside(), f"{APP}/held.py", "--ready", f"{SHARED}/ready.fifo"]
    holder = subprocess.Popen(
        own_pid_namespace_command(root, app), stdin=subprocess.PIPE, text=True
    )
    try:
        with fifo.open() as ready:
            lines = PipeLines(ready)
            ns_tid = int(lines.wait_for("ready").split()[1])
            pid = app_pid(holder.pid)
            where = reach(pid)
            assert where.pid_ns is not None
            assert where.pid == ns_tid != pid  # the app's own number, not the host's
            assert holder.stdin is not None
            holder.stdin.write("hold\n")
            holder.stdin.flush()
            lines.wait_for("holding")
            # WHEN Austin dumps its threads from the host
            stacks = Austin.find().where(pid)
        # THEN it found the interpreter and names the threads as the app numbers them
        assert ns_tid in stacks, stacks
        assert stacks[ns_tid][-1].function == "hold_the_loop", stacks
        assert stacks[ns_tid][-1].file == f"{APP}/held.py", stacks
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=WAIT_S)


def app_pid(unshare_pid: int) -> int:
    """The host PID of the one child ``unshare --fork`` started (the app, after its execs)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    pytest.fail("unshare started no child")


def test_austin_in_an_apps_mount_namespace_dies_with_the_process_that_started_it(
    tmp_path: Path, cleanup: list[Target | Sidecar]
) -> None:
    # GIVEN a process sampling an app under pivot_root with Austin, in the app's namespace
    root = rooted(python_root(pyenv_prefix(11)), tmp_path)
    target = Target(tmp_path, "sleep", inside=inside(root))
    cleanup.append(target)
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(target.pid)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert starter.stdout is not None
        austin = int(PipeLines(starter.stdout).wait_for("austin").split()[1])
        # (it enters the namespace as it starts: by the wrappers' execs, or before its own)
        theirs = Path(f"/proc/{target.pid}/ns/mnt").stat().st_ino
        deadline = time.monotonic() + WAIT_S
        while Path(f"/proc/{austin}/ns/mnt").stat().st_ino != theirs:
            assert time.monotonic() < deadline, "Austin never entered the app's mount namespace"
            time.sleep(0.01)
        # AND it can be stopped and continued
        os.kill(austin, signal.SIGSTOP)
        wait_state(austin, "T")
        os.kill(austin, signal.SIGCONT)
        # WHEN the process that started it is killed outright
        starter.kill()
        starter.wait(timeout=WAIT_S)
        # THEN Austin goes with it
        wait_state(austin, None, "Z")
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()


def test_a_process_that_may_not_enter_the_apps_namespace_gets_a_clear_error(
    tmp_path: Path, cleanup: list[Target | Sidecar]
) -> None:
    # GIVEN an app under pivot_root, and a process without CAP_SYS_ADMIN
    root = rooted(python_root(pyenv_prefix(11)), tmp_path)
    target = Target(tmp_path, "sleep", inside=inside(root))
    cleanup.append(target)
    no_admin = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]
    # WHEN that process asks Austin for the app's threads
    result = subprocess.run(
        [*no_admin, sys.executable, "-c", WHERE, str(target.pid)],
        capture_output=True, text=True, check=False, timeout=WAIT_S,
    )  # fmt: skip
    # THEN it is told, in one line, what was refused and what it takes
    assert result.returncode == 0, result.stderr
    said = f"failed to dump the threads of {target.pid}: Austin cannot enter the mount namespace"
    assert result.stdout.startswith(said), result.stdout
    assert "CAP_SYS_ADMIN" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1


WHERE = """
import sys
from otel_blocksnoop.stacks.austin import Austin, AustinError
try:
    Austin.find().where(int(sys.argv[1]))
except AustinError as error:
    print(error)
"""


STARTER = """
import sys, time
from otel_blocksnoop.stacks.austin import Austin
from otel_blocksnoop.stacks.memory import AUSTIN_NEWEST
process = Austin.find().stream("-P", "-i", "10ms", pid=int(sys.argv[1]))
print("austin", process.pid, flush=True)
time.sleep(60)
"""


def wait_state(pid: int, *states: str | None) -> None:
    """Until process ``pid`` is in one of ``states`` (None: gone)."""
    deadline = time.monotonic() + WAIT_S
    while process_state(pid) not in states:
        assert time.monotonic() < deadline, f"{pid} is {process_state(pid)}, not {states}"
        time.sleep(0.01)
