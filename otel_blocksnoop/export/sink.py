"""Where records go: one small interface, several destinations, passed in by the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from otel_blocksnoop.events import Record


class Sink(Protocol):
    """A destination for records. Sinks format; they never read the kernel or the target.

    A sink shows the kinds of ``Record`` it has a form for and ignores the others.
    """

    def export(self, record: Record) -> None:
        """Hand over one record; must not hold up the pipeline for long.

        A ``Block`` with ``in_progress`` set is a hang, reported again while it lasts.
        """

    def pending(self) -> dict[str, int]:
        """Records taken but not yet delivered, by what they are; none if written at once.

        Lengths only: a signal handler reads them.
        """

    def drain(self, deadline: float) -> None:
        """Deliver what is buffered by ``deadline`` (``time.monotonic()``); count what is not.

        Whatever the destination does; records taken after this may not be delivered.
        """

    def shutdown(self, deadline: float | None = None) -> None:
        """Deliver what is buffered (by ``deadline``) and release resources; no export after."""
