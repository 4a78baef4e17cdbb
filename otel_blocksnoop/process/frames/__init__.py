"""Python stacks read from the target's memory, with the offsets its interpreter publishes.

``FrameReader`` (reader.py) is the face; the other modules are its steps.
"""

from otel_blocksnoop.process.frames.reader import MAX_DEPTH, FrameReader

__all__ = ["MAX_DEPTH", "FrameReader"]
