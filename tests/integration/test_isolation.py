"""Installations in one database are isolated; schema and table names cannot inject SQL."""

from __future__ import annotations

import asyncpg
import pytest

from omniq.errors import SchemaError
from omniq.models.config import TABLE_FIELDS, PostgresConfig
from omniq.models.event import TaskEvent
from omniq.models.result import TaskResult
from omniq.models.schedule import Schedule
from omniq.models.task import Task
from tests.support.db import Database, unique_schema

OMNIQ_OWN = {"omniq_migrations", "omniq_meta", "omniq_workers", "omniq_queues"}


async def tables_in(admin: asyncpg.Connection, schema: str) -> set[str]:
    rows = await admin.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    return {r["tablename"] for r in rows}


async def schemas(admin: asyncpg.Connection) -> set[str]:
    return {r["nspname"] for r in await admin.fetch("SELECT nspname FROM pg_namespace")}


async def objects_outside(admin: asyncpg.Connection, schema: str) -> tuple[int, int]:
    """Relations and functions in every other schema: a hostile name must change none."""
    return (
        await admin.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname <> $1 AND n.nspname !~ '^pg_(toast|temp)'",  # toast: our own tables
            schema,
        ),
        await admin.fetchval(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname <> $1",
            schema,
        ),
    )


async def test_two_installations_see_and_wake_only_their_own(
    make_backend, admin: asyncpg.Connection
) -> None:
    a = await make_backend(
        schema=unique_schema("iso_a"),
        tasks_table="jobs_a",
        results_table="outcomes_a",
        events_table="log_a",
        schedules_table="timers_a",
    )
    b = await make_backend(
        schema=unique_schema("iso_b"),
        tasks_table="jobs_b",
        results_table="outcomes_b",
        events_table="log_b",
        schedules_table="timers_b",
    )
    assert (
        await tables_in(admin, a.config.schema)
        == {"jobs_a", "outcomes_a", "log_a", "timers_a"} | OMNIQ_OWN
    )
    assert (
        await tables_in(admin, b.config.schema)
        == {"jobs_b", "outcomes_b", "log_b", "timers_b"} | OMNIQ_OWN
    )
    channels = []
    for backend in (a, b):
        async with backend.acquire() as conn:
            channels.append({k: await backend.sql.migrations.channel(conn, kind=k)
                             for k in ("tasks", "results", "schedules")})  # fmt: skip
    assert not set(channels[0].values()) & set(channels[1].values())

    task_a, task_b = Task(func="m.a", id="same-id"), Task(func="m.b", id="same-id")
    await a.task_queue.enqueue(task_a)
    await b.task_queue.enqueue(task_b)  # the same id is fine: another installation
    await a.result_storage.set(TaskResult(task_id="r", status="success", result="a"))
    await a.event_storage.log_event(TaskEvent(task_id="e", event_type="completed"))
    await a.schedule_storage.save_schedule(Schedule(func="m.s", interval_seconds=60))
    assert [t.func for t in await a.task_queue.list_tasks()] == ["m.a"]
    assert [t.func for t in await b.task_queue.list_tasks()] == ["m.b"]
    assert await b.result_storage.get("r") is None
    assert await b.event_storage.get_events(task_id="e") == []
    assert await b.schedule_storage.list_schedules() == []
    assert (await b.task_queue.dequeue(["default"])).func == "m.b"  # type: ignore[union-attr]
    assert await b.task_queue.dequeue(["default"]) is None
    assert (await a.task_queue.dequeue(["default"])).func == "m.a"  # type: ignore[union-attr]

    # NOTIFY: b's listener hears nothing of a's tasks or results, and does hear its own.
    listener = await b.listener()
    with listener.watch("tasks") as tasks_woken, listener.watch("results") as results_woken:
        tasks_woken.clear()
        results_woken.clear()
        await a.task_queue.enqueue(Task(func="m.a"))
        await a.result_storage.set(TaskResult(task_id="r", status="failure"))
        assert await tasks_woken.wait(0.5) is False
        assert await results_woken.wait(0.1) is False
        await b.task_queue.enqueue(Task(func="m.b"))
        await b.result_storage.set(TaskResult(task_id="r", status="failure"))
        assert await tasks_woken.wait(2) is True
        assert await results_woken.wait(2) is True


async def test_same_table_names_in_two_schemas_are_isolated(make_backend) -> None:
    a = await make_backend()
    b = await make_backend()
    waiting = b.task_queue.dequeue(["default"], timeout=0.7)
    await a.task_queue.enqueue(Task(func="m.a"))
    assert await waiting is None
    assert await b.task_queue.get_queue_size() == 0
    assert await a.task_queue.get_queue_size() == 1


async def test_second_installation_in_one_schema_is_refused(
    make_backend, admin: asyncpg.Connection
) -> None:
    first = await make_backend()
    schema = first.config.schema
    with pytest.raises(SchemaError, match="already holds an OmniQ installation"):
        await make_backend(schema=schema, tasks_table="other_tasks")
    assert "other_tasks" not in await tables_in(admin, schema)
    # The same names again are the same installation, not a second one.
    again = await make_backend(schema=schema)
    await first.task_queue.enqueue(Task(func="m.f"))
    assert await again.task_queue.get_queue_size() == 1


async def test_an_existing_table_of_that_name_is_reported_not_touched(
    pg_dsn: str, make_backend, admin: asyncpg.Connection
) -> None:
    schema = unique_schema()
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    await admin.execute(f'CREATE TABLE "{schema}".tasks (mine int)')
    await admin.execute(f'INSERT INTO "{schema}".tasks VALUES (1)')  # noqa: S608
    try:
        with pytest.raises(SchemaError, match="already exists"):
            await make_backend(schema=schema)
        assert await tables_in(admin, schema) == {"tasks"}
        assert await admin.fetchval(f'SELECT mine FROM "{schema}".tasks') == 1  # noqa: S608
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.parametrize(
    "field, name",
    [
        ("tasks_table", "omniq_workers"),
        ("events_table", "omniq_migrations"),
        ("results_table", "tasks_pkey"),
        ("schedules_table", "tasks_dequeue_idx"),
        ("schedules_table", "tasks_pending_idx"),  # an index made IF NOT EXISTS (migration 0004)
    ],
)
async def test_table_name_clashing_with_omniq_objects_is_reported(
    field: str, name: str, make_backend, admin: asyncpg.Connection
) -> None:
    schema = unique_schema()
    with pytest.raises((SchemaError, ValueError)):
        await make_backend(schema=schema, **{field: name})
    assert await tables_in(admin, schema) == set()


HOSTILE = [
    'q"uote',
    '""',
    "semi;colon",
    '"; DROP TABLE canary; --',
    "'); DROP TABLE canary; --",
    "tâches_ü✓",
    "Mixed Case",
    "with:colon",
    ":tasks",
    "a:b::c",
    "back\\slash",
    "per%cent%s",
    "{tasks}",
    '"tasks"',
    '"public"',
    "select",
    "a/*b",
    "c*/d",
    "-- dash",
    "$1",
    "x$$y",
    "a$$; DROP TABLE canary; --",
    "$body$",
    "é" * 31 + "x",  # 63 bytes: the longest name PostgreSQL keeps whole
]


@pytest.fixture
async def canary(admin: asyncpg.Connection):
    """A table in a schema of its own that no hostile name may touch."""
    schema = unique_schema("canary")
    await admin.execute(f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".canary (x int)')
    yield schema
    await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
@pytest.mark.parametrize("field", ["schema", "tasks_table"])
async def test_hostile_names_are_rejected_or_harmless(
    field: str, name: str, make_backend, admin: asyncpg.Connection, canary: str
) -> None:
    settings = {field: name} if field == "schema" else {"schema": unique_schema(), field: name}
    try:
        config = PostgresConfig(**settings)
    except ValueError:
        return  # rejected up front: fine
    before = await schemas(admin)
    outside = await objects_outside(admin, config.schema)
    backend = await make_backend(**settings)
    expected = {config.tables[k] for k in config.tables} | OMNIQ_OWN
    assert await tables_in(admin, config.schema) == expected
    assert await schemas(admin) - before == {config.schema}
    assert await admin.fetchval(f'SELECT count(*) FROM "{canary}".canary') == 0  # noqa: S608
    assert await objects_outside(admin, config.schema) == outside
    db = Database(admin, config)
    task = Task(func="m.f")
    await backend.task_queue.enqueue(task)
    assert await db.count("tasks") == 1
    got = await backend.task_queue.dequeue(["default"], timeout=1)
    assert got is not None and got.id == task.id
    await backend.schedule_storage.save_schedule(Schedule(func="m.f", interval_seconds=1))
    assert await db.count("schedules") == 1


@pytest.mark.parametrize("field", ["schema", *TABLE_FIELDS])
def test_names_longer_than_63_bytes_are_rejected(field: str) -> None:
    for name in ("x" * 64, "é" * 32, "✓" * 22):  # 64, 64 and 66 bytes
        with pytest.raises(ValueError, match="63 bytes"):
            PostgresConfig(**{field: name})
    PostgresConfig(**{field: "x" * 63})


async def test_swapped_default_names_do_not_confuse_the_substitution(
    make_backend, admin: asyncpg.Connection
) -> None:
    """Every default name used for something else: replaced in one pass, never twice."""
    schema = "tasks"
    await admin.execute('DROP SCHEMA IF EXISTS "tasks" CASCADE')
    backend = await make_backend(
        schema=schema,
        tasks_table="public",
        results_table="schedules",
        events_table="tasks",
        schedules_table="results",
    )
    assert await tables_in(admin, schema) == {"public", "schedules", "tasks", "results"} | OMNIQ_OWN
    task = Task(func="m.f")
    await backend.task_queue.enqueue(task)
    await backend.task_queue.dequeue(["default"])
    db = Database(admin, backend.config)
    assert await admin.fetchval('SELECT count(*) FROM "tasks"."public"') == 1
    assert sorted(await db.events(task.id)) == ["dequeued", "enqueued"]
    # A success stores no life-cycle rows (they are derived); a user's event is stored.
    await backend.event_storage.log_event(TaskEvent(task_id=task.id, event_type="progress"))
    assert await admin.fetchval('SELECT count(*) FROM "tasks"."tasks"') == 1  # the events
