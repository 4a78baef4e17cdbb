"""What the app is running, read from its memory: the active OpenTelemetry span and asyncio task.

``ContextReader`` (reader.py) is the face; the other modules are its steps.
"""

from otel_blocksnoop.process.context.reader import NOTHING, ContextReader

__all__ = ["NOTHING", "ContextReader"]
