"""The HTML report: a recording's blocks as a timeline, a flame graph, a table and a histogram."""

from otel_blocksnoop.export.report.page import render, write_report
from otel_blocksnoop.export.report.recording import Recording, read_recording
from otel_blocksnoop.export.report.sink import ReportSink

__all__ = ["Recording", "ReportSink", "read_recording", "render", "write_report"]
