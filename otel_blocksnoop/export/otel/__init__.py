"""OpenTelemetry export: a span per block, a log record per hang report, metrics.

Everything is reported under the *watched app's* resource (its service
name, PID, runtime), one resource per watched process; the sidecar's own
health (blocks lost in the kernel, records dropped on the way out) goes
under a resource of its own.

- ``sink``: ``OtelSink``, the wiring;
- ``spans``: spans and hang log records, their ids and attributes;
- ``resource``: the watched apps' resources and the sidecar's;
- ``metrics``: the meters, per watched process and for the sidecar;
- ``queue``: the bounded delivery queues and the one thread that exports.
"""

from otel_blocksnoop.export.otel.sink import OtelSink

__all__ = ["OtelSink"]
