"""Apps in their own PID namespace (``unshare --pid``, no container engine), watched from
the host's namespace and from the app's own: the same blocks, stacks, cause and tids."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import TARGETS
from otel_blocksnoop.errors import ExitCode
from otel_blocksnoop.process.pidns import parse_ns_ids
from tests.helpers import (
    BLOCKER,
    ROOT,
    SIDECAR,
    WAIT_S,
    PipeLines,
    Sidecar,
    matching_block,
    parse_json_lines,
    truth,
)
from tests.integration.conftest import interpreter, otel_venv

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

UNSHARE = shutil.which("unshare")
needs_unshare = pytest.mark.skipif(UNSHARE is None, reason="no unshare(1) here")
# A loop in a thread of its own: its tid is neither the PID nor the same in both namespaces.
APP = [sys.executable, str(BLOCKER), "thread", "--ms", "150", "--linger", "0.3"]


def host_pid_of_child(parent: int) -> int:
    """The one child of ``parent`` (unshare forks the command as PID 1 of the new namespace)."""
    deadline_reads = 2000
    for _ in range(deadline_reads):
        children = (Path("/proc") / str(parent) / "task" / str(parent) / "children").read_text()
        if children.split():
            return int(children.split()[0])
        os.sched_yield()
    pytest.fail(f"unshare {parent} started no child")


def ready_tids(fifo: Path) -> list[int]:
    """The app's "ready <main tid> <loop tids...>": the ids it sees itself."""
    with fifo.open() as ready:
        return list(map(int, ready.readline().split()[1:]))


def assert_reported_as_the_app_sees_it(
    blocks: list[dict[str, Any]], expected: list[dict[str, Any]], app_pid: int, loop_tid: int
) -> list[dict[str, Any]]:
    """Each true block found once, on the ids the app saw, with its stack and cause."""
    assert [r["tid"] for r in expected] == [loop_tid]
    found = []
    for true_block in expected:
        block = matching_block(blocks, true_block)
        assert block["pid"] == app_pid, block
        assert block["call_site"] is not None, block
        assert block["call_site"]["function"].endswith("body"), block["call_site"]
        assert (block["cause"], block["syscall"]) in {
            ("syscall", "clock_nanosleep"),
            ("syscall", "select"),
            ("syscall", "pselect6"),
        }, block
        found.append(block)
    return found


@needs_unshare
def test_an_app_in_its_own_pid_namespace_watched_from_the_host(tmp_path: Path) -> None:
    # GIVEN an app in a PID namespace of its own, its loop in a second thread
    fifo, out = tmp_path / "ready.fifo", tmp_path / "truth.jsonl"
    os.mkfifo(fifo)
    assert UNSHARE is not None
    app = subprocess.Popen(
        [UNSHARE, "--pid", "--fork", "--kill-child", "--mount-proc", *APP,
         "--ready", str(fifo), "--go", "--out", str(out)],
        stdin=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        main_tid, loop_tid = ready_tids(fifo)
        host_pid = host_pid_of_child(app.pid)
        status = (Path("/proc") / str(host_pid) / "status").read_text()
        assert parse_ns_ids(status, "NStgid") == (host_pid, 1)
        assert main_tid == 1
        host_tids = {int(task.name) for task in (Path("/proc") / str(host_pid) / "task").iterdir()}
        # WHEN the sidecar, in the host's namespace, watches it by its host PID
        sidecar = Sidecar("-t", "50", str(host_pid))
        assert app.stdin is not None
        app.stdin.write("go\n")
        app.stdin.close()
        code, records = sidecar.finish()
    finally:
        app.kill()
        app.wait()
    # THEN its block is reported with the stack and cause, on the tid the app saw,
    # with the host's ids beside
    assert code == 0
    blocks = [r for r in records if r["type"] == "block"]
    (block,) = assert_reported_as_the_app_sees_it(blocks, truth(out), 1, loop_tid)
    assert block["host_pid"] == host_pid
    assert block["host_tid"] != loop_tid
    assert block["host_tid"] in host_tids


@needs_unshare
def test_a_sidecar_sharing_the_app_s_pid_namespace(tmp_path: Path) -> None:
    # GIVEN an app and the sidecar started in one new PID namespace (sh is its PID 1,
    # the app PID 2), the app held until the sidecar watches it
    ready, go, out = tmp_path / "ready.fifo", tmp_path / "go.fifo", tmp_path / "truth.jsonl"
    os.mkfifo(ready)
    os.mkfifo(go)
    app = shlex.join([*APP, "--ready", str(ready), "--go", "--out", str(out)])
    sidecar = shlex.join([*SIDECAR, "--json", "-t", "50"])
    script = f'{app} < {shlex.quote(str(go))} & {sidecar} "$!"; wait'
    assert UNSHARE is not None
    both = subprocess.Popen(
        [UNSHARE, "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        with go.open("w") as word:
            main_tid, loop_tid = ready_tids(ready)
            assert both.stderr is not None
            # WHEN the sidecar (in the namespace: it knows the app as PID 2) watches it
            PipeLines(both.stderr).wait_for("Ctrl-C to stop")
            word.write("go\n")
        stdout, stderr = both.communicate(timeout=WAIT_S)
    finally:
        both.kill()
        both.wait()
    # THEN the same block as from the host: stack, cause, the app's tid, and the host's
    # ids, which only the kernel knew
    assert main_tid == 2  # sh is PID 1
    records = parse_json_lines(stdout)
    blocks = [r for r in records if r["type"] == "block"]
    (block,) = assert_reported_as_the_app_sees_it(blocks, truth(out), 2, loop_tid)
    assert block["host_tid"] not in (None, loop_tid), stderr
    assert block["host_pid"] not in (None, 2), stderr


@needs_unshare
def test_an_app_nested_below_a_sidecar_outside_the_host_s_namespace_is_refused(
    tmp_path: Path,
) -> None:
    # GIVEN a sidecar in a PID namespace of its own, and an app in one nested below it
    app = shlex.join([sys.executable, "-c", "import time; time.sleep(30)"])
    sidecar = shlex.join([*SIDECAR, "-t", "50"])
    assert UNSHARE is not None
    script = (
        f"{UNSHARE} --pid --fork {app} & "
        'while [ -z "$(cat /proc/$!/task/$!/children)" ]; do :; done; '
        f"{sidecar} $(cat /proc/$!/task/$!/children)"
    )
    # WHEN the sidecar is pointed at it
    result = subprocess.run(
        [UNSHARE, "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", script],
        capture_output=True, text=True, timeout=WAIT_S, cwd=ROOT, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    # THEN it says why it cannot watch it, in one line, with its own exit code
    assert result.returncode == ExitCode.PID_NAMESPACE, result.stderr
    assert "PID namespace nested in the sidecar's" in result.stderr
    assert "Traceback" not in result.stderr
    _ = tmp_path


@needs_unshare
@pytest.mark.parametrize("sidecar_in", ["host", "app"])
@pytest.mark.parametrize("python", ["sidecar's", "py3.10"])
def test_block_spans_link_to_the_request_active_in_a_namespaced_app(
    tmp_path: Path, sidecar_in: str, python: str
) -> None:
    # GIVEN an app whose requests block the loop in their own spans, launched in a PID
    # namespace of its own: by a sidecar in the host's namespace, or by one inside it
    # (on 3.10 thread states hold no tid: glibc's, found through the TID offset, is the
    # app's too)
    out = tmp_path / "truth.jsonl"
    executable = sys.executable if python == "sidecar's" else otel_venv(python, interpreter(python))
    app = [str(executable), str(TARGETS / "traced_app.py"), "--out", str(out)]
    sidecar = [*SIDECAR, "--json", "-q", "-t", "50", "--"]
    assert UNSHARE is not None
    namespace = [UNSHARE, "--pid", "--fork", "--kill-child", "--mount-proc"]
    command = [*sidecar, *namespace, *app] if sidecar_in == "host" else [*namespace, *sidecar, *app]
    # WHEN the sidecar watches it from its first instruction
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=WAIT_S, cwd=ROOT, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # THEN each block names the request span that was active in it, on the app's tid
    records = [r for r in parse_json_lines(result.stdout) if r["type"] == "block"]
    expected = truth(out)
    assert len(expected) == 6
    for true_block in expected:
        record = matching_block(records, true_block)
        # its loop runs in its main thread: the PID it sees itself is its loop's tid
        assert record["pid"] == true_block["tid"], record
        if sidecar_in == "host":
            assert record["pid"] == 1, record  # PID 1 of its namespace
        ids = (record["trace_id"], record["parent_span_id"])
        if true_block["trace_id"] is None:
            assert ids == (None, None), true_block
        else:
            want = (f"{true_block['trace_id']:032x}", f"{true_block['span_id']:016x}")
            assert ids == want, true_block
        assert record["host_tid"] not in (None, true_block["tid"]), record


@needs_unshare
@pytest.mark.parametrize("sidecar_in", ["host", "app"])
def test_a_hang_in_a_namespaced_app_is_reported_while_it_lasts(
    tmp_path: Path, sidecar_in: str
) -> None:
    # GIVEN an app in a PID namespace of its own whose loop deadlocks for 800 ms
    out = tmp_path / "truth.jsonl"
    app = [*APP[:2], "deadlock", "--ms", "800", "--linger", "0.2", "--out", str(out)]
    sidecar = [*SIDECAR, "--json", "-q", "-t", "50", "--"]
    assert UNSHARE is not None
    namespace = [UNSHARE, "--pid", "--fork", "--kill-child", "--mount-proc"]
    command = [*sidecar, *namespace, *app] if sidecar_in == "host" else [*namespace, *sidecar, *app]
    # WHEN the sidecar watches it
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=WAIT_S, cwd=ROOT, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # THEN the hang is reported while it lasts, on the app's tid, with its stack and cause
    (true_block,) = truth(out)
    records = parse_json_lines(result.stdout)
    hangs = [r for r in records if r["type"] == "hang" and r["tid"] == true_block["tid"]]
    assert hangs, records
    first = hangs[0]
    assert first["end_monotonic_ns"] < true_block["end_ns"]  # seen before it ended
    assert first["call_site"]["function"].endswith("deadlock"), first["call_site"]
    assert (first["cause"], first["syscall"]) == ("syscall", "futex"), first
    assert first["host_tid"] not in (None, true_block["tid"]), first
    block = matching_block([r for r in records if r["type"] == "block"], true_block)
    assert block["host_tid"] == first["host_tid"]
