"""What a job leaves on disk (issue 12): one task row and one result row, no life-cycle events;
ids generated in SQL are time-ordered; large payloads are compressed with lz4 where the server
has it; and `omniq status` (omniq_queue_overview, recent outcomes) reads live tasks and the
last hour, never the whole history. The bytes themselves are measured by scripts/bench_storage
(this file prints what it sees, asserting rows and plans, not sizes)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from omniq import Task
from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import WorkerProtocol
from omniq.identifiers import quote_identifier
from tests.support.db import Database
from tests.support.outcomes import outcome
from tests.support.plans import BigInstallation, big_installation, check_query, scans


async def test_a_job_leaves_a_task_row_and_a_result_row(
    backend: PostgreSQLBackend, protocol: WorkerProtocol, db: Database, admin: asyncpg.Connection
) -> None:
    """Enqueue, take, succeed, fail: the events table holds only the failure."""
    tasks = [Task(func="tests.support.jobs.noop") for _ in range(50)]
    start = await admin.fetchval("SELECT pg_current_wal_lsn()")
    await backend.task_queue.enqueue_many(tasks)
    taken = await protocol.take(["default"], 50, "w1")
    ok, bad = taken[:-1], taken[-1]
    await protocol.finish([outcome(t, "success", result=None) for t in ok], "w1")
    bad_outcome = outcome(bad, "failure", error="boom", traceback="Traceback ...")
    await protocol.finish([bad_outcome], "w1")  # retried: 'executing' and 'retry' stored
    wal = await admin.fetchval("SELECT pg_current_wal_lsn()") - start
    print(f"WAL for 50 jobs, the whole server (other tests may write too): {wal / 50:,.0f} B/job")

    assert await db.count("tasks") == 50 and await db.count("results") == 49
    kinds = await db.rows("events", order="timestamp")
    assert [(e["task_id"], e["event_type"]) for e in kinds] == [
        (bad.id, "executing"),
        (bad.id, "retry"),
    ]


async def test_sql_side_ids_are_time_ordered(backend: PostgreSQLBackend, db: Database) -> None:
    """A task enqueued from SQL without an id gets a UUIDv7-style one (omniq_new_id), so the
    primary key grows at its right edge, as with the Python client's ids."""
    schema = quote_identifier(db.schema)
    docs = [{"func": "app.jobs.f"}] * 3  # the connection's codec encodes JSONB
    await db.conn.execute(f"SELECT {schema}.omniq_enqueue($1::jsonb)", docs)  # noqa: S608
    ids = [r["id"] for r in await db.rows("tasks", order="created_at, id")]
    assert len(ids) == 3 and all(i[14] == "7" for i in ids), ids
    assert ids == sorted(ids)


async def test_large_payloads_are_compressed_with_lz4_where_the_server_has_it(
    backend: PostgreSQLBackend, db: Database
) -> None:
    has_lz4 = await db.conn.fetchval(
        "SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    )
    rows = await db.conn.fetch(
        "SELECT c.relname, a.attname, a.attcompression::text FROM pg_attribute AS a"
        " JOIN pg_class AS c ON c.oid = a.attrelid JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND a.attcompression <> ''",
        db.schema,
    )
    compressed = {(r["relname"], r["attname"]): r["attcompression"] for r in rows}
    expected = {
        ("tasks", "args"), ("tasks", "kwargs"), ("results", "result"), ("results", "traceback"),
        ("events", "traceback"),
    }  # fmt: skip
    print(f"lz4 on this server: {has_lz4}; columns with a compression set: {compressed}")
    if not has_lz4:  # pgserver's PostgreSQL 16 is built without lz4: pglz, as before
        assert compressed == {}
        return
    assert compressed == dict.fromkeys(expected, "l")
    task = Task(func="tests.support.jobs.echo", args=("x" * 20_000,))
    await backend.task_queue.enqueue(task)
    method = await db.conn.fetchval(
        f"SELECT pg_column_compression(args) FROM {db.table('tasks')} WHERE id = $1",  # noqa: S608
        task.id,
    )
    assert method == "lz4"


# -- omniq status on a big installation ------------------------------------------------------

NOW = datetime.now(UTC)
# 100,000 finished tasks over 30 days (60 of them in the last hour), with their results; 2,000
# pending (a tenth due later), 40 running, 30 waiting, 20 failed.
LOAD = """
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data,
    started_at, finished_at, worker_id, attempts)
SELECT 'done-' || g, 'q' || (g % 3), CASE WHEN g % 5000 = 0 THEN 'failed'
                                          WHEN g % 997 = 0 THEN 'cancelled' ELSE 'completed' END,
       'app.jobs.work', '[]', '{}', now() - g * interval '25 seconds', '{}',
       now() - g * interval '25 seconds', now() - g * interval '25 seconds', 'w-1', 1
FROM generate_series(1, 100000) AS g;
INSERT INTO results (task_id, status, created_at, completed_at, result_data)
SELECT t.id, CASE t.status WHEN 'completed' THEN 'success' WHEN 'failed' THEN 'failure'
                           ELSE t.status END, t.finished_at, t.finished_at, '{}'
FROM tasks AS t;
INSERT INTO tasks (id, queue_name, status, delayed, func, args, kwargs, created_at, run_at,
    task_data)
SELECT 'todo-' || g, 'q' || (g % 3), 'pending', g % 10 = 0, 'app.jobs.work', '[]', '{}',
       now() - interval '1 minute', CASE WHEN g % 10 = 0 THEN now() + interval '1 hour' END, '{}'
FROM generate_series(1, 2000) AS g;
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data,
    started_at, worker_id, attempts)
SELECT 'run-' || g, 'q' || (g % 3), 'running', 'app.jobs.work', '[]', '{}', now(), '{}', now(),
       'w-1', 1
FROM generate_series(1, 40) AS g;
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data,
    dependencies)
SELECT 'wait-' || g, 'q0', 'waiting', 'app.jobs.after', '[]', '{}', now(), '{}',
       jsonb_build_array('todo-' || g)
FROM generate_series(1, 30) AS g;
"""
STATUS_READS = {
    "queue overview": ("queue_overview", {}),
    "recent outcomes": ("recent_outcomes", {"since": NOW - timedelta(hours=1)}),
}


@pytest.fixture(scope="module")
async def big(pg_dsn: str) -> AsyncIterator[BigInstallation]:
    vacuum = "VACUUM ANALYZE tasks, results"
    async with big_installation(pg_dsn, "status", LOAD, then=[vacuum]) as installation:
        yield installation


@pytest.mark.parametrize("case", list(STATUS_READS))
async def test_status_reads_live_tasks_and_the_last_hour(big: BigInstallation, case: str) -> None:
    """The view used to count every task (about 2 s at 10,000,000 finished): now its plan
    reads the partial indexes of live tasks and one hour of results, and few rows."""
    name, params = STATUS_READS[case]
    query = big.query("cli", name)
    await check_query(big, query, params, f"cli.{name}")
    text = await big.conn.fetchval(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query.sql, *query.args(params)
    )
    plan = json.loads(text)[0]
    read = _rows_read(plan["Plan"])
    print(f"cli.{name}: {read:,} rows read, {plan['Execution Time']:.1f} ms")
    assert read < 10_000, f"cli.{name} read {read:,} rows of 102,090 tasks"


def _rows_read(plan: dict[str, Any]) -> int:
    return sum(
        int(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) + n.get("Rows Removed by Filter", 0))
        for n in scans(plan)
        if "Scan" in n["Node Type"]
    )


async def test_the_overview_counts(big: BigInstallation) -> None:
    query = big.query("cli", "queue_overview")
    rows = {r["queue_name"]: dict(r) for r in await query(big.conn)}
    assert sum(r["ready"] for r in rows.values()) == 1800
    assert sum(r["scheduled_later"] for r in rows.values()) == 200
    assert sum(r["running"] for r in rows.values()) == 40
    assert rows["q0"]["waiting"] == 30
    assert sum(r["failed"] for r in rows.values()) == 20  # every failed task kept
    # The last hour: tasks done-1 .. done-143 finished in it (one every 25 s).
    assert sum(r["completed"] for r in rows.values()) == 143
    assert sum(r["cancelled_or_expired"] for r in rows.values()) == 0
    assert all(r["oldest_ready_age"] >= timedelta(minutes=1) for r in rows.values())
