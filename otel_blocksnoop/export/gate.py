"""The verdict for CI: ``--fail-on MS`` and ``--fail-on-loss`` turn what was seen into an exit code.

A sink like the others: it keeps the blocks at least ``--fail-on`` long and
the end-of-run summary, and at the end prints each kept block with its stack
on stderr (stdout may carry JSON lines) and says which exit code the run gets.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from otel_blocksnoop.errors import ExitCode
from otel_blocksnoop.events import NS_PER_MS, Block, Loss, Record, SessionSummary
from otel_blocksnoop.export.formatting import cause_text, format_traceback, human_duration

GATED_LOSSES = (Loss.KERNEL_EVENTS, Loss.KERNEL_THREADS, Loss.KERNEL_TRIGGERS, Loss.STACK_UNKNOWN)
"""The losses ``--fail-on-loss`` fails on: those that can hide a block (a full ring buffer or
thread table, a block the sidecar was not told to watch) or its call site (a block reported
without a stack). Losses of trace links (``context.*``, ``link.*``, ``kernel.segments``), of
samples that only thin a stack, and of delivery to a collector (``export.*``, after the gate
has seen the block) do not change the verdict."""
MAX_SHOWN = 20
"""Blocks printed with their stacks, the longest first; all are counted."""
PROG = "otel-blocksnoop"


class Gate:
    """Keeps what the verdict needs; ``verdict`` prints it and gives the run's exit code."""

    def __init__(
        self,
        fail_on_ns: int | None,
        fail_on_loss: bool,
        stream: TextIO | None = None,
        counts: Callable[[Block], bool] = lambda _block: True,
    ) -> None:
        self._counts = counts  # whether a block can fail the run: the wiring knows loops
        self._fail_on_ns = fail_on_ns
        self._fail_on_loss = fail_on_loss
        self._stream = stream
        # One entry per loop iteration (its requests' segments are one block), its longest part.
        self._blocks: dict[str, Block] = {}
        self._losses: dict[Loss, int] = {}

    def export(self, record: Record) -> None:
        match record:
            case Block(in_progress=False):
                self._keep(record)
            case SessionSummary():
                self._losses = {what: count for what, count in record.losses if count}
            case _:
                pass  # a hang is judged once it ends (or is reported ended by the stop)

    def _keep(self, block: Block) -> None:
        if self._fail_on_ns is None or block.iteration_ns < self._fail_on_ns:
            return
        if not self._counts(block):
            return
        kept = self._blocks.get(block.iteration_id)
        if kept is None or block.duration_ns > kept.duration_ns:
            self._blocks[block.iteration_id] = block

    @property
    def blocks(self) -> list[Block]:
        """The blocks that fail the run, the longest first."""
        return sorted(self._blocks.values(), key=lambda block: -block.iteration_ns)

    @property
    def lost(self) -> dict[Loss, int]:
        """The losses that fail the run with ``--fail-on-loss``, by kind."""
        if not self._fail_on_loss:
            return {}
        return {what: count for what, count in self._losses.items() if what in GATED_LOSSES}

    def verdict(self, code: int) -> int:
        """The run's exit code: ``code`` (the launched command's) when not 0, else the gate's.

        A failing command says more than the gate (its tests failed): its code
        wins, and what the gate found is printed all the same.
        """
        blocks, lost = self.blocks, self.lost
        gate_code = (
            ExitCode.LOOP_BLOCKED if blocks else ExitCode.EVENTS_LOST if lost else ExitCode.OK
        )
        if gate_code == ExitCode.OK:
            return code
        final = code if code != ExitCode.OK else gate_code
        because = "" if final == gate_code else f", the command's own exit code {code} wins"
        if blocks:
            self._write(
                f"{PROG}: failing (exit {int(final)}{because}): {len(blocks)} blocked loop "
                f"iteration{'s' if len(blocks) != 1 else ''} of at least "
                f"{(self._fail_on_ns or 0) / NS_PER_MS:g} ms (--fail-on)"
            )
            for index, block in enumerate(blocks[:MAX_SHOWN], 1):
                self._write(describe(block, index))
            if len(blocks) > MAX_SHOWN:
                self._write(f"  ... and {len(blocks) - MAX_SHOWN} more")
        if lost:
            listed = ", ".join(f"{what} {count}" for what, count in lost.items())
            self._write(
                f"{PROG}: failing (exit {int(final)}{because}): events were lost, so a block may "
                f"have gone unseen (--fail-on-loss): {listed}"
            )
        return final

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()

    def pending(self) -> dict[str, int]:
        return {}

    def drain(self, deadline: float) -> None:
        _ = deadline  # holds nothing to deliver

    def shutdown(self, deadline: float | None = None) -> None:
        _ = deadline  # the verdict is printed by ``verdict``, once the run's code is known


def describe(block: Block, index: int) -> str:
    """One failing block: how long, where, why, and its stack (most recent call last)."""
    site = block.call_site
    where = f"at {site.function} ({site.file}:{site.line})" if site else "no stack was sampled"
    head = (
        f"  {index}. {human_duration(block.iteration_ns)} blocked, PID {block.app_pid} "
        f"thread {block.app_tid} ({block.thread_name}), cause {cause_text(block)}, {where}"
    )
    if not block.stack:
        return head
    trace = format_traceback(block.stack, block.source_lines)
    return head + "\n" + "\n".join(f"     {line}" for line in trace.splitlines())
