"""The current OpenTelemetry span among a context's variables, read from outside.

OpenTelemetry Python keeps the current ``Context`` (a dict subclass) in a
``ContextVar`` named ``current_context``; the span sits under the key
``current-span-<uuid>``, and its ids in the span's ``_context`` attribute, a
SpanContext tuple (trace_id, span_id, is_remote, trace_flags, ...).
"""

from __future__ import annotations

import logging

from otel_blocksnoop.events import SpanRef
from otel_blocksnoop.process.context.hamt import HAMT_TYPE, HamtReader
from otel_blocksnoop.process.context.objects import ObjectReader

log = logging.getLogger(__name__)

CONTEXT_VAR_NAME = "current_context"
"""The name OpenTelemetry gives its ContextVar (opentelemetry.context.contextvars_context)."""

SPAN_KEY_PREFIX = "current-span-"
"""The start of the Context key the current span is stored under."""

SPAN_CONTEXT_ATTRIBUTE = "_context"
"""The span attribute holding its SpanContext (SDK spans and NonRecordingSpan)."""

UNKNOWN_SPANS_WARNING = 3
"""Spans of a shape not understood before the user is told (one could be a race)."""

_CONTEXT_VAR_TYPES = frozenset({"ContextVar", "_contextvars.ContextVar"})


class CurrentSpans:
    """Finds the current span in a context's variables, through one process's ``ObjectReader``."""

    def __init__(self, objects: ObjectReader, hamt: HamtReader) -> None:
        self._objects = objects
        self._hamt = hamt
        self._var: int | None = None
        self.unknown_spans = 0
        """Current spans found whose SpanContext could not be (an unknown OpenTelemetry)."""

    def span_in(self, variables: int) -> SpanRef | None:
        """The current span in the HAMT of a context's variables, or None."""
        if self._objects.type_name(variables) != HAMT_TYPE:
            return None
        # OpenTelemetry's ContextVar is a module global: once found, it is looked
        # up by its hash (and still checked by type and name), as CPython does,
        # instead of reading every variable of the context.
        if self._var is not None and self._is_otel_var(self._var):
            known = self._hamt.find(variables, self._var)
            if known is not None:
                return self._span_of(known)
        otel_vars = [
            (key, value) for key, value in self._hamt.items(variables) if self._is_otel_var(key)
        ]
        if len(otel_vars) == 1:
            self._var = otel_vars[0][0]
        found = {self._span_of(value) for _, value in otel_vars}
        # Another library's variable with the same name must not make the answer ambiguous.
        found.discard(None)
        return found.pop() if len(found) == 1 else None

    def _is_otel_var(self, key: int) -> bool:
        if self._objects.type_name(key) not in _CONTEXT_VAR_TYPES:
            return False
        objects = self._objects
        name = objects.memory.pointer(key + objects.layout.contextvar_name)
        return bool(name) and objects.ascii(name or 0) == CONTEXT_VAR_NAME

    def _span_of(self, context: int) -> SpanRef | None:  # noqa: PLR0911 (one early exit per check of untrusted memory)
        """The current span of an OpenTelemetry ``Context``."""
        objects = self._objects
        memory, layout = objects.memory, objects.layout
        if not objects.is_subclass(context, "Context", "dict"):
            return None
        spans = [
            value
            for key, value in objects.dict_items(context) or []
            if (objects.ascii(key) or "").startswith(SPAN_KEY_PREFIX)
        ]
        if len(spans) != 1:
            return None
        span_context = objects.attribute(spans[0], SPAN_CONTEXT_ATTRIBUTE)
        if span_context is None or not objects.is_subclass(span_context, "SpanContext", "tuple"):
            self._unknown_span()
            return None
        size = memory.ssize(span_context + layout.var_size)
        if size is None or not 4 <= size <= 16:
            return None
        items = memory.pointers(span_context + layout.tuple_items, 4)
        if items is None:
            return None
        trace_id, span_id, flags = (objects.small_int(items[i]) for i in (0, 1, 3))
        if (
            trace_id is None
            or span_id is None
            or flags is None
            or not 0 < trace_id < 1 << 128
            or not 0 < span_id < 1 << 64
            or not 0 <= flags < 1 << 8
        ):
            return None
        return SpanRef(trace_id=trace_id, span_id=span_id, trace_flags=flags)

    def _unknown_span(self) -> None:
        """A current span without a SpanContext where OpenTelemetry keeps it: say so, once.

        Once in a while this is an object changing under the reader; every time, an
        OpenTelemetry API whose spans are laid out otherwise than 1.x's.
        """
        self.unknown_spans += 1
        if self.unknown_spans == UNKNOWN_SPANS_WARNING:
            log.warning(
                "trace links for process %d: its OpenTelemetry spans do not keep a SpanContext "
                "in %r; blocks in them get no parent",
                self._objects.memory.pid,
                SPAN_CONTEXT_ATTRIBUTE,
            )


__all__ = ["CONTEXT_VAR_NAME", "SPAN_KEY_PREFIX", "CurrentSpans"]
