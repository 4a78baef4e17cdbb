"""The context reader against real processes, on every CPython 3.9-3.15 found here.

Each target (harness/targets/otel_target.py) blocks several threads, some inside
OpenTelemetry spans, and says which ids it expects; the reader, from this
process, must find exactly those ids, or None where no span is active.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from harness import TARGETS
from harness.interpreters import MINORS, SID_MINORS, pyenv_python
from harness.interpreters import sid_python as sid_interpreter
from otel_blocksnoop.analysis.trace_link import TraceLinker
from otel_blocksnoop.events import NS_PER_MS, SpanRef, TaskRef, Trigger, TriggerReason
from otel_blocksnoop.process.context import ContextReader, interpreter
from otel_blocksnoop.process.context.interpreter import UnsupportedInterpreterError
from otel_blocksnoop.process.cpython import layout_for
from otel_blocksnoop.process.frames import FrameReader
from otel_blocksnoop.process.frames.runtime import FIRST_VERSION as FRAMES_FIRST_VERSION
from otel_blocksnoop.process.identity import read_identity
from otel_blocksnoop.process.target import inspect_target
from tests.integration.conftest import TargetPython, sid_python
from tests.unit.test_trace_link import Table

pytestmark = pytest.mark.integration

OTEL_TARGET = TARGETS / "otel_target.py"


@contextmanager
def running_target(
    tmp_path: Path, python: TargetPython | Path | str, *args: str
) -> Iterator[dict[str, Any]]:
    """The target, with all its threads blocked, and what it says each one has."""
    fifo = tmp_path / "ready.fifo"
    os.mkfifo(fifo)
    if not isinstance(python, TargetPython):
        python = TargetPython(str(python), str(python))
    process = subprocess.Popen(
        python.run(OTEL_TARGET, "--ready", str(fifo), *args),
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        with fifo.open() as ready:
            info: dict[str, Any] = json.loads(ready.readline())
        assert info["pid"] == process.pid
        yield info
    finally:
        assert process.stdin is not None
        process.stdin.write("stop\n")
        process.stdin.close()
        process.wait(timeout=30)


def expected_task(thread: dict[str, Any]) -> TaskRef:
    awaited_by = thread["awaited_by"]
    return TaskRef(
        name=thread["task"],
        coroutine=thread["coroutine"],
        awaited_by=None if awaited_by is None else tuple(awaited_by),
    )


def expected(thread: dict[str, Any]) -> SpanRef:
    return SpanRef(
        trace_id=thread["trace_id"], span_id=thread["span_id"], trace_flags=thread["trace_flags"]
    )


def test_reads_the_span_each_thread_is_blocked_in(
    otel_python: TargetPython, tmp_path: Path
) -> None:
    # GIVEN a target whose loop thread (inside an asyncio task, with 40 other
    # context variables) and a worker thread are blocked in two different spans
    with running_target(tmp_path, otel_python) as target:
        threads = target["threads"]
        reader = ContextReader(target["pid"])
        assert reader.unsupported is None

        # WHEN the reader looks at each thread from outside
        loop = reader.active_span(threads["loop"]["tid"])
        worker = reader.active_span(threads["worker"]["tid"])

        # THEN each thread gets its own span, ids exact
        assert loop == expected(threads["loop"])
        assert worker == expected(threads["worker"])
        assert loop != worker
        assert loop.sampled
        # AND the loop thread's running task is named, a plain thread has none
        assert reader.thread_context(threads["loop"]["tid"]).task == expected_task(threads["loop"])
        assert reader.thread_context(threads["worker"]["tid"]).task is None


def test_an_unsampled_span_keeps_its_flags(otel_python: TargetPython, tmp_path: Path) -> None:
    # GIVEN a thread blocked in a span its ALWAYS_OFF sampler did not sample
    with running_target(tmp_path, otel_python) as target:
        thread = target["threads"]["unsampled"]

        # WHEN the reader reads it
        span = ContextReader(target["pid"]).active_span(thread["tid"])

        # THEN the ids are there, and the sampled flag is not
        assert span == expected(thread)
        assert not span.sampled


def test_no_span_where_none_is_active(otel_python: TargetPython, tmp_path: Path) -> None:
    # GIVEN a thread whose span has ended and a thread that never used OpenTelemetry
    with running_target(tmp_path, otel_python) as target:
        reader = ContextReader(target["pid"])

        # WHEN the reader reads them, and a TID that is not in the process
        ended = reader.active_span(target["threads"]["ended"]["tid"])
        plain = reader.active_span(target["threads"]["plain"]["tid"])
        stranger = reader.active_span(os.getpid())

        # THEN there is no span, and no error
        assert (ended, plain, stranger) == (None, None, None)


def plain_python(minor: int) -> TargetPython | Path:
    """CPython 3.<minor> with no packages: pyenv's, or sid's own (in its root)."""
    if minor in SID_MINORS:
        venv = sid_python(f"py3.{minor}")
        inside = sid_interpreter(minor)
        assert inside is not None, "a root with its venv has its interpreter"
        return dataclasses.replace(venv, python=inside)
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"no CPython 3.{minor} under pyenv")
    return python


@pytest.mark.parametrize("minor", [*MINORS, *SID_MINORS], ids=lambda m: f"py3.{m}")
def test_a_process_without_opentelemetry(minor: int, tmp_path: Path) -> None:
    # GIVEN a plain interpreter (no opentelemetry importable) blocking its loop
    # (opentelemetry is not imported: --no-otel)
    with running_target(tmp_path, plain_python(minor), "--no-otel") as target:
        reader = ContextReader(target["pid"])

        # WHEN the reader reads its threads
        spans = [reader.active_span(thread["tid"]) for thread in target["threads"].values()]
        loop = target["threads"]["loop"]

        # THEN it is supported, finds no span, and still names the running task
        assert reader.unsupported is None
        assert spans == [None] * len(spans)
        assert reader.thread_context(loop["tid"]).task == expected_task(loop)


def test_spans_of_an_unknown_layout_are_reported_once_and_not_linked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a loop blocked in a span whose class keeps its SpanContext elsewhere
    with running_target(tmp_path, sys.executable, "--odd-span") as target:
        loop = target["threads"]["loop"]
        reader = ContextReader(target["pid"])

        # WHEN the reader reads it again and again
        with caplog.at_level(logging.WARNING, logger="otel_blocksnoop.process.context.otel"):
            found = [reader.thread_context(loop["tid"]) for _ in range(10)]

    # THEN there is no span, one warning says why, and the task is still named
    assert {f.span for f in found} == {None}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "do not keep a SpanContext" in warnings[0]
    assert {f.task for f in found} == {expected_task(loop)}


def test_debian_python_without_pie(tmp_path: Path) -> None:
    # GIVEN Debian's non-PIE /usr/bin/python3 (symbols in the executable itself)
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("no /usr/bin/python3")
    with running_target(tmp_path, python, "--no-otel") as target:
        # WHEN the reader attaches
        reader = ContextReader(target["pid"])

        # THEN it finds the interpreter and reads no span, without error
        assert reader.unsupported is None
        assert reader.active_span(target["threads"]["loop"]["tid"]) is None
        assert reader.reads > 0


def test_not_python_is_unsupported_and_the_linker_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN a process that is not Python
    process = subprocess.Popen(["sleep", "30"])
    try:
        # WHEN a reader is made for it
        reader = ContextReader(process.pid)

        # THEN it says why and reads nothing
        assert reader.unsupported is not None
        assert "not a CPython interpreter" in reader.unsupported
        assert reader.active_span(process.pid) is None
        # AND the linker, whose readers these are, warns once however often it looks
        linker = TraceLinker(Table([]), threshold_ns=100 * NS_PER_MS)
        for _ in range(3):
            linker.follow(Trigger(process.pid, process.pid, 1, 1, TriggerReason.NEW_THREAD))
            linker.poll()
        assert len([r for r in caplog.records if "trace links disabled" in r.message]) == 1
    finally:
        process.kill()
        process.wait()


def test_a_target_that_exits_gives_none(otel_python: TargetPython, tmp_path: Path) -> None:
    # GIVEN a reader made while the target ran
    with running_target(tmp_path, otel_python) as target:
        reader = ContextReader(target["pid"])
        tid = target["threads"]["loop"]["tid"]
        assert reader.active_span(tid) is not None

    # WHEN the target has exited
    span = reader.active_span(tid)

    # THEN the read gives None, and raises nothing
    assert span is None


def test_the_sidecar_interpreter_itself(tmp_path: Path) -> None:
    # GIVEN the sidecar's own interpreter (it has opentelemetry-sdk) as a target
    with running_target(tmp_path, sys.executable) as target:
        threads = target["threads"]

        # WHEN the reader reads the loop thread
        span = ContextReader(target["pid"]).active_span(threads["loop"]["tid"])

        # THEN the ids are exact
        assert span == expected(threads["loop"])


UVLOOP_PYTHONS = ["sidecar", *(f"py3.{m}" for m in SID_MINORS)]
"""The sidecar's own interpreter, and those whose running task is in the thread state."""


@pytest.mark.parametrize("name", UVLOOP_PYTHONS)
def test_a_uvloop_loop(name: str, tmp_path: Path) -> None:
    # GIVEN an interpreter with uvloop (the sidecar's, 3.14, 3.15) running the target on it
    if name == "sidecar":
        pytest.importorskip("uvloop")
    python = sid_python(name) if name != "sidecar" else sys.executable
    with running_target(tmp_path, python, "--uvloop") as target:
        threads = target["threads"]

        # WHEN the reader reads the loop thread, blocked in a task's span
        found = ContextReader(target["pid"]).thread_context(threads["loop"]["tid"])

        # THEN the ids are exact: uvloop runs callbacks in their context like asyncio
        assert found.span == expected(threads["loop"])
        # AND its tasks are asyncio's, named as asyncio names them
        assert found.task == expected_task(threads["loop"])


def test_a_layout_generated_for_another_build_is_refused_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN Debian's 3.15 (built with the JIT), and the layout a build without it would
    # have: its thread state's fields 24 bytes further up, as in 3.14
    python = sid_python("py3.15")
    ours = layout_for(3, 15)
    other = layout_for(3, 14)
    assert ours is not None
    assert other is not None
    moved = dataclasses.replace(
        ours,
        tstate_size=other.tstate_size,
        tstate_thread_id=other.tstate_thread_id,
        tstate_native_thread_id=other.tstate_native_thread_id,
        tstate_context=other.tstate_context,
    )
    monkeypatch.setattr(interpreter, "layout_for", lambda *_: moved)
    with running_target(tmp_path, python) as target:
        # WHEN a reader is made for it
        reader = ContextReader(target["pid"])

        # THEN it says which field the interpreter disagrees with, and reads nothing
        assert reader.unsupported is not None
        assert "tstate_size: 888, expected 832" in reader.unsupported
        assert reader.thread_context(target["threads"]["loop"]["tid"]).span is None
        assert reader.context_address(target["threads"]["loop"]["tid"]) is None


def test_a_context_that_changes_under_the_reader_never_gives_a_wrong_id(
    otel_python: TargetPython, tmp_path: Path
) -> None:
    # GIVEN a thread entering and leaving 8 known spans as fast as it can
    known = {SpanRef(0x1000 + i, 0x2000 + i, 1) for i in range(8)}
    with running_target(tmp_path, otel_python, "--churn") as target:
        reader = ContextReader(target["pid"])
        tid = target["threads"]["churn"]["tid"]

        # WHEN its span is read many times while it changes (most reads see it
        # move and give None: read until a few did not, or a bound)
        spans = []
        for _ in range(20_000):
            spans.append(reader.active_span(tid))
            if len(set(spans) - {None}) >= 2:
                break

        # THEN every answer is one of its spans, or None; never anything else.
        # (How many succeed depends on the machine's load: on a busy one, none
        # may; that reads do succeed is shown by the tests of blocked threads.)
        assert set(spans) - {None} <= known


def test_a_renamed_interpreter_is_one_python_to_every_part_that_asks(
    nameless_python: TargetPython, tmp_path: Path
) -> None:
    # GIVEN a copied interpreter (no libpython mapped) linked again under a name without "python"
    renamed = Path(nameless_python.python).with_name("app-server")
    os.link(nameless_python.python, renamed)
    python = dataclasses.replace(nameless_python, python=str(renamed))
    version = subprocess.run(
        python.command([python.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]),
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert version == "{}.{}".format(*nameless_python.version)
    with running_target(tmp_path, python) as target:
        pid, loop = target["pid"], target["threads"]["loop"]
        # WHEN the target check, the identity and the readers look at it
        checked = inspect_target(pid)
        identity = read_identity(pid)
        reader = ContextReader(pid)
        # THEN it is Python to the target check, of the version it runs to the identity
        assert checked.pid == pid
        assert identity.runtime_version == version
        # AND the context reader reads its spans
        assert reader.unsupported is None
        assert reader.active_span(loop["tid"]) == expected(loop)
        # AND the frame reader reads its stacks from 3.11 on, and says why not before
        if tuple(map(int, version.split("."))) >= FRAMES_FIRST_VERSION:
            assert FrameReader(pid).stack(loop["tid"])
        else:
            with pytest.raises(UnsupportedInterpreterError, match=f"CPython {version}'s frames"):
                FrameReader(pid)
