"""From what the kernel saw to a block a reader understands.

A ``BlockEvent`` says when a loop thread was out of epoll and what it did
meanwhile; the evidence gathered during the block (stack samples, the reads
of the active span and task) says which code and which request. ``Enricher``
joins them into the ``Block`` every sink receives, with wall-clock times; an
iteration that ran several requests' blocking callbacks becomes one block per
request's share (``segments``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from otel_blocksnoop.analysis import calls, cause, segments
from otel_blocksnoop.analysis.attribution import attribute
from otel_blocksnoop.analysis.clock import WallClock
from otel_blocksnoop.analysis.throttle import bounded
from otel_blocksnoop.bounded import MAX_WATCHED_PROCESSES, BoundedDict
from otel_blocksnoop.events import (
    Block,
    BlockEvent,
    ContextSegment,
    Iteration,
    NamespacedIds,
    ProcessIdentity,
    StackSample,
    ThreadContext,
    ThreadKind,
    Throttling,
)
from otel_blocksnoop.process.identity import read_identity
from otel_blocksnoop.process.pidns import NamespaceIds
from otel_blocksnoop.process.source import source_line
from otel_blocksnoop.process.target import thread_name

log = logging.getLogger(__name__)

MAX_IDENTITIES = MAX_WATCHED_PROCESSES  # watched processes whose identity is kept


class Linker(Protocol):
    """The trace linker, as far as enrichment needs it."""

    def context(self, pid: int, tid: int, start_ns: int, final: bool = True) -> ThreadContext:
        """The block's parent span and task by the reads so far."""

    def owners(
        self,
        pid: int,
        tid: int,
        start_ns: int,
        segments: Sequence[ContextSegment],
        final: bool = True,
    ) -> list[ThreadContext]:
        """Each segment's span and task, by the reads that landed in it."""


Window = Callable[[int, int], list[StackSample]]
"""The stack samples of the block's thread between two instants."""


class Throttle(Protocol):
    """The cgroup throttling watch (``throttle.ThrottleWatch``), as far as enrichment needs it."""

    def throttling(self, event: BlockEvent, final: bool = True) -> Throttling | None:
        """How long a CPU quota held the block's cgroup back, if its stats could be read."""


class Enricher:
    """Joins a kernel event with its evidence; remembers who each watched process is."""

    def __init__(
        self,
        threshold_ns: int,
        linker: Linker | None,
        throttle: Throttle | None = None,
        ids: NamespaceIds | None = None,
    ) -> None:
        self._threshold_ns = threshold_ns
        self._linker = linker
        self._throttle = throttle
        self._clock = WallClock()
        self._identities: BoundedDict[int, ProcessIdentity] = BoundedDict(MAX_IDENTITIES)
        self._ids = ids if ids is not None else NamespaceIds()

    def identity(self, pid: int) -> ProcessIdentity:
        """Who ``pid`` is, read once: early, as a short-lived app may be gone at export."""
        identity = self._identities.get(pid)
        if identity is None:
            identity = self._identities[pid] = read_identity(pid)
        return identity

    def forget(self, pid: int) -> None:
        """``pid`` exited and its blocks are out: who it was, and its threads' ids, go."""
        self._identities.pop(pid, None)
        self._ids.forget(pid)

    @property
    def known(self) -> int:
        """Processes whose identity is held."""
        return len(self._identities)

    def app_tid(self, pid: int, tid: int) -> int:
        """Our thread ``tid`` of ``pid`` as the app sees it (remembered: ask while it lives)."""
        return self._ids.app_tid(pid, tid)

    def namespaced(self, event: BlockEvent) -> NamespacedIds | None:
        """The block's ids as the app and the host see them; None where both are ours."""
        identity = self.identity(event.pid)
        ids = NamespacedIds(
            pid=identity.app_pid or event.pid,
            tid=self._ids.app_tid(event.pid, event.tid),
            host_pid=event.host_pid or event.pid,
            host_tid=event.host_tid or event.tid,
        )
        same = (event.pid, event.tid)
        return None if (ids.pid, ids.tid) == same and not ids.host_differs else ids

    def blocks(self, event: BlockEvent, kind: ThreadKind, window: Window) -> list[Block]:
        """The block of an iteration that ended, or one per request's share of it."""
        if not event.segments or self._linker is None:
            return [self.block(event, kind, window(event.start_ns, event.end_ns))]
        owners = self._linker.owners(event.pid, event.tid, event.start_ns, event.segments)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "block %d/%d at %d: segments %s",
                event.pid,
                event.tid,
                event.start_ns,
                [
                    (
                        f"{s.context or 0:x}",
                        s.start_ns,
                        s.duration_ns,
                        o.span and f"{o.span.span_id:x}",
                    )
                    for s, o in zip(event.segments, owners, strict=True)
                ],
            )
        parts = segments.shares(event.segments, owners, self._threshold_ns)
        if not parts:
            return [self.block(event, kind, window(event.start_ns, event.end_ns), owners=owners)]
        # Each share is a block; the hang reports of the iteration, if any, were whole.
        iteration = Iteration(
            start_ns=event.start_ns,
            end_ns=event.end_ns,
            start_unix_ns=self._clock.to_unix_ns(event.start_ns),
            end_unix_ns=self._clock.to_unix_ns(event.end_ns),
            segments=len(parts),
        )
        whole = self._throttle.throttling(event) if self._throttle is not None else None
        blocks = []
        for index, part in enumerate(parts):
            share = part.segment
            piece = replace(
                event,
                start_ns=share.start_ns,
                end_ns=share.end_ns,
                activity=share.activity,
                segments=(),
            )
            throttled = (
                bounded(whole.throttled_ns, whole.periods, share.duration_ns, share.activity)
                if whole is not None
                else None
            )
            samples = window(share.start_ns, share.end_ns)
            block = self.block(piece, kind, samples, found=part.owner, throttling=throttled)
            blocks.append(replace(block, iteration=iteration, segment=index))
        return blocks

    def block(  # noqa: PLR0913 - past the samples, keyword-only overrides of what it looks up
        self,
        event: BlockEvent,
        kind: ThreadKind,
        samples: list[StackSample],
        *,
        in_progress: bool = False,
        found: ThreadContext | None = None,
        owners: Sequence[ThreadContext] | None = None,
        throttling: Throttling | None = None,
    ) -> Block:
        """One block; ``found``: its owner when known already, else asked of the linker.

        ``owners``: its segments' owners, when asked of the linker already.
        ``throttling`` likewise (a share of an iteration: the iteration's, read once).

        A block kept whole whose contexts are known (a hang report, so far, or
        an iteration with no share big enough to be its own span) is owned by
        the request that held half of it or more, if one did.
        """
        attribution = attribute([sample.frames for sample in samples]) if samples else None
        stack = attribution.stack if attribution else ()
        if throttling is None and self._throttle is not None:
            throttling = self._throttle.throttling(event, final=not in_progress)
        process = self.identity(event.pid)
        gil_possible = not process.free_threaded  # a free-threaded build has no GIL
        why, syscall = cause.classify(event.activity, self._threshold_ns, gil_possible=gil_possible)
        sites = calls.split(
            samples,
            event.start_ns,
            event.end_ns,
            activity=event.activity,
            whole=(why, syscall),
            to_unix=self._clock.to_unix_ns,
            gil_possible=gil_possible,
        )
        if found is None and self._linker is not None:
            key = (event.pid, event.tid, event.start_ns)
            if event.segments:
                if owners is None:
                    owners = self._linker.owners(*key, event.segments, final=not in_progress)
                found = segments.whole_owner(event.segments, owners, event.duration_ns)
            else:
                found = self._linker.context(*key, final=not in_progress)
        ready = found.ready if found else None
        return Block(
            pid=event.pid,
            tid=event.tid,
            thread_name=thread_name(event.pid, event.tid) or event.comm,
            start_ns=event.start_ns,
            end_ns=event.end_ns,
            start_unix_ns=self._clock.to_unix_ns(event.start_ns),
            end_unix_ns=self._clock.to_unix_ns(event.end_ns),
            threshold_ns=self._threshold_ns,
            thread_kind=kind,
            stack=stack,
            source_lines=tuple(source_line(event.pid, f.file, f.line) for f in stack),
            call_site=attribution.call_site if attribution else None,
            samples=attribution.supporting if attribution else 0,
            samples_busy=attribution.busy_samples if attribution else 0,
            cause=why,
            syscall=syscall,
            activity=event.activity,
            throttling=throttling,
            end_reason=event.end_reason,
            in_progress=in_progress,
            process=process,
            parent=found.span if found else None,
            task=found.task if found else None,
            ids=self.namespaced(event),
            delayed_tasks=len(ready.handles) + len(ready.unread) if ready is not None else None,
            delayed=ready.requests if ready is not None else (),
            delayed_unread=len(ready.unread) if ready is not None else 0,
            call_sites=sites.sites,
            call_sites_left_out=sites.left_out,
            unsampled_ns=sites.unsampled_ns if samples else 0,
        )
