"""Queries proven by their plans: on a realistic volume (200,000 finished and 20,000 pending
tasks with their results and events), the hot and the operator's queries use the index their
comment names, never a sequential scan of tasks, results or events.

Each case is checked twice:

* ``EXPLAIN (FORMAT JSON)`` of the named query's SQL with the parameters (the custom plan the
  first executions get), when the query reads tables itself;
* the query run as the backend runs it (an asyncpg prepared statement), seven times, with
  auto_explain logging every plan as JSON, nested statements included. That covers the SQL
  inside the PL/pgSQL functions (dequeue, claim, rescue, purge...) and the switch to a cached
  generic plan that PostgreSQL may make after five executions. Each run is rolled back.

The index a plan must use is read from the query's own comment (``Index: ...``), so a comment
that names the wrong index fails here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.sqlfiles import SQLFiles
from omniq.identifiers import quote_identifier
from omniq.models.config import PostgresConfig
from tests.support.db import drop_schemas, unique_schema
from tests.support.plans import (
    RUNS,
    BigInstallation,
    big_installation,
    check,
    expected_indexes,
    explain,
    logged_plans,
    scans,
)

# Realistic volume, generated in SQL (default table names; search_path is the test schema).
LOAD = """
-- 200,000 finished tasks over the last 30 days in 5 queues: 2% failed, 1% cancelled.
INSERT INTO tasks (id, queue_name, priority, status, func, args, kwargs, created_at,
    task_data, started_at, finished_at, worker_id, attempts)
SELECT 'done-' || g, 'q' || (g % 5), g % 3,
       CASE WHEN g % 50 = 0 THEN 'failed' WHEN g % 97 = 0 THEN 'cancelled' ELSE 'completed' END,
       'app.jobs.work_' || (g % 20), jsonb_build_array(g, 'payload ' || g), '{"flag": true}',
       now() - interval '30 days' + g * interval '12 seconds', '{}',
       now() - interval '30 days' + g * interval '12 seconds' + interval '1 second',
       now() - interval '30 days' + g * interval '12 seconds' + interval '2 seconds',
       'w-' || (g % 8), 1
FROM generate_series(1, 200000) AS g;

-- 20,000 pending tasks: a tenth delayed, a few overdue for expiry.
INSERT INTO tasks (id, queue_name, priority, status, delayed, func, args, kwargs, created_at,
    run_at, expires_at, task_data)
SELECT 'todo-' || g, 'q' || (g % 5), g % 3, 'pending', g % 10 = 0, 'app.jobs.work_' || (g % 20),
       jsonb_build_array(g), '{}', now() - g * interval '10 milliseconds',
       CASE WHEN g % 10 = 0 THEN now() + g * interval '1 second' END,
       CASE WHEN g % 1000 = 0 THEN now() - interval '1 minute' END, '{}'
FROM generate_series(1, 20000) AS g;

-- 64 running tasks held by 8 live workers; 1,000 tasks waiting for pending ones.
INSERT INTO omniq_workers (id, hostname, pid, queues, concurrency)
SELECT 'w-' || g, 'host-' || g, 1000 + g, ARRAY['q0', 'q1', 'q2', 'q3', 'q4'], 8
FROM generate_series(0, 7) AS g;
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data,
    started_at, worker_id, attempts)
SELECT 'run-' || g, 'q' || (g % 5), 'running', 'app.jobs.work', '[]', '{}',
       now() - interval '2 minutes', '{}', now() - interval '1 minute', 'w-' || (g % 8), 1
FROM generate_series(1, 64) AS g;
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data, dependencies)
SELECT 'wait-' || g, 'q' || (g % 5), 'waiting', 'app.jobs.after', '[]', '{}',
       now() - interval '1 hour', '{}', jsonb_build_array('todo-' || g, 'todo-' || (g + 1))
FROM generate_series(1, 1000) AS g;

-- One result per finished task; half of them expire a week after they were stored.
INSERT INTO results (task_id, status, result, error, created_at, started_at, completed_at,
    expires_at, worker_id, execution_time, result_data)
SELECT t.id,
       CASE t.status WHEN 'completed' THEN 'success' WHEN 'failed' THEN 'failure' ELSE t.status END,
       CASE WHEN t.status = 'completed' THEN jsonb_build_object('answer', 42) END,
       CASE WHEN t.status = 'failed' THEN 'boom' END,
       t.finished_at, t.started_at, t.finished_at,
       CASE WHEN t.args ->> 0 LIKE '%0' THEN t.finished_at + interval '7 days' END,
       t.worker_id, 1.0, '{}'
FROM tasks AS t WHERE t.status IN ('completed', 'failed', 'cancelled');

-- Events: enqueued, executing and the outcome per finished task; enqueued per other task.
INSERT INTO events (id, task_id, event_type, timestamp, queue_name, worker_id)
SELECT t.id || '/' || e.n, t.id, coalesce(e.kind, t.status),
       t.created_at + e.n * interval '1 second', t.queue_name, t.worker_id
FROM tasks AS t
CROSS JOIN LATERAL (VALUES (0, 'enqueued'), (1, 'executing'), (2, NULL)) AS e(n, kind)
WHERE t.status IN ('completed', 'failed', 'cancelled') OR e.n = 0;

-- 5,000 schedules: most due later, a few due now, some paused or completed.
INSERT INTO schedules (id, schedule_type, func, queue_name, interval_seconds, status,
    created_at, next_run, schedule_data)
SELECT 'sched-' || g, 'interval', 'app.jobs.tick', 'q' || (g % 5), 60,
       CASE WHEN g % 10 = 0 THEN 'paused' WHEN g % 7 = 0 THEN 'completed' ELSE 'active' END,
       now() - interval '1 day', now() + (g - 20) * interval '1 minute', '{}'
FROM generate_series(1, 5000) AS g;

ANALYZE tasks, results, events, schedules, omniq_workers;
"""


@dataclass(frozen=True)
class Case:
    """One named query with realistic parameters."""

    name: str
    file: str
    query: str
    params: dict[str, Any] = field(default_factory=dict)
    marks: tuple[Any, ...] = ()

    def param(self) -> Any:
        return pytest.param(self, id=self.name, marks=self.marks)


def _now() -> datetime:
    return datetime.now(UTC)


TASK_FILTERS = dict(
    queue_name=None, func=None, created_after=None, created_before=None, limit=100, offset=0
)
EVENT_FILTERS = dict(
    task_id=None, event_types=None, queue_name=None, worker_id=None, after=None, before=None,
    limit=100, offset=0,
)  # fmt: skip
RESULT_FILTERS = dict(worker_id=None, created_after=None, created_before=None, limit=100, offset=0)
CASES = [
    # The six the issue names.
    Case("dequeue", "tasks", "dequeue_tasks", dict(queues=["q1", "q2"], limit=10, worker_id="w-1")),
    Case("queue size", "tasks", "count_pending", dict(queue_name="q1")),
    Case("list pending", "tasks", "list_tasks", dict(statuses=["pending"], **TASK_FILTERS)),
    Case("list failed", "tasks", "list_tasks", dict(statuses=["failed"], **TASK_FILTERS)),
    Case("list running", "tasks", "list_tasks", dict(statuses=["running"], **TASK_FILTERS)),
    Case(
        "list failed or cancelled",
        "tasks",
        "list_tasks",
        dict(statuses=["failed", "cancelled"], **TASK_FILTERS),
    ),
    Case(
        "list completed",
        "tasks",
        "list_tasks",
        dict(statuses=["completed"], **TASK_FILTERS),
    ),
    Case("result lookup", "results", "get_result", dict(task_id="done-4242")),
    Case("events of a task", "events", "list_events", {**EVENT_FILTERS, "task_id": "done-4242"}),
    Case("ready schedules", "schedules", "ready_schedules", dict(limit=100)),
    Case("claim schedules", "schedules", "claim_schedules", dict(limit=100)),
    # The rest of the hot path and the operator's queries.
    Case("task lookup", "tasks", "get_task", dict(id="todo-77")),
    Case("next delayed task", "tasks", "next_due_at", dict(queues=["q1", "q2"])),
    Case("next schedule", "schedules", "next_schedule_at"),
    Case("recent events", "events", "list_events", EVENT_FILTERS),
    Case(
        "failed results",
        "results",
        "list_results",
        dict(statuses=["failure"], **RESULT_FILTERS),
    ),
    Case(
        "successful results",
        "results",
        "list_results",
        dict(statuses=["success"], **RESULT_FILTERS),
    ),
    Case(
        "heartbeat",
        "workers",
        "heartbeat",
        dict(
            worker_id="w-1",
            hostname="host-1",
            pid=1001,
            queues=["q1"],
            concurrency=8,
            held=["run-1", "run-9", "run-17"],
            stale_after=timedelta(seconds=30),
            stuck_threads=0,
            version="0.1.0",
        ),  # fmt: skip
    ),
    Case("rescue", "workers", "rescue_tasks", dict(caller="w-1")),
    Case("list workers", "workers", "list_workers"),
    Case(
        "enqueue with a dependency",
        "tasks",
        "enqueue_tasks",
        dict(tasks='[{"id": "plan-new", "func": "app.jobs.after", "dependencies": ["todo-1"]}]'),
    ),
    Case(
        "finish",
        "tasks",
        "finish_tasks",
        dict(outcomes='[{"id": "run-1", "attempt": 1, "outcome": "success"}]', worker_id="w-1"),
    ),
    Case("release", "tasks", "release_tasks", dict(ids=["run-9"], worker_id="w-1", reason="x")),
    Case("worker stopped", "workers", "worker_stopped", dict(worker_id="w-2")),
    Case("delete task", "tasks", "delete_task", dict(id="done-5")),
    Case("delete result", "results", "delete_result", dict(task_id="done-5")),
    Case("schedule lookup", "schedules", "get_schedule", dict(id="sched-3")),
    Case("pause schedule", "schedules", "set_schedule_status", dict(id="sched-3", status="paused")),
    Case(
        "list active schedules",
        "schedules",
        "list_schedules",
        dict(
            statuses=["active"], schedule_type=None, queue_name=None, func=None, limit=100, offset=0
        ),
    ),  # fmt: skip
    Case(
        "fire schedules",
        "schedules",
        "fire_schedules",
        dict(ids=["sched-1"], next_runs=[_now() + timedelta(hours=1)], errors=[None]),
    ),
    Case("cancel", "tasks", "cancel_tasks", dict(ids=["todo-5", "todo-6"], reason="plans")),
    Case("cancel a dependency", "tasks", "cancel_tasks", dict(ids=["todo-7"], reason="cascade")),
    Case(
        "update task",
        "tasks",
        "update_task",
        dict(
            id="todo-8",
            queue_name="q3",
            priority=1,
            status="pending",
            func="app.jobs.work_8",
            args="[8]",
            kwargs="{}",
            run_at=None,
            expires_at=None,
            retry_count=0,
            max_retries=3,
            retry_delay=1.0,
            dependencies="[]",
            callbacks="{}",
            metadata="{}",
            task_data="{}",
        ),
    ),
    Case("invariants", "cli", "check_invariants", dict(window=timedelta(hours=1), limit=1000)),
    Case("retry by queue", "tasks", "retry_tasks", dict(ids=None, queue_name="q1", func=None)),
    Case("requeue stalled", "tasks", "requeue_stalled", dict(older_than=timedelta(seconds=30))),
    Case(
        "purge finished",
        "tasks",
        "purge_finished_tasks",
        dict(older_than=timedelta(days=7), batch=500),
    ),
    Case("cleanup expired tasks", "tasks", "cleanup_expired_tasks", dict(batch=500)),
    Case("cleanup expired results", "results", "cleanup_expired_results", dict(batch=500)),
    Case(
        "cleanup old events",
        "events",
        "cleanup_old_events",
        dict(before=_now() - timedelta(days=20), batch=500),
    ),
]


@pytest.fixture(scope="module")
async def big(pg_dsn: str) -> AsyncIterator[BigInstallation]:
    async with big_installation(pg_dsn, "plans", LOAD) as installation:
        yield installation


@pytest.mark.parametrize("case", [c.param() for c in CASES])
async def test_query_uses_the_index_its_comment_names(big: BigInstallation, case: Case) -> None:
    query = big.query(case.file, case.query)
    expected = expected_indexes(query)
    assert expected, f"{case.file}.{case.query}: its comment names no index"

    plan = await explain(big, query, case.params)
    if any("Relation Name" in node for node in scans(plan)):  # not only a function call
        check([plan], expected, f"EXPLAIN {case.query}")


@pytest.mark.contrib  # auto_explain shows the plans inside the stored functions
@pytest.mark.parametrize("case", [c.param() for c in CASES])
async def test_statements_inside_use_the_index_the_comment_names(
    big: BigInstallation, case: Case
) -> None:
    query = big.query(case.file, case.query)
    expected = expected_indexes(query)
    if not big.auto_explain:
        pytest.skip("auto_explain unavailable (not a superuser, or contrib missing)")
    runs = await logged_plans(big, query, case.params)
    for i, plans in enumerate(runs, start=1):
        assert plans, f"auto_explain logged no plan for {case.query}"
        check(plans, expected, f"{case.query}, execution {i} of {RUNS}")


async def test_the_volume_is_there(big: BigInstallation) -> None:
    s = quote_identifier(big.schema)
    counts = await big.conn.fetchrow(
        f"SELECT (SELECT count(*) FROM {s}.tasks WHERE status IN ('completed', 'failed', 'cancelled')) AS finished,"  # noqa: S608
        f" (SELECT count(*) FROM {s}.tasks WHERE status = 'pending') AS pending,"
        f" (SELECT count(*) FROM {s}.results) AS results, (SELECT count(*) FROM {s}.events) AS events"
    )
    assert dict(counts) == {"finished": 200_000, "pending": 20_000, "results": 200_000,
                            "events": 200_000 * 3 + 20_000 + 64 + 1_000}  # fmt: skip


@pytest.mark.parametrize("file", ["tasks", "results", "events", "schedules", "workers"])
def test_every_named_query_names_its_index(file: str) -> None:
    """`Index: <name>` (or `Index: none (why)`) in the comment of every query on the tables."""
    missing = [
        name
        for name, query in vars(getattr(SQLFiles(), file)).items()
        if not name.endswith("_cursor") and "Index:" not in query.doc
    ]
    assert not missing, f"sql/queries/{file}.sql: no 'Index:' in the comment of {missing}"


@pytest.mark.contrib  # measured with auto_explain
async def test_delayed_tasks_stay_off_the_ready_path(pg_dsn: str) -> None:
    """Issue 9, defect 5: with 50,000 tasks delayed into the future (or retries waiting out
    their backoff), one dequeue must not read them. Measured with auto_explain (ANALYZE,
    BUFFERS) on every statement inside omniq_dequeue_v1; before the fix the ready-task query
    filtered all 50,000 rows and read about 1,200 buffers."""
    name = unique_schema("delayed")
    backend = PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=name, max_connections=1))
    try:
        await backend.connect()
    finally:
        await backend.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"SET search_path TO {quote_identifier(name)}")
        await conn.execute(
            """SELECT omniq_enqueue(jsonb_agg(jsonb_build_object(
                   'id', 'later-' || g, 'func', 'app.jobs.later', 'queue_name', 'q',
                   'created_at', now() - interval '1 hour' + g * interval '1 millisecond',
                   'run_at', now() + interval '1 day')))
               FROM generate_series(1, 50000) AS g"""
        )
        await conn.execute(
            """SELECT omniq_enqueue(jsonb_agg(jsonb_build_object(
                   'id', 'ready-' || g, 'func', 'app.jobs.now', 'queue_name', 'q')))
               FROM generate_series(1, 10) AS g"""
        )
        await conn.execute("VACUUM ANALYZE tasks")
        try:
            await conn.execute("LOAD 'auto_explain'")
        except asyncpg.PostgresError:
            pytest.skip("auto_explain unavailable (not a superuser, or contrib missing)")
        notices: list[str] = []
        conn.add_log_listener(lambda _c, msg: notices.append(msg.message))
        await conn.execute(
            "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
            "SET auto_explain.log_analyze = on; SET auto_explain.log_buffers = on;"
            "SET auto_explain.log_format = json; SET auto_explain.log_level = notice"
        )
        taken = await conn.fetch("SELECT id FROM omniq_dequeue_v1(ARRAY['q'], 1, 'w')")
        await conn.execute("RESET auto_explain.log_min_duration")
        assert [r["id"] for r in taken] == ["ready-1"]
        statements = []
        for message in notices:
            start = message.find("{")
            if message.startswith("duration:") and start >= 0:
                doc = json.loads(message[start:])
                plan = doc["Plan"]
                buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
                statements.append((buffers, doc.get("Query Text", "").split("\n")[0][:70]))
        print("\nbuffers per statement of one dequeue with 50,000 delayed tasks:")
        for buffers, text in statements:
            print(f"  {buffers:6d}  {text}")
        inner = statements[:-1]  # the last one logged is the outer SELECT, which adds them up
        assert inner, "auto_explain logged no nested statement"
        assert max(b for b, _ in inner) < 100, statements
    finally:
        await conn.close()
        await drop_schemas(pg_dsn, name)
