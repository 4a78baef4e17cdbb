"""``--report FILE``: the run's blocks kept as their JSON lines, and the page written at its end."""

from __future__ import annotations

import logging
from pathlib import Path

from otel_blocksnoop.errors import RecordingError
from otel_blocksnoop.events import Record
from otel_blocksnoop.export.jsonlines import json_record
from otel_blocksnoop.export.report.page import write_report
from otel_blocksnoop.export.report.recording import Recording

log = logging.getLogger(__name__)


class ReportSink:
    """Writes the run's page when it stops.

    It keeps what ``--json`` would write, read back as a recording would be
    (bounded: ``recording.MAX_BLOCKS``), so both ways give the same page.
    """

    def __init__(self, path: Path, source: str) -> None:
        self._path = path
        self._source = source
        self._recording = Recording()
        self._written = False

    def export(self, record: Record) -> None:
        line = json_record(record)
        if line is not None:
            self._recording.add(line)

    def pending(self) -> dict[str, int]:
        return {}

    def drain(self, deadline: float) -> None:
        _ = deadline  # the page is written once, at shutdown

    def shutdown(self, deadline: float | None = None) -> None:
        _ = deadline  # a local file, written in well under a second
        if self._written:
            return
        self._written = True
        recording = self._recording.finish()
        try:
            write_report(recording, self._source, self._path)
        except RecordingError as error:
            log.error("%s", error)  # noqa: TRY400 - one line, as every failure is shown
            return
        log.info("wrote the report to %s (%d blocks)", self._path, len(recording.blocks))
