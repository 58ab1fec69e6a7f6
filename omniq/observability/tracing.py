"""OpenTelemetry spans for enqueue and execution, joined by the task's metadata.

A producer span (kind PRODUCER, ``publish <queue>``) surrounds enqueue; the W3C trace context
of each task's span is written into its metadata (``traceparent``, and ``tracestate`` when
there is one). The worker runs the task function inside a consumer span (kind CONSUMER,
``process <queue>``) whose parent is the context read back from that metadata, so a task's
execution, and whatever the function traces itself, joins the trace of the request that
enqueued it. Attributes follow the OpenTelemetry messaging semantic conventions.

The ``otel`` extra installs ``opentelemetry-api``; the application configures the SDK and its
exporters as usual. Without the API installed, or with no SDK configured (the API's default
provider), these context managers do nothing and no metadata is added (the import is tried
once, here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from ..models.task import Task

try:
    from opentelemetry import propagate, trace
except ImportError:  # the otel extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]
    propagate = None  # type: ignore[assignment]

SYSTEM = "omniq"
CARRIER_KEYS = ("traceparent", "tracestate")  # the W3C trace context, in Task.metadata
_provider: Any = None  # None: OpenTelemetry's global tracer provider


def enabled() -> bool:
    """Whether the OpenTelemetry API is installed (spans record once an SDK is configured)."""
    return trace is not None


def use_tracer_provider(provider: Any) -> None:
    """Trace with ``provider`` instead of the global tracer provider (None: the global one
    again), as instrumentations' ``instrument(tracer_provider=...)`` does."""
    global _provider
    _provider = provider


_cached: tuple[Any, Any] = (None, None)  # (provider, its tracer)


def _tracer() -> Any:
    """OmniQ's tracer, or None while no SDK is configured (the API's proxy or no-op provider):
    then spans would record nothing, and skipping them keeps enqueue and execution free of
    OpenTelemetry's cost (about 15 us each otherwise)."""
    global _cached
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    if _cached[0] is not provider:
        _cached = (provider, trace.get_tracer("omniq", tracer_provider=provider))
    return _cached[1]


def _attributes(task: Task, operation: str, kind: str) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": task.queue_name,
        "messaging.message.id": task.id,
        "messaging.operation.type": kind,
        "messaging.operation.name": operation,
    }


_OFF: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def publishing(tasks: Sequence[Task]) -> contextlib.AbstractContextManager[None]:
    """The producer span around an enqueue: one per call, whose trace context goes into the
    metadata of every task it stores (a ``traceparent`` the caller set already is kept). A
    batch is one span with ``messaging.batch.message_count``, as the conventions have it.
    Without a tracer, a context manager that does nothing (cheaper than a generator's: this
    runs for every enqueue)."""
    tracer = _tracer() if trace is not None and tasks else None
    return _OFF if tracer is None else _publishing(tracer, tasks)


@contextlib.contextmanager
def _publishing(tracer: Any, tasks: Sequence[Task]) -> Iterator[None]:
    first = tasks[0]
    attributes = _attributes(first, "publish", "send")
    if len(tasks) > 1:
        del attributes["messaging.message.id"]
        attributes["messaging.batch.message_count"] = len(tasks)
        if any(t.queue_name != first.queue_name for t in tasks):
            del attributes["messaging.destination.name"]
    name = f"publish {attributes.get('messaging.destination.name', 'batch')}"
    with tracer.start_as_current_span(name, kind=trace.SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        context = {k: v for k, v in carrier.items() if k in CARRIER_KEYS}
        if context:
            for task in tasks:
                if "traceparent" not in task.metadata:
                    task.metadata = {**task.metadata, **context}
        yield


def processing(task: Task) -> contextlib.AbstractContextManager[None]:
    """The consumer span around one execution of ``task``, child of its producer's span (read
    from the metadata) and current while the task function runs; without a tracer, a context
    manager that does nothing (this runs for every task)."""
    tracer = _tracer() if trace is not None else None
    return _OFF if tracer is None else _processing(tracer, task)


@contextlib.contextmanager
def _processing(tracer: Any, task: Task) -> Iterator[None]:
    carrier = {k: v for k, v in task.metadata.items() if k in CARRIER_KEYS and isinstance(v, str)}
    parent = propagate.extract(carrier) if carrier else None
    attributes = _attributes(task, "process", "process")
    attributes["messaging.omniq.attempt"] = task.attempts
    with tracer.start_as_current_span(
        f"process {task.queue_name}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
    ):
        yield
