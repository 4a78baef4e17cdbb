"""Reduced privileges and a read-only filesystem, for real: doctor's verdict and a run agree.

Each case runs ``otel-blocksnoop doctor PID`` and then the sidecar itself on
the same PID of a real blocking app (harness/targets/blocker.py), with the
privileges cut by setpriv, or in a mount namespace where every filesystem
is read-only: when doctor says ready, the run reports every block with its
stack and cause; when it says a run stops, the run stops with the very line
and exit code of doctor's verdict.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_blocksnoop.errors import ExitCode
from tests.helpers import (
    BLOCKER,
    ROOT,
    RUN_TIMEOUT_S,
    WAIT_S,
    PipeLines,
    Target,
    matching_block,
    parse_json_lines,
    truth,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

AUSTIN = Path(sys.prefix) / "bin" / "austin"
NOBODY = 65534


def as_user(uid: int, *caps: str) -> list[str]:
    """Run as ``uid`` holding only ``caps`` (e.g. ``bpf``), passed on to what it runs."""
    held = ",".join(f"+{cap}" for cap in caps)
    return [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        f"--inh-caps=-all,{held}", f"--ambient-caps={held}", "--",
    ]  # fmt: skip


def as_root_with(*caps: str) -> list[str]:
    """Run as uid 0 holding only ``caps``: the bounding set is all root gets at exec."""
    held = ",".join(f"+{cap}" for cap in caps)
    return ["setpriv", "--inh-caps=-all", f"--bounding-set=-all,{held}", "--"]


def as_root_without(*caps: str) -> list[str]:
    dropped = ",".join(f"-{cap}" for cap in caps)
    return ["setpriv", "--inh-caps=-all", f"--bounding-set={dropped}", "--"]


# Filesystems that are not storage: left as they are in the read-only namespace.
NOT_STORAGE = {
    "proc", "sysfs", "tracefs", "debugfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "bpf",
    "securityfs", "mqueue", "pstore", "configfs", "fusectl", "hugetlbfs", "binfmt_misc",
    "autofs", "nsfs", "efivarfs",
}  # fmt: skip


def read_only_namespace() -> list[str]:
    """Run in a private mount namespace where every storage filesystem is read-only.

    The namespace has its own copies of the mounts, so remounting them there
    leaves the host's alone. It fails (exit 99) if /tmp or this checkout can
    still be written there.
    """
    remounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, options, *_ = line.split()
        point = point.encode().decode("unicode_escape")
        if fstype not in NOT_STORAGE and "rw" in options.split(","):
            remounts.append(f"mount -o remount,bind,ro '{point}'")
    writable_places = (tempfile.gettempdir(), "/var/tmp", ROOT)  # noqa: S108 - only probed
    probes = " ".join(f"'{path}/.rw-probe'" for path in writable_places)
    script = (
        f"{' && '.join(remounts)} && "
        f'for f in {probes}; do if touch "$f" 2>/dev/null; then rm -f "$f"; exit 99; fi; done'
        ' && exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


@pytest.fixture(scope="module")
def nobody_python() -> Iterator[list[str]]:
    """The sidecar's command for a user who may not enter /root, where pyenv keeps Python.

    A venv of the system's Python 3.11 that sees this checkout's venv packages:
    the sidecar, its compiler process and a launch's holder all run it.
    """
    base = Path(tempfile.mkdtemp(prefix="blocksnoop-nobody-"))
    base.chmod(0o755)
    venv = base / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths()["purelib"])
    (venv / "lib" / "python3.11" / "site-packages" / "sidecar.pth").write_text(
        f"import site; site.addsitedir({str(site)!r})\n"
    )
    yield [str(venv / "bin" / "python"), "-m", "otel_blocksnoop"]
    shutil.rmtree(base)


SIDECAR_ENV = {"AUSTINPATH": str(AUSTIN), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def doctor(prefix: list[str], sidecar: list[str], pid: int) -> tuple[int, str]:
    """Doctor's exit code and verdict line."""
    result = subprocess.run(
        [*prefix, *sidecar, "doctor", str(pid)],
        capture_output=True, text=True, env=SIDECAR_ENV, check=False, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    verdicts = [line for line in result.stdout.splitlines() if line.startswith("verdict: ")]
    assert len(verdicts) == 1, (result.stdout, result.stderr)
    return result.returncode, verdicts[0]


def run_refused(prefix: list[str], sidecar: list[str], pid: int) -> tuple[int, str]:
    """A run that is expected to stop at start: its exit code and its one line."""
    result = subprocess.run(
        [*prefix, *sidecar, "-t", "50", str(pid)],
        capture_output=True, text=True, env=SIDECAR_ENV, check=False, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.returncode, lines[0]


def watch(prefix: list[str], sidecar: list[str], target: Target) -> tuple[list[Any], str]:
    """Attach to ``target``, let it block seven ways and exit: every block, and stderr."""
    process = subprocess.Popen(
        [*prefix, *sidecar, "--json", "-t", "50", str(target.pid)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=SIDECAR_ENV,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        stderr = PipeLines(process.stderr)
        stderr.wait_for("Ctrl-C to stop")
        target.go()
        target.process.wait(timeout=WAIT_S)
        stdout, rest = process.communicate(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, rest
    text = "\n".join([*stderr.seen, rest])
    return [r for r in parse_json_lines(stdout) if r["type"] == "block"], text


def assert_every_block_explained(target: Target, blocks: list[Any], stderr: str) -> None:
    """Each block the app timed, found with the code that blocked and a cause."""
    expected = truth(target.out)
    assert len(expected) == 7
    for true_block in expected:
        block = matching_block(blocks, true_block)
        assert block["call_site"] is not None, (true_block["scenario"], block)
        assert block["cause"] in {"cpu", "syscall", "gil"}, (true_block["scenario"], block)
    # Nothing degraded: no "without stacks", "without their cause", ...
    assert " without " not in stderr, stderr
    assert "Traceback" not in stderr


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    app = Target(tmp_path, "all")
    yield app
    app.stop()


def test_a_user_with_bpf_perfmon_and_ptrace_is_refused_tracefs_by_doctor_and_run(
    target: Target, nobody_python: list[str]
) -> None:
    # GIVEN a user other than root with CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE,
    # and tracefs mounted as it is by default (mode 0700, owned by root)
    prefix = as_user(NOBODY, "bpf", "perfmon", "sys_ptrace")
    # WHEN doctor checks the app's PID, then a run tries to watch it
    doctor_code, verdict = doctor(prefix, nobody_python, target.pid)
    run_code, line = run_refused(prefix, nobody_python, target.pid)
    # THEN both stop at tracefs, not readable (not "not mounted"), with the same line
    assert doctor_code == run_code == ExitCode.NO_PRIVILEGES
    assert verdict.endswith(line)
    assert "failed to read tracefs at /sys/kernel/tracing: permission denied" in line
    assert "CAP_DAC_READ_SEARCH" in line


def test_a_user_with_the_least_privilege_is_ready_and_watches_an_app(
    target: Target, nobody_python: list[str]
) -> None:
    # GIVEN a user other than root with the least privilege measured to work here
    prefix = as_user(NOBODY, "bpf", "perfmon", "sys_ptrace", "dac_read_search")
    # WHEN doctor checks the app's PID, then a run watches it
    doctor_code, verdict = doctor(prefix, nobody_python, target.pid)
    assert (doctor_code, verdict) == (0, f"verdict: ready to watch PID {target.pid}")
    blocks, stderr = watch(prefix, nobody_python, target)
    # THEN every block is reported with its stack and cause
    assert_every_block_explained(target, blocks, stderr)


@pytest.mark.parametrize(
    "cap",
    ["bpf", "perfmon", "sys_ptrace", "dac_read_search"],
)
def test_a_user_without_one_of_the_least_privileges_is_refused_alike(
    target: Target, nobody_python: list[str], cap: str
) -> None:
    # GIVEN a user other than root lacking one of the four
    held = [c for c in ("bpf", "perfmon", "sys_ptrace", "dac_read_search") if c != cap]
    prefix = as_user(NOBODY, *held)
    # WHEN doctor checks the app's PID, then a run tries to watch it
    doctor_code, verdict = doctor(prefix, nobody_python, target.pid)
    run_code, line = run_refused(prefix, nobody_python, target.pid)
    # THEN both refuse, with the same line
    assert doctor_code == run_code == ExitCode.NO_PRIVILEGES
    assert verdict.endswith(line)


@pytest.mark.parametrize(
    "caps",
    [("sys_admin", "sys_ptrace"), ("bpf", "perfmon", "sys_ptrace")],
    ids=["sys_admin+sys_ptrace", "bpf+perfmon+sys_ptrace"],
)
def test_root_with_only_a_few_capabilities_is_ready_and_watches_an_app(
    target: Target, caps: tuple[str, ...]
) -> None:
    # GIVEN uid 0 with no capability but CAP_SYS_ADMIN and CAP_SYS_PTRACE (what
    # Docker 20.10 can grant), or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE
    prefix = as_root_with(*caps)
    sidecar = [sys.executable, "-m", "otel_blocksnoop"]
    # WHEN doctor checks the app's PID, then a run watches it
    doctor_code, verdict = doctor(prefix, sidecar, target.pid)
    assert (doctor_code, verdict) == (0, f"verdict: ready to watch PID {target.pid}")
    blocks, stderr = watch(prefix, sidecar, target)
    # THEN every block is reported with its stack and cause
    assert_every_block_explained(target, blocks, stderr)


def test_root_without_sys_ptrace_is_refused_the_app_by_doctor_and_run(target: Target) -> None:
    # GIVEN uid 0 with every capability but CAP_SYS_PTRACE, and an app run by root
    # with all of them
    prefix = as_root_without("sys_ptrace")
    sidecar = [sys.executable, "-m", "otel_blocksnoop"]
    # WHEN doctor checks the app's PID, then a run tries to watch it
    doctor_code, verdict = doctor(prefix, sidecar, target.pid)
    run_code, line = run_refused(prefix, sidecar, target.pid)
    # THEN both refuse it (not "privileges ok", then exit 5), with the same line
    assert doctor_code == run_code == ExitCode.NO_PRIVILEGES
    assert verdict.endswith(line)
    assert f"failed to inspect process {target.pid}: permission denied" in line
    assert "CAP_SYS_PTRACE" in line


def test_a_read_only_filesystem_is_enough_to_watch_an_app(target: Target) -> None:
    # GIVEN a mount namespace where /, /tmp and every other filesystem are read-only
    prefix = read_only_namespace()
    sidecar = [sys.executable, "-m", "otel_blocksnoop"]
    # WHEN doctor checks the app's PID, then a run there watches it
    doctor_code, verdict = doctor(prefix, sidecar, target.pid)
    assert (doctor_code, verdict) == (0, f"verdict: ready to watch PID {target.pid}")
    blocks, stderr = watch(prefix, sidecar, target)
    # THEN it needs to write nothing: every block is reported with its stack and cause
    assert_every_block_explained(target, blocks, stderr)


def test_root_without_sys_ptrace_is_ready_to_launch_and_watches_what_it_launched(
    tmp_path: Path,
) -> None:
    # GIVEN uid 0 with every capability but CAP_SYS_PTRACE
    prefix = as_root_without("sys_ptrace")
    sidecar = [sys.executable, "-m", "otel_blocksnoop"]
    # WHEN doctor checks without a PID, then a run launches an app
    result = subprocess.run(
        [*prefix, *sidecar, "doctor"],
        capture_output=True, text=True, env=SIDECAR_ENV, check=False, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    out = tmp_path / "truth.jsonl"
    app = [sys.executable, str(BLOCKER), "all", "--out", str(out)]
    run = subprocess.run(
        [*prefix, *sidecar, "--json", "-t", "50", "--", *app],
        capture_output=True, text=True, env=SIDECAR_ENV, check=False, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    # THEN doctor says a launch works (attaching is for `doctor PID` to tell), and it does:
    # what it launched has its own credentials, which it may read
    assert result.returncode == 0, result.stdout
    assert "verdict: ready to launch a command (`doctor PID` checks" in result.stdout
    assert "[warning] ptrace          no CAP_SYS_PTRACE" in result.stdout
    assert run.returncode == 0, run.stderr
    blocks = [r for r in parse_json_lines(run.stdout) if r["type"] == "block"]
    assert len(truth(out)) == 7
    for true_block in truth(out):
        block = matching_block(blocks, true_block)
        assert block["call_site"] is not None, (true_block["scenario"], block)
