"""The one bounded mapping: every table the sidecar keeps has a size limit.

A table that outgrows its limit forgets its oldest entry: the one least
recently inserted or updated (``cachetools.FIFOCache``). Tables whose entries are data, not a cache,
pass ``on_drop`` so that what they forget is counted (see ``losses``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from cachetools import FIFOCache

MAX_WATCHED_PROCESSES = 256
"""The most processes watched at once (node mode's ``--max-processes``, at most): every
table kept per watched process (identity, resource, meters, cgroup files, span reader)
holds this many, so none forgets a process that is still watched."""

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(FIFOCache[K, V]):
    """A dict of at most ``maxsize`` entries; inserting past it drops the oldest."""

    def __init__(self, maxsize: int, on_drop: Callable[[K, V], None] | None = None) -> None:
        super().__init__(maxsize)
        self._on_drop = on_drop

    def popitem(self) -> tuple[K, V]:
        key, value = super().popitem()
        if self._on_drop is not None:
            self._on_drop(key, value)
        return key, value
