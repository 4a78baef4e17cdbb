"""Every OpenTelemetry name the sidecar emits, in one place.

Standard attributes come from the semantic conventions; ``blocksnoop.*``
names are ours. Span and metric names are a contract that outside tests
rely on (DESIGN.md): change them only with that contract.
"""

from __future__ import annotations

from typing import Final

from opentelemetry.semconv._incubating.attributes.container_attributes import CONTAINER_ID
from opentelemetry.semconv._incubating.attributes.host_attributes import HOST_NAME
from opentelemetry.semconv._incubating.attributes.k8s_attributes import (
    K8S_CONTAINER_NAME,
    K8S_NAMESPACE_NAME,
    K8S_POD_NAME,
    K8S_POD_UID,
)
from opentelemetry.semconv._incubating.attributes.process_attributes import (
    PROCESS_EXECUTABLE_NAME,
    PROCESS_EXECUTABLE_PATH,
    PROCESS_PID,
    PROCESS_RUNTIME_DESCRIPTION,
    PROCESS_RUNTIME_NAME,
    PROCESS_RUNTIME_VERSION,
)
from opentelemetry.semconv._incubating.attributes.service_attributes import SERVICE_INSTANCE_ID
from opentelemetry.semconv._incubating.attributes.thread_attributes import THREAD_ID, THREAD_NAME
from opentelemetry.semconv.attributes.code_attributes import (
    CODE_FILE_PATH,
    CODE_FUNCTION_NAME,
    CODE_LINE_NUMBER,
    CODE_STACKTRACE,
)
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

__all__ = [
    "CODE_FILE_PATH",
    "CODE_FUNCTION_NAME",
    "CODE_LINE_NUMBER",
    "CODE_STACKTRACE",
    "CONTAINER_ID",
    "HOST_NAME",
    "K8S_CONTAINER_NAME",
    "K8S_NAMESPACE_NAME",
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "PROCESS_EXECUTABLE_NAME",
    "PROCESS_EXECUTABLE_PATH",
    "PROCESS_PID",
    "PROCESS_RUNTIME_DESCRIPTION",
    "PROCESS_RUNTIME_NAME",
    "PROCESS_RUNTIME_VERSION",
    "SERVICE_INSTANCE_ID",
    "SERVICE_NAME",
    "THREAD_ID",
    "THREAD_NAME",
]

SCOPE_NAME: Final = "otel-blocksnoop"
"""Instrumentation scope of everything the sidecar emits."""
UNKNOWN_SERVICE: Final = "unknown_service:python"

# Spans and log records
BLOCK_SPAN: Final = "eventloop.block"
CALL_EVENT: Final = "eventloop.block.call"
"""Span event per call site that held the loop, at its start, in time order."""
HANG_EVENT: Final = "eventloop.block.in_progress"
"""Event name of the log record sent while a block is still going on."""

# Attributes of ours
CAUSE: Final = "blocksnoop.cause"
SYSCALL: Final = "blocksnoop.syscall"
END_REASON: Final = "blocksnoop.end_reason"
THREAD_KIND: Final = "blocksnoop.thread.kind"
# The host's ids (its PID namespace's, the kernel's), where they differ from the app's own
# (``process.pid`` and ``thread.id`` are the ids the app sees: its logs, get_native_id()).
PROCESS_HOST_PID: Final = "blocksnoop.process.host_pid"
THREAD_HOST_ID: Final = "blocksnoop.thread.host_id"
THRESHOLD: Final = "blocksnoop.threshold"  # seconds
ON_CPU: Final = "blocksnoop.cpu.on_time"  # seconds
OFF_CPU: Final = "blocksnoop.cpu.off_time"  # seconds
RUNQ: Final = "blocksnoop.cpu.runq_time"  # seconds
SIBLING_CPU: Final = "blocksnoop.cpu.sibling_time"  # seconds
THROTTLED: Final = "blocksnoop.cpu.throttled_time"  # seconds of RUNQ a CPU quota caused
THROTTLED_PERIODS: Final = "blocksnoop.cpu.throttled_periods"  # quota periods that ran out
SAMPLES: Final = "blocksnoop.stack.samples"
SAMPLES_BUSY: Final = "blocksnoop.stack.samples_busy"
DURATION: Final = "blocksnoop.duration"  # seconds, on hang records: the time so far
LOOP_STATE: Final = "blocksnoop.eventloop.state"  # busy | idle
TASK_NAME: Final = "blocksnoop.task.name"  # asyncio.current_task().get_name()
TASK_COROUTINE: Final = "blocksnoop.task.coroutine"  # its coroutine's __qualname__
DELAYED_TASKS: Final = "blocksnoop.delayed.tasks"  # ready callbacks that waited on the block
DELAYED_REQUESTS: Final = "blocksnoop.delayed.requests"  # their requests; the first are links
DELAYED_UNREAD: Final = "blocksnoop.delayed.unread"  # of the tasks, those whose request is unread
MAX_DELAYED_LINKS: Final = 16
"""Span links from a block to the requests it delayed; ``DELAYED_REQUESTS`` counts them all."""
TASK_AWAITED_BY: Final = "blocksnoop.task.awaited_by"  # 3.14+: names of the tasks awaiting it
TASK_AWAITED_BY_MORE: Final = "blocksnoop.task.awaited_by.more"  # awaiters found past the cap
ITERATION_ID: Final = "blocksnoop.iteration.id"  # the same on every segment of an iteration
ITERATION_DURATION: Final = "blocksnoop.iteration.duration"  # seconds, the whole iteration
ITERATION_SEGMENTS: Final = "blocksnoop.iteration.segments"  # requests' segments it was split in
ITERATION_SEGMENT: Final = "blocksnoop.iteration.segment"  # this span's place, from 0
# True on a block already going on when watching began: its start is then, the real one earlier.
STARTED_BEFORE_WATCH: Final = "blocksnoop.block.started_before_watch"

# Every call site of the block in one line ("query 120.0 ms recvfrom(); derive 118.0 ms cpu"),
# those left out (too few samples to name), and the block's time no sample stood for.
CALL_SITES: Final = "blocksnoop.call_sites"
CALL_SITES_LEFT_OUT: Final = "blocksnoop.call_sites.left_out"
UNSAMPLED: Final = "blocksnoop.stack.unsampled_time"  # seconds
# On each CALL_EVENT (beside code.function.name, code.file.path, code.line.number, CAUSE, SYSCALL)
CALL_SHARE: Final = "blocksnoop.call.share"  # seconds
CALL_SAMPLES: Final = "blocksnoop.call.samples"

SIGNAL: Final = "blocksnoop.signal"  # on DROPPED: spans | hang records
LOST_WHAT: Final = "blocksnoop.lost.what"  # on LOST: an events.Loss value

# Metrics
BLOCK_DURATION: Final = "blocksnoop.eventloop.block.duration"
"""Histogram (s) per watched process: one point per blocked loop iteration (DESIGN.md)."""
BLOCKS: Final = "blocksnoop.eventloop.blocks"
"""Counter per watched process, by thread and cause."""
LOOP_TIME: Final = "blocksnoop.eventloop.time"
"""Counter (s) per loop thread and ``LOOP_STATE``: busy / (busy + idle) is utilization."""
LOOP_ITERATIONS: Final = "blocksnoop.eventloop.iterations"
"""Counter per loop thread."""
LOST_EVENTS: Final = "blocksnoop.events.lost"
"""Counter of the sidecar: blocks the kernel could not hand over."""
DROPPED: Final = "blocksnoop.export.dropped"
"""Counter of the sidecar, per ``SIGNAL``: records dropped from a full export queue."""
LOST: Final = "blocksnoop.lost"
"""Counter of the sidecar, per ``LOST_WHAT``: everything dropped or lost, by any stage."""
DURATION_BUCKETS_S: Final = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
"""Histogram boundaries: blocks run from a millisecond to hangs of a minute."""
