"""OpenTelemetry: a producer span around enqueue puts its trace context in the task's metadata;
the worker's consumer span around execution is its child, so the task joins the trace of the
request that enqueued it (the SDK's in-memory exporter, a worker in this process)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from omniq import Task
from omniq.backend.postgres import PostgreSQLBackend
from omniq.observability import tracing
from omniq.worker import AsyncWorker
from tests.support.db import Database

JOBS = "tests.support.traced_jobs"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans of OmniQ and of the test, kept in memory (a provider of the test's own: the global
    one is left alone for the rest of the suite)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    found = {s.name: s for s in exporter.get_finished_spans()}
    assert len(found) == len(exporter.get_finished_spans()), "span names repeat"
    return found


async def run_burst(backend: PostgreSQLBackend) -> None:
    worker = AsyncWorker(backend, ["mail", "default"], concurrency=2, install_signal_handlers=False)
    await asyncio.wait_for(worker.run(burst=True), 60)


async def test_the_workers_span_joins_the_producers_trace(
    backend: PostgreSQLBackend, db: Database, spans: InMemorySpanExporter
) -> None:
    provider = tracing._provider
    sync_task = Task(func=f"{JOBS}.traced", args=("inside sync",), queue_name="mail")
    async_task = Task(func=f"{JOBS}.async_traced", args=("inside async",))
    with provider.get_tracer("tests").start_as_current_span("request") as request:
        await backend.task_queue.enqueue(sync_task)
    stored = (await db.row("tasks", sync_task.id))["metadata"]
    await backend.task_queue.enqueue(async_task)  # no request around it: a trace of its own
    await run_burst(backend)

    s = by_name(spans)
    assert set(s) == {
        "request",
        "publish mail",
        "process mail",
        "publish default",
        "process default",
    }
    trace_id = request.get_span_context().trace_id
    publish, process = s["publish mail"], s["process mail"]
    assert publish.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert publish.context.trace_id == process.context.trace_id == trace_id
    assert publish.parent.span_id == request.get_span_context().span_id
    assert process.parent.span_id == publish.context.span_id
    assert [e.name for e in process.events] == ["inside sync"]  # current in the task's thread
    assert stored["traceparent"].startswith(f"00-{trace_id:032x}-{publish.context.span_id:016x}-")
    assert publish.attributes["messaging.system"] == "omniq"
    assert publish.attributes["messaging.destination.name"] == "mail"
    assert publish.attributes["messaging.message.id"] == sync_task.id
    assert publish.attributes["messaging.operation.type"] == "send"
    assert process.attributes["messaging.message.id"] == sync_task.id
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.omniq.attempt"] == 1
    assert process.status.status_code is StatusCode.UNSET

    other = s["process default"]
    assert other.context.trace_id == s["publish default"].context.trace_id != trace_id
    assert [e.name for e in other.events] == ["inside async"]  # current on the event loop


async def test_a_failure_marks_the_span_and_a_batch_is_one_producer_span(
    backend: PostgreSQLBackend, spans: InMemorySpanExporter
) -> None:
    tasks = [Task(func=f"{JOBS}.fails", max_retries=0), Task(func=f"{JOBS}.traced", args=("x",))]
    await backend.task_queue.enqueue_many(tasks)
    await run_burst(backend)
    finished = spans.get_finished_spans()
    (publish,) = [s for s in finished if s.kind is SpanKind.PRODUCER]
    assert publish.attributes["messaging.batch.message_count"] == 2
    processed = {
        s.attributes["messaging.message.id"]: s for s in finished if s.kind is SpanKind.CONSUMER
    }
    assert {s.parent.span_id for s in processed.values()} == {publish.context.span_id}
    failed = processed[tasks[0].id]
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.events[0].attributes["exception.message"] == "traced failure"
    assert processed[tasks[1].id].status.status_code is StatusCode.UNSET


async def test_enqueue_calls_is_one_producer_span_whose_context_every_task_carries(
    backend: PostgreSQLBackend, db: Database, spans: InMemorySpanExporter
) -> None:
    template = Task(func=f"{JOBS}.traced", queue_name="mail", metadata={"k": 1})
    ids = await backend.task_queue.enqueue_calls(template, [("a",), ("b",), ("c",)])
    (single,) = await backend.task_queue.enqueue_calls(template, [("d",)])
    batch, one = spans.get_finished_spans()
    assert batch.kind is SpanKind.PRODUCER and batch.name == "publish mail"
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in batch.attributes
    assert one.attributes["messaging.message.id"] == single
    for task_id, span in [(i, batch) for i in ids] + [(single, one)]:
        metadata = (await db.row("tasks", task_id))["metadata"]
        assert metadata["k"] == 1
        assert metadata["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"
    assert template.metadata == {"k": 1}  # the caller's template is left as it was
    await run_burst(backend)
    processed = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert sorted(s.parent.span_id for s in processed) == sorted(
        [batch.context.span_id] * 3 + [one.context.span_id]
    )


async def test_without_a_configured_sdk_nothing_is_added(backend: PostgreSQLBackend, db) -> None:
    """The API without an SDK: non-recording spans, no traceparent stored."""
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    task = Task(func=f"{JOBS}.traced", args=("x",), metadata={"k": 1})
    await backend.task_queue.enqueue(task)
    assert (await db.row("tasks", task.id))["metadata"] == {"k": 1}


def test_without_opentelemetry_installed_nothing_is_imported() -> None:
    """The otel extra absent: enqueue and execution need nothing of it (checked in a fresh
    interpreter where importing opentelemetry fails)."""
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from omniq import Task\n"
        "from omniq.observability import tracing\n"
        "import omniq.worker, omniq.backend.postgres\n"
        "assert not tracing.enabled()\n"
        "t = Task(func='x.y')\n"
        "with tracing.publishing([t]):\n"
        "    with tracing.processing(t): pass\n"
        "assert t.metadata == {}\n"
        "assert not any(m.startswith('opentelemetry') and sys.modules[m] for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
