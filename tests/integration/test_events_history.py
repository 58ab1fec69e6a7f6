"""A task's history is complete although OmniQ stores only the events that say something new
(issue 12): 'enqueued', 'dequeued'/'executing' and a worker's 'completed' are derived from the
task and result rows when read (sql/queries/events.sql, list_events), through every reader:
``get_events(task_id=...)``, the dashboard's timeline and ``omniq task`` (monitor.task_detail).
Retries, failures, cancellations and the user's events are stored; a traceback once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from omniq import Task
from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import WorkerProtocol
from omniq.models.event import TaskEvent
from tests.support.db import Database
from tests.support.outcomes import outcome


async def history(backend: PostgreSQLBackend, task_id: str) -> list[str]:
    events = await backend.event_storage.get_events(task_id=task_id)
    return [str(e.event_type) for e in reversed(events)]


async def test_a_success_stores_no_event_and_reads_complete(
    backend: PostgreSQLBackend, protocol: WorkerProtocol, db: Database
) -> None:
    task = Task(func="tests.support.jobs.add", args=(1, 2))
    await backend.task_queue.enqueue(task)
    assert await history(backend, task.id) == ["enqueued"]
    (running,) = await protocol.take(["default"], 1, "w1")
    assert await history(backend, task.id) == ["enqueued", "dequeued"]
    await protocol.finish([outcome(running, "success", result=3, execution_time=0.5)], "w1")

    assert await db.stored_events(task.id) == []  # nothing restates the task and result rows
    events = list(reversed(await backend.event_storage.get_events(task_id=task.id)))
    assert [str(e.event_type) for e in events] == ["enqueued", "executing", "completed"]
    row = await db.row("tasks", task.id)
    enqueued, executing, completed = events
    assert enqueued.timestamp == row["created_at"] and enqueued.queue_name == "default"
    assert executing.timestamp == row["started_at"] and executing.worker_id == "w1"
    assert completed.timestamp == row["finished_at"] and completed.worker_id == "w1"
    assert completed.execution_time == 0.5
    assert all(e.details == {"derived": True} for e in events)
    # Filters apply to the derived rows too.
    only = await backend.event_storage.get_events(task_id=task.id, event_type="completed")
    assert [e.id for e in only] == [completed.id]
    assert await backend.event_storage.get_events(task_id=task.id, worker_id="w2") == []


async def test_retries_failures_and_tracebacks(
    backend: PostgreSQLBackend, protocol: WorkerProtocol, db: Database
) -> None:
    """Each attempt keeps its start and its error; the final traceback is stored once (in the
    result) and shown on the final event."""
    task = Task(func="tests.support.jobs.fail_always", max_retries=1, retry_delay=0.0)
    await backend.task_queue.enqueue(task)
    (first,) = await protocol.take(["default"], 1, "w1")
    await protocol.finish([outcome(first, "failure", error="one", traceback="tb one")], "w1")
    (second,) = await protocol.take(["default"], 1, "w2")
    await protocol.finish([outcome(second, "failure", error="two", traceback="tb two")], "w2")

    # Each failed run keeps its start (an operator's retry would overwrite the row's).
    assert await db.stored_events(task.id) == ["executing", "retry", "executing", "failed"]
    stored = await db.rows("events", "task_id = $1 AND event_type = 'failed'", task.id)
    assert stored[0]["traceback"] is None  # the result holds it
    assert (await db.row("results", task.id))["traceback"] == "tb two"

    events = list(reversed(await backend.event_storage.get_events(task_id=task.id)))
    kinds = [str(e.event_type) for e in events]
    assert kinds == ["enqueued", "executing", "retry", "executing", "failed"]
    assert (events[2].traceback, events[4].traceback) == ("tb one", "tb two")
    assert (events[1].worker_id, events[3].worker_id) == ("w1", "w2")

    detail = await backend.monitor.task_detail(task.id)
    assert detail is not None
    assert [e["event_type"] for e in detail.events] == kinds
    runs = detail.attempts
    assert [(r["worker_id"], r["outcome"], r["error"]) for r in runs] == [
        ("w1", "failed, retried", "one"),
        ("w2", "failed", "two"),
    ]
    assert runs[1]["traceback"] == "tb two"


async def test_cancelled_and_expired_before_they_ran(
    backend: PostgreSQLBackend, db: Database
) -> None:
    cancelled = Task(func="tests.support.jobs.noop")
    expired = Task(func="tests.support.jobs.noop", expires_at=datetime.now(UTC))
    await backend.task_queue.enqueue_many([cancelled, expired])
    await backend.task_queue.cancel_task(cancelled.id)
    await backend.task_queue.dequeue_many("default", 5, worker_id="w1")  # expires the other
    assert await history(backend, cancelled.id) == ["enqueued", "cancelled"]
    assert await history(backend, expired.id) == ["enqueued", "expired"]
    assert await db.stored_events(cancelled.id) == ["cancelled"]


async def test_stored_life_cycle_events_are_not_doubled(
    backend: PostgreSQLBackend, protocol: WorkerProtocol, db: Database
) -> None:
    """Tasks that ran before migration 0014 have all four events stored, and users may log
    their own 'enqueued': what is stored is shown once, not again as derived."""
    task = Task(func="tests.support.jobs.noop")
    await backend.task_queue.enqueue(task)
    (running,) = await protocol.take(["default"], 1, "w1")
    await protocol.finish([outcome(running, "success", result=None)], "w1")
    row = await db.row("tasks", task.id)
    await backend.event_storage.log_events(
        TaskEvent(task_id=task.id, event_type=kind, timestamp=at, worker_id="w1")
        for kind, at in (
            ("enqueued", row["created_at"]),
            ("dequeued", row["started_at"] - timedelta(milliseconds=1)),
            ("executing", row["started_at"]),
            ("completed", row["finished_at"]),
        )
    )
    events = await backend.event_storage.get_events(task_id=task.id)
    assert [str(e.event_type) for e in reversed(events)] == [
        "enqueued", "dequeued", "executing", "completed"
    ]  # fmt: skip
    assert all(e.details == {} for e in events)


async def test_an_operator_completion_keeps_its_message(
    backend: PostgreSQLBackend, db: Database
) -> None:
    task = Task(func="tests.support.jobs.noop")
    await backend.task_queue.enqueue(task)
    task.status = "completed"  # type: ignore[assignment]
    assert await backend.task_queue.update_task(task)
    assert await db.stored_events(task.id) == ["completed"]
    events = await backend.event_storage.get_events(task_id=task.id)
    assert [str(e.event_type) for e in reversed(events)] == ["enqueued", "completed"]
    assert events[0].message == "set completed by update_task"


async def test_without_a_task_id_only_stored_events(
    backend: PostgreSQLBackend, protocol: WorkerProtocol
) -> None:
    """Reading across tasks (by type, queue, time) reads the log as stored: the life cycle of
    every task is in the tasks and results tables, not derived for a whole time range."""
    tasks = [Task(func="tests.support.jobs.noop") for _ in range(3)]
    await backend.task_queue.enqueue_many(tasks)
    for running in await protocol.take(["default"], 3, "w1"):
        await protocol.finish([outcome(running, "success", result=None)], "w1")
    assert await backend.event_storage.get_events(queue_name="default") == []
    assert await backend.event_storage.get_events(event_type="completed") == []


async def test_a_released_run_is_still_an_attempt(
    backend: PostgreSQLBackend, protocol: WorkerProtocol
) -> None:
    """A release (or rescue) stores its event; the start of that run is not kept (the task row
    holds its latest run only), so the dashboard lists that run with an unknown start."""
    task = Task(func="tests.support.jobs.noop")
    await backend.task_queue.enqueue(task)
    await protocol.take(["default"], 1, "w1")
    assert await protocol.release([task.id], "w1", "shutting down") == 1
    (again,) = await protocol.take(["default"], 1, "w2")
    await protocol.finish([outcome(again, "success", result=None)], "w2")
    assert await history(backend, task.id) == ["enqueued", "requeued", "executing", "completed"]
    detail = await backend.monitor.task_detail(task.id)
    assert detail is not None
    assert [(r["worker_id"], r["outcome"], r["started_at"] is None) for r in detail.attempts] == [
        ("w1", "released", True),
        ("w2", "completed", False),
    ]
