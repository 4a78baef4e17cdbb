"""One sampler per watched process, continuous or on demand, behind one face.

The analysis asks ``window`` and ``covered_until`` in both modes. On demand
(``on_demand=True``) it also says when to gather: ``begin`` when the kernel
reports a loop thread blocked (a trigger), ``end`` when that block is over;
Austin then samples a process only while one of its threads is blocked. A
continuous pool samples all the time and ``begin``/``end`` change nothing, so
the analysis can call them in either mode.

Threads are named here by the sidecar's ids; Austin names them as the app
sees them (its own PID namespace): each tid is translated on the way in.
"""

from __future__ import annotations

from typing import Protocol

from otel_blocksnoop.events import StackSample
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.process.pidns import NamespaceIds
from otel_blocksnoop.process.target import process_exists
from otel_blocksnoop.stacks.austin import Austin
from otel_blocksnoop.stacks.memory import MemorySampler, StackSources
from otel_blocksnoop.stacks.on_demand import OnDemandSampler
from otel_blocksnoop.stacks.sampler import Sampler


class ProcessSampler(Protocol):
    """Stacks of one process's threads: Austin's (``Sampler``) or from its memory."""

    def start(self) -> None: ...
    def begin(self, tid: int, start_ns: int) -> None: ...
    def end(self, tid: int) -> None: ...
    def window(self, tid: int, start_ns: int, end_ns: int) -> list[StackSample]: ...
    def covered_until(self, tid: int) -> int: ...
    def maintain(self, target_alive: bool) -> float | None: ...
    def stop(self) -> None: ...


class SamplerPool:
    """A sampler per watched process, started on first need, stopped together."""

    def __init__(  # noqa: PLR0913 - Austin, its rate, where losses go, and keyword-only modes
        self,
        austin: Austin,
        interval_us: int,
        losses: Losses | None = None,
        *,
        on_demand: bool = False,
        ids: NamespaceIds | None = None,
        sources: StackSources | None = None,
    ) -> None:
        self.austin = austin
        self._sources = sources
        self._ids = ids if ids is not None else NamespaceIds()
        self.interval_us = interval_us
        self.on_demand = on_demand
        self._losses = losses if losses is not None else Losses()
        self._samplers: dict[int, ProcessSampler] = {}

    def ensure(self, pid: int) -> ProcessSampler:
        """The sampler of ``pid``, started now if it has none (on demand: started, then stopped).

        Austin's, unless its interpreter is one Austin cannot read and our own
        frame reader can (``StackSources``).
        """
        sampler = self._samplers.get(pid)
        if sampler is None:
            reader = self._sources.memory(pid) if self._sources is not None else None
            if reader is not None:
                sampler = MemorySampler(reader, pid, self.interval_us, self._losses)
            else:
                kind = OnDemandSampler if self.on_demand else Sampler
                sampler = kind(self.austin, pid, self.interval_us, self._losses)
            self._samplers[pid] = sampler
            sampler.start()
        return sampler

    def prepare(self, pid: int) -> None:
        """A loop of ``pid`` has started: attach its sampler now, not at its first block."""
        self.ensure(pid)

    def begin(self, pid: int, tid: int, start_ns: int) -> None:
        """Thread ``tid`` of ``pid`` has been blocked since ``start_ns``: gather its stacks."""
        self.ensure(pid).begin(self._ids.app_tid(pid, tid), start_ns)

    def end(self, pid: int, tid: int) -> None:
        """The block of ``tid`` ended: stop gathering when no other block of ``pid`` needs it."""
        sampler = self._samplers.get(pid)
        if sampler is not None:
            sampler.end(self._ids.app_tid(pid, tid))

    def window(self, pid: int, tid: int, start_ns: int, end_ns: int) -> list[StackSample]:
        return self.ensure(pid).window(self._ids.app_tid(pid, tid), start_ns, end_ns)

    def covered_until(self, pid: int, tid: int) -> int:
        return self.ensure(pid).covered_until(self._ids.app_tid(pid, tid))

    def maintain(self) -> int | None:
        """Restart samplers that died; when (CLOCK_MONOTONIC ns) to be called again, if ever."""
        again = [
            at
            for pid, sampler in self._samplers.items()
            if (at := sampler.maintain(target_alive=process_exists(pid))) is not None
        ]
        return int(min(again) * 1e9) if again else None

    def forget(self, pid: int) -> None:
        """``pid`` exited and its blocks are out: its sampler stops and is dropped."""
        sampler = self._samplers.pop(pid, None)
        if sampler is not None:
            sampler.stop()
        if self._sources is not None:
            self._sources.forget(pid)

    def __len__(self) -> int:
        """Samplers held (one per process whose loop has run)."""
        return len(self._samplers)

    def stop(self) -> None:
        for sampler in self._samplers.values():
            sampler.stop()
