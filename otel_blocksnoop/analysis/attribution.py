"""Which Python code held the loop: a vote over the samples taken during the block.

Only samples whose time falls inside the block's own [start, end] count (not
the nearest ones), and samples that show the loop idle in its poller are set
aside. The most frequent remaining stack wins; its innermost frame of
application code (not the standard library, not the loop's machinery) is
the blocking call site.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from otel_blocksnoop.events import Frame

_STDLIB = re.compile(r"/lib(64)?/python3(\.\d+)?t?/(?!.*(site|dist)-packages/)")
_LOOP_MACHINERY = ("/asyncio/", "/uvloop/", "/selectors.py")


@dataclass(frozen=True, slots=True)
class Attribution:
    """The dominant stack of a block and how well the samples support it."""

    stack: tuple[Frame, ...]  # outermost first
    supporting: int  # samples with exactly this stack
    busy_samples: int  # samples in the window that were not the loop idling
    call_site: Frame | None


def is_library(frame: Frame) -> bool:
    """Standard library, frozen modules, or the event loop's own code."""
    path = frame.file
    if path.startswith("<"):
        return True
    return bool(_STDLIB.search(path)) or any(part in path for part in _LOOP_MACHINERY)


def is_idle(stack: Sequence[Frame]) -> bool:
    """The loop waiting for events: nothing but loop machinery above the app's entry point.

    asyncio idles in ``selectors.select``; uvloop idles in C, so its innermost
    Python frame is the one that started the loop (``asyncio.run``'s runner or
    ``uvloop.run``).
    """
    if not stack:
        return True
    innermost = stack[-1]
    if innermost.file.endswith("/selectors.py"):
        return True
    return innermost.file.endswith(("/asyncio/runners.py", "/uvloop/__init__.py")) or (
        innermost.file.endswith("/asyncio/base_events.py")
        and innermost.function.endswith(("run_forever", "run_until_complete"))
    )


def call_site(stack: Sequence[Frame]) -> Frame | None:
    """Innermost frame of application code, else the innermost frame."""
    for frame in reversed(stack):
        if not is_library(frame):
            return frame
    return stack[-1] if stack else None


def attribute(stacks: Sequence[tuple[Frame, ...]]) -> Attribution | None:
    """Vote over the stacks sampled during one block; None if there were none."""
    busy = [stack for stack in stacks if not is_idle(stack)]
    candidates = busy or list(stacks)
    if not candidates:
        return None
    stack, supporting = Counter(candidates).most_common(1)[0]
    return Attribution(
        stack=stack,
        supporting=supporting,
        busy_samples=len(busy),
        call_site=call_site(stack),
    )
