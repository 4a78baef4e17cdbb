"""A recording (the JSON lines ``--json`` writes) read back into the blocks a report shows.

The report reads the JSON contract, not ``events`` records: a recording made
yesterday, on another machine, or by an older version is as good as a live run.
Unknown record types and fields are ignored; a line that is not a JSON object,
or a block without its times, is an error naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from otel_blocksnoop.errors import RecordingError

MAX_BLOCKS: Final = 50_000
"""Blocks a report holds (the first ones); past it they are counted and the page says so.

A day of a busy service can record millions: the page would not open, and a
``--report`` run would hold them all in memory."""


@dataclass(frozen=True, slots=True)
class CodeFrame:
    function: str
    file: str
    line: int

    @property
    def label(self) -> str:
        return f"{self.function} ({self.file}:{self.line})"


@dataclass(frozen=True, slots=True)
class RecordedCallSite:
    """One call site that held a block's loop: where, for how long, and why (if known)."""

    frame: CodeFrame
    share_ms: float
    cause: str
    syscall: str | None

    @property
    def cause_text(self) -> str:
        return f"{self.syscall}()" if self.cause == "syscall" and self.syscall else self.cause


@dataclass(frozen=True, slots=True)
class RecordedBlock:
    """One ``block`` (or a last ``hang``) line: what the report draws of it."""

    pid: int
    tid: int
    thread_name: str
    start_unix_ns: int
    end_unix_ns: int
    duration_ms: float
    cause: str
    syscall: str | None
    call_site: CodeFrame | None
    stack: tuple[CodeFrame, ...]  # outermost first
    task: str | None
    trace_id: str | None
    delayed_tasks: int | None  # ready callbacks that waited on it (None: not known)
    delayed_requests: int  # the requests of those whose span was read
    iteration_id: str
    iteration_ms: float  # the whole loop iteration (this block, unless it is a segment)
    in_progress: bool  # the last report of a block still going on when the recording ended
    call_sites: tuple[RecordedCallSite, ...] = ()  # every call site that held it, in order

    @property
    def cause_text(self) -> str:
        """``cpu``, ``gil``, ``unknown``, or the syscall it slept in, as ``wait4()``."""
        return f"{self.syscall}()" if self.cause == "syscall" and self.syscall else self.cause


@dataclass(slots=True)
class Recording:
    """The blocks of a recording, in the order they ended, and its closing summary if any."""

    blocks: list[RecordedBlock] = field(default_factory=list)
    summary: Mapping[str, Any] | None = None
    left_out: int = 0  # blocks past MAX_BLOCKS
    threshold_ms: float | None = None
    _hangs: dict[tuple[int, int, int], RecordedBlock] = field(default_factory=dict)
    # One object per distinct stack: a run's blocks share a few stacks, and a
    # --report run holds up to MAX_BLOCKS of them.
    _stacks: dict[tuple[CodeFrame, ...], tuple[CodeFrame, ...]] = field(default_factory=dict)

    def add(self, record: Mapping[str, Any], where: str = "a record") -> None:
        """Take one JSON object; a block replaces the hang reports of the same block."""
        kind = record.get("type")
        if kind == "summary":
            self.summary = record
            return
        if kind not in ("block", "hang"):
            return  # stats lines, and types a later version may add
        block = _block(record, where, in_progress=kind == "hang")
        if len(self._stacks) < MAX_BLOCKS:
            block = replace(block, stack=self._stacks.setdefault(block.stack, block.stack))
        key = (block.pid, block.tid, _int(record, "start_monotonic_ns", where, block.start_unix_ns))
        if self.threshold_ms is None and isinstance(record.get("threshold_ms"), int | float):
            self.threshold_ms = float(record["threshold_ms"])
        if block.in_progress:
            self._hangs[key] = block  # the latest report of it: the longest so far
            return
        self._hangs.pop(key, None)
        self._keep(block)

    def finish(self) -> Recording:
        """Blocks still going on when the recording ended are shown as they were last seen."""
        for block in self._hangs.values():
            self._keep(block)
        self._hangs.clear()
        return self

    def _keep(self, block: RecordedBlock) -> None:
        if len(self.blocks) >= MAX_BLOCKS:
            self.left_out += 1
        else:
            self.blocks.append(block)


def read_recording(lines: Iterable[str], name: str) -> Recording:
    """Every line of a recording; ``name`` is how errors call it."""
    recording = Recording()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            msg = f"failed to read {where}: not JSON ({_preview(line)})"
            raise RecordingError(msg) from None
        if not isinstance(record, dict):
            msg = f"failed to read {where}: not a JSON object ({_preview(line)})"
            raise RecordingError(msg)
        recording.add(record, where)
    return recording.finish()


def _preview(line: str, limit: int = 40) -> str:
    text = line.strip()
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _int(record: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None and default is not None:
            return default
        msg = f"failed to read {where}: its {key!r} is not a whole number ({value!r})"
        raise RecordingError(msg)
    return value


def _text(record: Mapping[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) else None


def _frame(value: object) -> CodeFrame | None:
    if not isinstance(value, dict):
        return None
    function, file, line = value.get("function"), value.get("file"), value.get("line")
    if not isinstance(function, str) or not isinstance(file, str):
        return None
    return CodeFrame(function, file, line if isinstance(line, int) else 0)


def _block(record: Mapping[str, Any], where: str, in_progress: bool) -> RecordedBlock:
    start = _int(record, "start_unix_ns", where)
    end = _int(record, "end_unix_ns", where)
    if end < start:
        msg = f"failed to read {where}: the block ends before it starts"
        raise RecordingError(msg)
    pid, tid = _int(record, "pid", where), _int(record, "tid", where)
    duration_ms = record.get("duration_ms")
    if not isinstance(duration_ms, int | float) or isinstance(duration_ms, bool):
        duration_ms = (end - start) / 1e6
    iteration = record.get("iteration")
    iteration = iteration if isinstance(iteration, dict) else {}
    iteration_ms = iteration.get("duration_ms")
    stack = record.get("stack")
    delayed_tasks, delayed = record.get("delayed_tasks"), record.get("delayed")
    frames = tuple(
        frame for frame in map(_frame, stack if isinstance(stack, list) else []) if frame
    )
    return RecordedBlock(
        pid=pid,
        tid=tid,
        thread_name=_text(record, "thread_name") or "",
        start_unix_ns=start,
        end_unix_ns=end,
        duration_ms=float(duration_ms),
        cause=_text(record, "cause") or "unknown",
        syscall=_text(record, "syscall"),
        call_site=_frame(record.get("call_site")),
        stack=frames,
        task=_text(record, "task"),
        trace_id=_text(record, "trace_id"),
        delayed_tasks=delayed_tasks if isinstance(delayed_tasks, int) else None,
        delayed_requests=len(delayed) if isinstance(delayed, list) else 0,
        iteration_id=_text(iteration, "id") or f"{pid:x}-{tid:x}-{start:x}",
        iteration_ms=float(iteration_ms)
        if isinstance(iteration_ms, int | float) and not isinstance(iteration_ms, bool)
        else float(duration_ms),
        in_progress=in_progress,
        call_sites=_call_sites(record.get("call_sites")),
    )


def _call_sites(value: object) -> tuple[RecordedCallSite, ...]:
    """The block's call sites, those a recording gives whole (older ones give none)."""
    found = []
    for item in value if isinstance(value, list) else []:
        frame = _frame(item)
        share = item.get("share_ms") if frame else None
        if frame is None or not isinstance(share, int | float) or isinstance(share, bool):
            continue
        cause = item.get("cause")
        syscall = item.get("syscall")
        found.append(
            RecordedCallSite(
                frame,
                float(share),
                cause if isinstance(cause, str) else "unknown",
                syscall if isinstance(syscall, str) else None,
            )
        )
    return tuple(found)
