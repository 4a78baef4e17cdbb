"""Ids across PID namespaces: the sidecar's, the app's own, the host's."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_blocksnoop.analysis.enrich import Enricher
from otel_blocksnoop.events import (
    Block,
    BlockEvent,
    Frame,
    NamespacedIds,
    ProcessIdentity,
    ThreadKind,
)
from otel_blocksnoop.export import names
from otel_blocksnoop.export.jsonlines import _block_record
from otel_blocksnoop.export.otel.spans import block_attributes
from otel_blocksnoop.process import pidns
from otel_blocksnoop.process.pidns import NamespaceIds, parse_ns_ids, sidecar_pid_namespace
from otel_blocksnoop.stacks.threads import ThreadClassifier

STATUS = "Name:\tpython3\nTgid:\t4240\nNgid:\t0\nPid:\t4242\nNStgid:\t4240\t1\nNSpid:\t4242\t2\n"
LOOP_STACK = (Frame("BaseEventLoop.run_forever", "/usr/lib/python3.11/asyncio/base_events.py", 1),)
IDLE = (Frame("Thread.run", "/usr/lib/python3.11/threading.py", 982),)


def fake_proc(root: Path, pid: int, threads: dict[int, int], app_pid: int | None) -> Path:
    """A /proc with process ``pid`` whose threads (ours -> the app's) are in a nested namespace.

    ``app_pid`` None: one namespace, the lines list a single id.
    """
    process = root / str(pid)
    process.mkdir(parents=True)
    tgid = f"{pid}\t{app_pid}" if app_pid is not None else str(pid)
    (process / "status").write_text(f"Tgid:\t{pid}\nNStgid:\t{tgid}\n")
    for tid, app_tid in threads.items():
        task = process / "task" / str(tid)
        task.mkdir(parents=True)
        ids = f"{tid}\t{app_tid}" if app_pid is not None else str(tid)
        (task / "status").write_text(f"Pid:\t{tid}\nNStgid:\t{tgid}\nNSpid:\t{ids}\n")
    return root


def test_the_status_lines_list_ids_from_the_outermost_namespace_to_the_app_s() -> None:
    assert parse_ns_ids(STATUS, "NStgid") == (4240, 1)
    assert parse_ns_ids(STATUS, "NSpid") == (4242, 2)
    assert parse_ns_ids("Name:\tpython3\n", "NSpid") == ()  # kernels before 4.1
    assert parse_ns_ids("NSpid:\tx\n", "NSpid") == ()


def test_a_thread_of_a_nested_namespace_maps_to_the_app_s_id_and_back(tmp_path: Path) -> None:
    # GIVEN process 4240 (1 in its own namespace) with threads 4240 and 4242 (1 and 2 there)
    proc = fake_proc(tmp_path, 4240, {4240: 1, 4242: 2}, app_pid=1)
    ids = NamespaceIds(proc)
    # THEN each id is the app's own, and the app's map back to ours
    assert ids.nested(4240)
    assert ids.app_pid(4240) == 1
    assert ids.app_tid(4240, 4242) == 2
    assert ids.sidecar_tids(4240) == {1: 4240, 2: 4242}


def test_in_one_namespace_and_for_threads_gone_the_ids_are_ours(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 300, {300: 300}, app_pid=None)
    ids = NamespaceIds(proc)
    assert not ids.nested(300)
    assert ids.app_pid(300) == 300
    assert ids.app_tid(300, 300) == 300
    assert ids.app_tid(300, 999) == 999  # gone: taken as is
    assert ids.app_pid(12345) == 12345


def test_the_kernel_needs_a_namespace_only_when_proc_is_not_the_host_s(tmp_path: Path) -> None:
    # GIVEN a /proc whose PID 1 runs in the host's PID namespace, then one whose PID 1 does not
    proc = tmp_path / "proc"
    (proc / "1" / "ns").mkdir(parents=True)
    host, other = tmp_path / "host", tmp_path / "other"
    host.write_text("")
    other.write_text("")
    link = proc / "1" / "ns" / "pid"
    link.symlink_to(host)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pidns, "PROC_PID_INIT_INO", host.stat().st_ino)
        # THEN the first needs none: its ids are the kernel's
        assert sidecar_pid_namespace(proc) is None
        link.unlink()
        link.symlink_to(other)
        # THEN the second is named by device and inode, as the kernel's helper takes it
        assert sidecar_pid_namespace(proc) == (other.stat().st_dev, other.stat().st_ino)


class FakeAustin:
    """Answers ``where`` with the app's tids, as Austin does for a containerized app."""

    def __init__(self, stacks: dict[int, tuple[Frame, ...]]) -> None:
        self.stacks = stacks
        self.calls = 0

    def where(self, pid: int) -> dict[int, tuple[Frame, ...]]:
        _ = pid
        self.calls += 1
        return self.stacks


def test_the_classifier_matches_austin_s_namespace_tids_to_ours(tmp_path: Path) -> None:
    # GIVEN an app whose loop thread is 2 in its namespace (4242 to us), its main thread idle
    proc = fake_proc(tmp_path, 4240, {4240: 1, 4242: 2}, app_pid=1)
    austin = FakeAustin({1: IDLE, 2: LOOP_STACK})
    classifier = ThreadClassifier(austin, NamespaceIds(proc))  # type: ignore[arg-type]
    # THEN the loop thread is a loop by our id, and one dump told both threads apart
    assert classifier.kind(4240, 4242) is None  # asked: the dump runs in its own thread
    assert classifier.wait_idle(5.0), "the dump never finished"
    assert classifier.kind(4240, 4242) == ThreadKind.LOOP
    assert classifier.kind(4240, 4240) == ThreadKind.UNKNOWN
    assert austin.calls == 1


def event(pid: int, tid: int, host_pid: int, host_tid: int) -> BlockEvent:
    return BlockEvent(pid, tid, "python3", 1_000, 200_000_000, host_pid=host_pid, host_tid=host_tid)


def enricher_with(proc: Path, pid: int, app_pid: int | None) -> Enricher:
    enricher = Enricher(10_000_000, None)
    enricher._ids = NamespaceIds(proc)  # noqa: SLF001 - a /proc of the test's making
    identity = ProcessIdentity(pid, None, (), None, None, "x", app_pid=app_pid)
    enricher._identities[pid] = identity  # noqa: SLF001
    return enricher


def test_a_block_seen_from_the_host_reports_the_app_s_ids_and_the_host_s_beside(
    tmp_path: Path,
) -> None:
    # GIVEN a sidecar in the host's namespace: our ids are the host's, the app's nested
    proc = fake_proc(tmp_path, 4240, {4240: 1, 4242: 2}, app_pid=1)
    enricher = enricher_with(proc, 4240, app_pid=1)
    # WHEN its block is enriched and exported
    block = enricher.block(event(4240, 4242, 4240, 4242), ThreadKind.LOOP, [])
    attributes = block_attributes(block)
    record = _block_record("block", block)
    # THEN thread.id and process.pid are the app's, the host's ids come beside
    assert block.ids == NamespacedIds(pid=1, tid=2, host_pid=4240, host_tid=4242)
    assert (attributes[names.PROCESS_PID], attributes[names.THREAD_ID]) == (1, 2)
    assert attributes[names.PROCESS_HOST_PID] == 4240
    assert attributes[names.THREAD_HOST_ID] == 4242
    assert (record["pid"], record["tid"], record["host_pid"], record["host_tid"]) == (
        1,
        2,
        4240,
        4242,
    )


def test_a_block_seen_from_the_app_s_namespace_reports_the_host_s_ids_the_kernel_gave(
    tmp_path: Path,
) -> None:
    # GIVEN a sidecar sharing the app's namespace: our ids are the app's, the kernel's differ
    proc = fake_proc(tmp_path, 1, {1: 1, 2: 2}, app_pid=None)
    enricher = enricher_with(proc, 1, app_pid=None)
    # WHEN its block is enriched
    block = enricher.block(event(1, 2, 4240, 4242), ThreadKind.LOOP, [])
    # THEN the same ids as from the host are reported
    assert (block.app_pid, block.app_tid, block.host_ids) == (1, 2, (4240, 4242))


def test_a_block_in_the_host_s_namespace_says_nothing_of_namespaces(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 300, {301: 301}, app_pid=None)
    block = enricher_with(proc, 300, app_pid=None).block(
        event(300, 301, 300, 301), ThreadKind.LOOP, []
    )
    attributes = block_attributes(block)
    assert block.ids is None
    assert (attributes[names.PROCESS_PID], attributes[names.THREAD_ID]) == (300, 301)
    assert names.THREAD_HOST_ID not in attributes
    assert _block_record("block", block)["host_tid"] is None


def test_the_app_s_resource_names_the_pid_the_app_sees() -> None:
    from otel_blocksnoop.export.otel.resource import process_resource  # noqa: PLC0415

    identity = ProcessIdentity(4240, "svc", (), None, None, "x", app_pid=1)
    resource = process_resource(identity, 4240, None)
    assert resource.attributes[names.PROCESS_PID] == 1


def test_block_ids_default_to_the_sidecar_s() -> None:
    block = Block(7, 8, "t", 0, 1, 0, 1, 1)
    assert (block.app_pid, block.app_tid, block.host_ids) == (7, 8, None)


def test_the_kernel_side_is_built_for_the_namespace_the_sidecar_s_proc_shows(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from otel_blocksnoop import cli, session  # noqa: PLC0415

    # GIVEN a sidecar whose /proc is of a PID namespace that is not the host's
    monkeypatch.setattr(session, "sidecar_pid_namespace", lambda: (4, 4026532176))
    config = cli.parse_arguments(["--ebpf"])
    # THEN the run and the printed cflags (--ebpf) name that namespace
    assert session.detector_config(config).pidns == (4, 4026532176)
    cli.run(config)
    assert "-DPIDNS_INO=4026532176ULL" in capsys.readouterr().out


def test_loop_times_name_each_thread_as_the_app_sees_it(tmp_path: Path) -> None:
    from otel_blocksnoop.analysis.flow import BlockFlow  # noqa: PLC0415
    from otel_blocksnoop.events import ThreadSnapshot, ThreadTimes  # noqa: PLC0415
    from otel_blocksnoop.losses import Losses  # noqa: PLC0415
    from tests.unit.test_flow_triggers import Kernel, Loops  # noqa: PLC0415

    # GIVEN the kernel's loop time of our thread 4242, which is 2 in the app's namespace
    proc = fake_proc(tmp_path, 4240, {4240: 1, 4242: 2}, app_pid=1)
    times = ThreadTimes(4240, 4242, 10, 5, 7)

    class Table(Kernel):
        def snapshot(self, min_ns: int, activity: bool = True) -> ThreadSnapshot:
            _ = min_ns, activity
            return ThreadSnapshot((), (times,))

    kernel = Table([], {})
    enricher = enricher_with(proc, 4240, app_pid=1)
    flow = BlockFlow(kernel, enricher, lambda _: None, Losses(), threshold_ns=1, kinds=Loops())
    # WHEN the periodic loop times are taken
    reported = flow.loop_times()
    # THEN the thread carries the app's tid, as its blocks' thread.id does
    assert [(t.pid, t.tid, t.iterations) for t in reported.threads] == [(4240, 2, 10)]
