"""The public API as a type checker sees it: every public async method of the backend and of
its components, and every ``_sync`` twin, called here with its revealed type checked by
``typing.assert_type``.

scripts/check type-checks this file with ``mypy --strict`` (a twin a type checker cannot see,
or a result type that changed, fails there), and pytest runs it against PostgreSQL (a call
the types allow and the code refuses fails here). The last test fails when a public method
is added without a call here.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, assert_type

import asyncpg
import pytest

from omniq.backend.postgres import (
    AsyncPostgresEventStorage,
    AsyncPostgresQueue,
    AsyncPostgresResultStorage,
    AsyncPostgresScheduleStorage,
    PostgresEventStorage,
    PostgreSQLBackend,
    PostgresQueue,
    PostgresResultStorage,
    PostgresScheduleStorage,
    create_async_postgres_backend,
    create_postgres_backend,
)
from omniq.backend.postgres.connection import Connection
from omniq.backend.postgres.listener import Listener
from omniq.backend.postgres.monitor import (
    AsyncPostgresMonitor,
    Gauges,
    Overview,
    PostgresMonitor,
    TaskDetail,
    TaskPage,
)
from omniq.backend.postgres.schedules import Firing
from omniq.models.enums import EventType, ScheduleType
from omniq.models.event import TaskEvent
from omniq.models.result import TaskResult
from omniq.models.schedule import Schedule
from omniq.models.task import Task
from omniq.models.unique import Enqueued, QueueSettings

JOB = "tests.support.jobs.add"
CLASSES: list[type[Any]] = [
    PostgreSQLBackend,
    AsyncPostgresQueue,
    AsyncPostgresResultStorage,
    AsyncPostgresEventStorage,
    AsyncPostgresScheduleStorage,
    AsyncPostgresMonitor,
]


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    name = f"typing_{uuid.uuid4().hex[:10]}"
    yield name

    async def drop() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def later() -> datetime:
    return datetime.now() + timedelta(hours=1)


async def test_async_api(pg_dsn: str, schema: str) -> None:
    backend = create_async_postgres_backend(dsn=pg_dsn, schema=schema)
    assert_type(backend, PostgreSQLBackend)
    await backend.connect()  # returns None
    async with backend as opened:
        assert_type(opened, PostgreSQLBackend)
        assert_type(await backend.migrate(dry_run=True), list[str])
        assert_type(await backend.migrate(), list[str])
        assert_type(await backend.schema_version(), int)
        assert_type(await backend.listener(), Listener)
        async with backend.transaction() as conn:
            assert_type(conn, Connection)
            in_transaction = Task(func=JOB, args=(1, 2))
            await backend.task_queue.enqueue(in_transaction, connection=conn)
        await queue_api(backend.task_queue)
        await result_api(backend.result_storage)
        await event_api(backend.event_storage)
        await schedule_api(backend.schedule_storage)
        await monitor_api(backend.monitor)
    await backend.close()  # returns None


async def queue_api(queue: PostgresQueue) -> None:
    assert_type(queue, PostgresQueue)
    first = Task(func=JOB, args=(1, 2))
    assert_type(await queue.enqueue(first), str)
    assert_type(await queue.enqueue_many([Task(func=JOB), Task(func=JOB)]), list[str])
    assert_type(await queue.enqueue_calls(JOB, [(1, 2), [3], {"a": 4}]), list[str])
    assert_type(await queue.enqueue_calls(Task(func=JOB, priority=1), iter([()])), list[str])
    unique = await queue.enqueue_unique(Task(func=JOB, unique_key="typing-one"))
    assert_type(unique, Enqueued)
    assert unique.created
    assert_type(await queue.enqueue_many_unique([Task(func=JOB, unique_key="two")]), list[Enqueued])
    taken = await queue.dequeue("default", timeout=None, worker_id="typing")
    assert_type(taken, Task | None)
    assert taken is not None
    assert_type(await queue.dequeue_many(["default"], 2), list[Task])
    assert_type(await queue.next_due_at("default"), datetime | None)
    got = await queue.get_task(first.id)
    assert_type(got, Task | None)
    delayed = Task(func=JOB, run_at=later())
    await queue.enqueue(delayed)
    delayed.priority = 5
    assert_type(await queue.update_task(delayed), bool)
    assert_type(await queue.cancel_task(delayed.id), bool)
    assert_type(await queue.cancel_tasks([delayed.id], "typing"), int)
    assert_type(await queue.retry_tasks([delayed.id]), int)
    assert_type(await queue.abort_task(taken.id, "typing", requested_by="tests"), bool)
    assert_type(await queue.delete_task(delayed.id), bool)
    assert_type(await queue.list_tasks(queue_name="default", status="pending"), list[Task])
    assert_type(await queue.get_queue_size("default"), int)
    assert_type(await queue.cleanup_expired_tasks(), int)
    assert_type(await queue.purge_finished_tasks(timedelta(days=1)), int)
    assert_type(await queue.requeue_stalled(timedelta(hours=1)), int)
    assert_type(await queue.pause_queue("typing"), bool)
    assert_type(await queue.resume_queue("typing"), bool)
    assert_type(await queue.set_queue_limits("typing", max_running=2), QueueSettings)
    assert_type(await queue.queue_settings(["typing"]), list[QueueSettings])


async def result_api(results: PostgresResultStorage) -> None:
    assert_type(results, PostgresResultStorage)
    stored = TaskResult(task_id="typing-result", status="success", result=3)
    await results.set(stored)  # returns None
    assert_type(await results.get(stored.task_id), TaskResult | None)
    assert_type(await results.wait(stored.task_id, timeout=5), TaskResult | None)
    assert_type(await results.list_results(status="success", limit=10), list[TaskResult])
    assert_type(await results.delete(stored.task_id), bool)
    assert_type(await results.cleanup_expired_results(), int)


async def event_api(events: PostgresEventStorage) -> None:
    assert_type(events, PostgresEventStorage)
    event = TaskEvent(task_id="typing-event", event_type="completed")
    assert_type(event.event_type, EventType | str)
    assert event.event_type is EventType.COMPLETED
    await events.log_event(event)  # returns None
    progress = TaskEvent(task_id="typing-event", event_type="progress", details={"done": 3})
    await events.log_event(progress)  # returns None: a type of the user's own, stored as given
    (read,) = await events.get_events(task_id="typing-event", event_type="progress")
    assert read.event_type == "progress" and read.details == {"done": 3}
    await events.log_events(
        [TaskEvent(task_id="typing-event", event_type=EventType.FAILED)]
    )  # returns None
    assert_type(await events.get_events(task_id="typing-event"), list[TaskEvent])
    assert_type(await events.cleanup_old_events(datetime(2000, 1, 1)), int)


async def schedule_api(schedules: PostgresScheduleStorage) -> None:
    assert_type(schedules, PostgresScheduleStorage)
    schedule = Schedule(func=JOB, schedule_type=ScheduleType.INTERVAL, interval_seconds=60)
    assert_type(await schedules.save_schedule(schedule), str)
    assert_type(await schedules.get_schedule(schedule.id), Schedule | None)
    assert_type(await schedules.list_schedules(status="active"), list[Schedule])
    assert_type(await schedules.pause_schedule(schedule.id), bool)
    assert_type(await schedules.resume_schedule(schedule.id), bool)
    assert_type(await schedules.get_ready_schedules(), list[Schedule])
    assert_type(await schedules.fire_due_schedules(), int)
    assert_type(await schedules.fire_due(), Firing)
    assert_type(await schedules.next_schedule_at(), datetime | None)
    assert_type(await schedules.cancel_schedule(schedule.id), bool)
    assert_type(await schedules.cleanup_expired_schedules(), int)
    assert_type(await schedules.delete_schedule(schedule.id), bool)


async def monitor_api(monitor: PostgresMonitor) -> None:
    assert_type(monitor, PostgresMonitor)
    hour_ago = datetime.now() - timedelta(hours=1)
    assert_type(await monitor.gauges(), Gauges)
    assert_type(await monitor.throughput(hour_ago), list[dict[str, Any]])
    assert_type(await monitor.workers(), list[dict[str, Any]])
    assert_type(await monitor.schedules(), list[dict[str, Any]])
    assert_type(await monitor.overview(), Overview)
    page = await monitor.task_page()
    assert_type(page, TaskPage)
    assert_type(await monitor.task_detail("no-such-task"), TaskDetail | None)
    assert_type(await monitor.task_states(["no-such-task"]), dict[str, dict[str, Any]])
    assert_type(await monitor.queue_counts(), list[dict[str, Any]])
    assert_type(await monitor.recent_outcomes(hour_ago), dict[str, dict[str, int]])
    assert_type(await monitor.schedule_counts(), dict[str, Any])
    assert_type(await monitor.server(), dict[str, Any])
    assert_type(await monitor.privileges(), dict[str, Any])
    assert_type(await monitor.table_health(), list[dict[str, Any]])
    assert_type(await monitor.index_usage(), list[dict[str, Any]])
    assert_type(await monitor.check_invariants(), list[dict[str, Any]])
    assert_type(await monitor.listen_round_trip(timeout=30), float | None)


def test_sync_api(pg_dsn: str, schema: str) -> None:
    backend = create_postgres_backend(dsn=pg_dsn, schema=schema)
    assert_type(backend, PostgreSQLBackend)
    backend.connect_sync()  # returns None
    with backend as opened:
        assert_type(opened, PostgreSQLBackend)
        assert_type(backend.migrate_sync(dry_run=True), list[str])
        assert_type(backend.migrate_sync(), list[str])
        assert_type(backend.schema_version_sync(), int)
        queue_api_sync(backend.task_queue)
        result_api_sync(backend.result_storage)
        event_api_sync(backend.event_storage)
        schedule_api_sync(backend.schedule_storage)
        monitor_api_sync(backend.monitor)
    backend.close_sync()  # returns None


def queue_api_sync(queue: PostgresQueue) -> None:
    first = Task(func=JOB, args=(1, 2))
    assert_type(queue.enqueue_sync(first), str)
    assert_type(queue.enqueue_many_sync([Task(func=JOB), Task(func=JOB)]), list[str])
    assert_type(queue.enqueue_calls_sync(JOB, [(1, 2), [3], {"a": 4}]), list[str])
    unique = queue.enqueue_unique_sync(Task(func=JOB, unique_key="typing-one"))
    assert_type(unique, Enqueued)
    assert unique.created
    assert_type(queue.enqueue_many_unique_sync([Task(func=JOB, unique_key="two")]), list[Enqueued])
    taken = queue.dequeue_sync("default", timeout=None, worker_id="typing")
    assert_type(taken, Task | None)
    assert taken is not None
    assert_type(queue.dequeue_many_sync(["default"], 2), list[Task])
    assert_type(queue.next_due_at_sync("default"), datetime | None)
    assert_type(queue.get_task_sync(first.id), Task | None)
    delayed = Task(func=JOB, run_at=later())
    queue.enqueue_sync(delayed)
    delayed.priority = 5
    assert_type(queue.update_task_sync(delayed), bool)
    assert_type(queue.cancel_task_sync(delayed.id), bool)
    assert_type(queue.cancel_tasks_sync([delayed.id], "typing"), int)
    assert_type(queue.retry_tasks_sync([delayed.id]), int)
    assert_type(queue.abort_task_sync(taken.id, "typing", requested_by="tests"), bool)
    assert_type(queue.delete_task_sync(delayed.id), bool)
    assert_type(queue.list_tasks_sync(queue_name="default", status="pending"), list[Task])
    assert_type(queue.get_queue_size_sync("default"), int)
    assert_type(queue.cleanup_expired_tasks_sync(), int)
    assert_type(queue.purge_finished_tasks_sync(timedelta(days=1)), int)
    assert_type(queue.requeue_stalled_sync(timedelta(hours=1)), int)
    assert_type(queue.pause_queue_sync("typing"), bool)
    assert_type(queue.resume_queue_sync("typing"), bool)
    assert_type(queue.set_queue_limits_sync("typing", max_running=2), QueueSettings)
    assert_type(queue.queue_settings_sync(["typing"]), list[QueueSettings])


def result_api_sync(results: PostgresResultStorage) -> None:
    stored = TaskResult(task_id="typing-result", status="success", result=3)
    results.set_sync(stored)  # returns None
    assert_type(results.get_sync(stored.task_id), TaskResult | None)
    assert_type(results.wait_sync(stored.task_id, timeout=5), TaskResult | None)
    assert_type(results.list_results_sync(status="success", limit=10), list[TaskResult])
    assert_type(results.delete_sync(stored.task_id), bool)
    assert_type(results.cleanup_expired_results_sync(), int)


def event_api_sync(events: PostgresEventStorage) -> None:
    event = TaskEvent(task_id="typing-event", event_type="completed")
    events.log_event_sync(event)  # returns None
    events.log_events_sync(
        [TaskEvent(task_id="typing-event", event_type=EventType.FAILED)]
    )  # returns None
    assert_type(events.get_events_sync(task_id="typing-event"), list[TaskEvent])
    assert_type(events.cleanup_old_events_sync(datetime(2000, 1, 1)), int)


def schedule_api_sync(schedules: PostgresScheduleStorage) -> None:
    schedule = Schedule(func=JOB, schedule_type=ScheduleType.INTERVAL, interval_seconds=60)
    assert_type(schedules.save_schedule_sync(schedule), str)
    assert_type(schedules.get_schedule_sync(schedule.id), Schedule | None)
    assert_type(schedules.list_schedules_sync(status="active"), list[Schedule])
    assert_type(schedules.pause_schedule_sync(schedule.id), bool)
    assert_type(schedules.resume_schedule_sync(schedule.id), bool)
    assert_type(schedules.get_ready_schedules_sync(), list[Schedule])
    assert_type(schedules.fire_due_schedules_sync(), int)
    assert_type(schedules.fire_due_sync(), Firing)
    assert_type(schedules.next_schedule_at_sync(), datetime | None)
    assert_type(schedules.cancel_schedule_sync(schedule.id), bool)
    assert_type(schedules.cleanup_expired_schedules_sync(), int)
    assert_type(schedules.delete_schedule_sync(schedule.id), bool)


def monitor_api_sync(monitor: PostgresMonitor) -> None:
    hour_ago = datetime.now() - timedelta(hours=1)
    assert_type(monitor.gauges_sync(), Gauges)
    assert_type(monitor.throughput_sync(hour_ago), list[dict[str, Any]])
    assert_type(monitor.workers_sync(), list[dict[str, Any]])
    assert_type(monitor.schedules_sync(), list[dict[str, Any]])
    assert_type(monitor.overview_sync(), Overview)
    assert_type(monitor.task_page_sync(), TaskPage)
    assert_type(monitor.task_detail_sync("no-such-task"), TaskDetail | None)
    assert_type(monitor.task_states_sync(["no-such-task"]), dict[str, dict[str, Any]])
    assert_type(monitor.queue_counts_sync(), list[dict[str, Any]])
    assert_type(monitor.recent_outcomes_sync(hour_ago), dict[str, dict[str, int]])
    assert_type(monitor.schedule_counts_sync(), dict[str, Any])
    assert_type(monitor.server_sync(), dict[str, Any])
    assert_type(monitor.privileges_sync(), dict[str, Any])
    assert_type(monitor.table_health_sync(), list[dict[str, Any]])
    assert_type(monitor.index_usage_sync(), list[dict[str, Any]])
    assert_type(monitor.check_invariants_sync(), list[dict[str, Any]])
    assert_type(monitor.listen_round_trip_sync(timeout=30), float | None)


def test_every_public_method_is_called_here() -> None:
    """Each public coroutine method of the public classes, and its twin, is called above."""
    called = {
        node.func.attr
        for node in ast.walk(ast.parse(Path(__file__).read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    missing = []
    for cls in CLASSES:
        async_only: frozenset[str] = getattr(cls, "_async_only", frozenset())
        for name, _ in inspect.getmembers(cls, inspect.iscoroutinefunction):
            if name.startswith("_"):
                continue
            wanted = [name] if name in async_only else [name, f"{name}_sync"]
            missing += [f"{cls.__name__}.{w}" for w in wanted if w not in called]
    assert missing == [], f"add a call with assert_type to {Path(__file__).name}: {missing}"
