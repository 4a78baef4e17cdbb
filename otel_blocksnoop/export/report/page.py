"""The report page: one HTML file with its scripts and data inline, so it opens offline.

Jinja2 writes it (escaping every name that came from the app); the vendored
d3 and d3-flame-graph (``vendor/``, with their licenses) draw the timeline,
the flame graph and the histogram in the browser.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Final

import jinja2

from otel_blocksnoop import __version__
from otel_blocksnoop.errors import RecordingError
from otel_blocksnoop.export.formatting import iso_utc
from otel_blocksnoop.export.report import model
from otel_blocksnoop.export.report.recording import Recording

VENDORED: Final = ("d3.v7.9.0.min.js", "d3-flamegraph.v5.0.0.umd.min.js")


def _vendored(name: str) -> str:
    return resources.files(__package__).joinpath("vendor", name).read_text(encoding="utf-8")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(recording: Recording, source: str) -> str:
    """The page for ``recording``; ``source`` names where it came from, in its title."""
    blocks = recording.blocks
    summary = recording.summary or {}
    lanes = sorted({model.lane_name(block) for block in blocks})
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            source=source,
            version=__version__,
            generated=iso_utc(time.time_ns()),
            blocks=model.iterations(blocks),
            segments=len(blocks),
            left_out=recording.left_out,
            blocked_ms=round(sum(block.duration_ms for block in blocks), 1),
            longest_ms=round(max((block.duration_ms for block in blocks), default=0.0), 1),
            threads=len(lanes),
            threshold_ms=recording.threshold_ms,
            lost=summary.get("lost_events"),
            call_sites=model.call_site_rows(blocks),
            data={
                "timeline": model.timeline(blocks),
                "timeline_total": len(blocks),
                "lanes": lanes,
                "flame": model.flame_tree(blocks),
                "histogram": [
                    {"label": b.label, "count": b.count} for b in model.histogram(blocks)
                ],
            },
            scripts=[_vendored(name) for name in VENDORED],
        )
    )


def write_report(recording: Recording, source: str, path: Path) -> None:
    """Write the page to ``path`` (through a temporary file: never half a page)."""
    page = render(recording, source)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(page, encoding="utf-8")
        partial.replace(path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        msg = f"failed to write report {path}: {error.strerror or error}"
        raise RecordingError(msg, hint="check the directory exists and is writable") from None
