"""Free-threaded CPython builds (3.13t, 3.14t) are refused with the reason, never misread.

Their objects carry a longer header (thread id, split reference counts)
and the context reader's layouts (trace links, task names) are generated for
no such build, so it refuses them before reading anything. The frame reader
reads a 3.14t's stacks with the offsets it publishes (tests/unit/test_frame_reader.py
for what it refuses). Such a process has no GIL, so no block of it is said to
wait for one. Here on images that say they are such builds;
tests/integration/test_free_threaded.py watches a real one.
"""

from __future__ import annotations

import os

import pytest

from otel_blocksnoop.analysis.enrich import Enricher
from otel_blocksnoop.events import (
    NS_PER_MS,
    Activity,
    BlockEvent,
    Cause,
    ProcessIdentity,
    Sleep,
    ThreadKind,
)
from otel_blocksnoop.process import identity as process_identity
from otel_blocksnoop.process.context import ContextReader
from otel_blocksnoop.process.context import interpreter as context_interpreter
from otel_blocksnoop.process.context.interpreter import Image

FREE_THREADED = [
    Image("/usr/bin/python3.14t", (3, 14), free_threaded=True, mappings=[]),
    Image("/usr/lib/libpython3.13t.so.1.0", (3, 13), free_threaded=True, mappings=[]),
]


@pytest.mark.parametrize("image", FREE_THREADED, ids=lambda i: i.path)
def test_the_context_reader_refuses_a_free_threaded_build_saying_so(
    image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a process whose interpreter is a free-threaded build
    monkeypatch.setattr(context_interpreter, "interpreter_image", lambda _pid: image)
    # WHEN a context reader is made for it
    reader = ContextReader(os.getpid())
    # THEN it is unsupported, says why, and reads nothing
    assert reader.unsupported == f"{image.path} is a free-threaded build"
    assert reader.thread_context(os.getpid()).span is None
    assert reader.reads == 0


@pytest.mark.parametrize("image", FREE_THREADED, ids=lambda i: i.path)
def test_a_process_identity_says_its_build_is_free_threaded(
    image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process_identity, "interpreter_image", lambda _pid: image)
    found = process_identity.read_identity(os.getpid())
    assert (found.runtime_version, found.free_threaded) == (".".join(map(str, image.version)), True)


# What the GIL looks like to the kernel: 56 short futex waits while a sibling ran 199 ms.
GIL_SHAPED = Activity(
    on_cpu_ns=int(11.5 * NS_PER_MS),
    runq_ns=8 * NS_PER_MS,
    sleep_ns=int(189.5 * NS_PER_MS),
    sleeps=(Sleep("futex", int(189.5 * NS_PER_MS), 56),),
    other_sleep_ns=0,
    sibling_cpu_ns=199 * NS_PER_MS,
)


@pytest.mark.parametrize(
    ("free_threaded", "cause"),
    [
        (False, (Cause.GIL, None)),
        (None, (Cause.GIL, None)),
        (True, (Cause.SYSCALL, "futex")),
    ],
    ids=["with-gil", "build-unknown", "free-threaded"],
)
def test_a_block_of_gil_shaped_waits_is_a_lock_in_a_free_threaded_process(
    free_threaded: bool | None,
    cause: tuple[Cause, str | None],
) -> None:
    # GIVEN a process of a known (or unknown) build whose loop waited as for the GIL
    enricher = Enricher(10 * NS_PER_MS, None)
    who = ProcessIdentity(4242, None, (), None, "3.14", "x", free_threaded=free_threaded)
    enricher._identities[4242] = who  # noqa: SLF001 - the identity, as read from /proc
    event = BlockEvent(4242, 4243, "python3.14t", 0, 209 * NS_PER_MS, activity=GIL_SHAPED)
    # WHEN the block is enriched
    block = enricher.block(event, ThreadKind.LOOP, [])
    # THEN a free-threaded process never waited for a GIL: its wait is a lock's (futex)
    assert (block.cause, block.syscall) == cause
