"""``python -m otel_blocksnoop``."""

from otel_blocksnoop.cli import entry

entry()
