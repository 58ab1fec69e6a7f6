"""The specification's code examples, copied verbatim, run as scripts against a PostgreSQL
on localhost:5432 (user postgres, database omniq), as the specification assumes.

A dedicated embedded server is started on port 5432 for this module when the port is free.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from omniq.embedded import EmbeddedPostgres, _port_is_free

REPO = Path(__file__).resolve().parents[2]
ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

ASYNC_QUICK_START = """
import asyncio
from omniq.backend.postgres import create_async_postgres_backend
from omniq.models.task import Task

async def main():
    backend = create_async_postgres_backend(
        host="localhost",
        port=5432,
        database="omniq",
        username="postgres",
        password="password"
    )
    
    async with backend:
        # Create and enqueue a task
        task = Task(
            func="mymodule.my_function",
            args=(1, 2, 3),
            queue_name="default"
        )
        
        await backend.task_queue.enqueue(task)
        
        # Dequeue and process
        dequeued = await backend.task_queue.dequeue(["default"])
        if dequeued:
            print(f"Processing task: {dequeued.id}")

asyncio.run(main())
"""  # noqa: W293 (the specification's trailing whitespace, kept verbatim)

SYNC_QUICK_START = """
from omniq.backend.postgres import create_postgres_backend
from omniq.models.task import Task

backend = create_postgres_backend(
    host="localhost",
    port=5432,
    database="omniq",
    username="postgres",
    password="password"
)

with backend:
    # Create and enqueue a task
    task = Task(
        func="mymodule.my_function",
        args=(1, 2, 3),
        queue_name="default"
    )
    
    backend.task_queue.enqueue_sync(task)
    
    # Dequeue and process
    dequeued = backend.task_queue.dequeue_sync(["default"])
    if dequeued:
        print(f"Processing task: {dequeued.id}")
"""  # noqa: W293

POSTGRES_CONFIG = """
from omniq.models.config import PostgresConfig
from omniq.backend.postgres import PostgreSQLBackend

config = PostgresConfig(
    host="localhost",
    port=5432,
    database="omniq",
    username="postgres",
    password="password",
    min_connections=1,
    max_connections=10,
    command_timeout=60.0,
    schema="public",
    tasks_table="tasks",
    results_table="results",
    events_table="events",
    schedules_table="schedules"
)

backend = PostgreSQLBackend(config)
"""

STORAGE_ASYNC = """
# Async
await backend.task_queue.enqueue(task)
task = await backend.task_queue.dequeue(["queue1", "queue2"])
await backend.task_queue.update_task(task)
tasks = await backend.task_queue.list_tasks(queue_name="default", limit=10)

# Async
await backend.result_storage.set(result)
result = await backend.result_storage.get(task_id)
results = await backend.result_storage.list_results(status="success", limit=10)

# Async
await backend.event_storage.log_event(event)
events = await backend.event_storage.get_events(task_id=task_id, limit=10)

# Async
await backend.schedule_storage.save_schedule(schedule)
schedule = await backend.schedule_storage.get_schedule(schedule_id)
ready_schedules = await backend.schedule_storage.get_ready_schedules()
"""

STORAGE_SYNC = """
# Sync
backend.task_queue.enqueue_sync(task)
task = backend.task_queue.dequeue_sync(["queue1", "queue2"])
backend.task_queue.update_task_sync(task)
tasks = backend.task_queue.list_tasks_sync(queue_name="default", limit=10)

# Sync
backend.result_storage.set_sync(result)
result = backend.result_storage.get_sync(task_id)
results = backend.result_storage.list_results_sync(status="success", limit=10)

# Sync
backend.event_storage.log_event_sync(event)
events = backend.event_storage.get_events_sync(task_id=task_id, limit=10)

# Sync
backend.schedule_storage.save_schedule_sync(schedule)
schedule = backend.schedule_storage.get_schedule_sync(schedule_id)
ready_schedules = backend.schedule_storage.get_ready_schedules_sync()
"""

CONNECTION_POOLING = """
backend = create_postgres_backend(
    min_connections=5,
    max_connections=20,
    command_timeout=30.0
)
"""

SCHEMA_ISOLATION = """
# Development
dev_backend = create_postgres_backend(schema="omniq_dev")

# Production
prod_backend = create_postgres_backend(schema="omniq_prod")
"""

ERROR_HANDLING = """
from omniq.backend.postgres import create_postgres_backend
import asyncpg

try:
    backend = create_postgres_backend(
        host="localhost",
        database="omniq"
    )
    
    with backend:
        # Your operations here
        pass
        
except asyncpg.ConnectionError as e:
    print(f"Database connection failed: {e}")
except Exception as e:
    print(f"Unexpected error: {e}")
"""  # noqa: W293

CLEANUP = """
# Clean up expired tasks
expired_count = await backend.task_queue.cleanup_expired_tasks()

# Clean up expired results
expired_results = await backend.result_storage.cleanup_expired_results()

# Clean up old events
from datetime import datetime, timedelta
cutoff = datetime.utcnow() - timedelta(days=30)
old_events = await backend.event_storage.cleanup_old_events(cutoff)

# Clean up expired schedules
expired_schedules = await backend.schedule_storage.cleanup_expired_schedules()
"""

MONITORING = """
# Get queue sizes
queue_size = await backend.task_queue.get_queue_size("default")

# List recent events
recent_events = await backend.event_storage.get_events(
    limit=100,
    offset=0
)

# Get ready schedules
ready = await backend.schedule_storage.get_ready_schedules()
"""

DEBUG_LOGGING = """
import logging
logging.basicConfig(level=logging.DEBUG)
"""

ROW_LOCKING_SQL = """
SELECT id FROM tasks
WHERE queue_name = ANY($1::text[])
AND status = 'pending'
AND (run_at IS NULL OR run_at <= $2)
AND (expires_at IS NULL OR expires_at > $2)
ORDER BY priority DESC, created_at ASC
FOR UPDATE SKIP LOCKED
LIMIT 1
"""


def in_async_main(snippet: str, setup: str = "", after: str = "") -> str:
    """Wrap top-level ``await`` lines of the specification in ``async def main()``."""
    body = textwrap.indent(textwrap.dedent(setup) + snippet + textwrap.dedent(after), "        ")
    return (
        "import asyncio\n"
        "from omniq.backend.postgres import create_async_postgres_backend\n\n"
        "async def main():\n"
        "    backend = create_async_postgres_backend()\n"
        "    async with backend:\n"
        f"{body}\n"
        "asyncio.run(main())\n"
    )


@pytest.fixture(scope="module")
def localhost_5432() -> Iterator[EmbeddedPostgres]:
    if not _port_is_free(5432):
        pytest.skip("port 5432 is taken: the examples need their own server on localhost:5432")
    server = EmbeddedPostgres(port=5432, durable=False)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"could not start PostgreSQL on port 5432: {exc}")
    try:
        yield server
    finally:
        server.stop()


def run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_async_quick_start(localhost_5432: EmbeddedPostgres) -> None:
    assert re.fullmatch(f"Processing task: {ID}\n", run(ASYNC_QUICK_START))


def test_sync_quick_start(localhost_5432: EmbeddedPostgres) -> None:
    assert re.fullmatch(f"Processing task: {ID}\n", run(SYNC_QUICK_START))


def test_postgres_config_example(localhost_5432: EmbeddedPostgres) -> None:
    out = run(
        POSTGRES_CONFIG + "\nwith backend:\n"
        "    print(backend.config.max_connections, backend.task_queue.get_queue_size_sync() >= 0)\n"
    )
    assert out == "10 True\n"


def test_storage_component_examples(localhost_5432: EmbeddedPostgres) -> None:
    setup = """
    from omniq.models.task import Task
    from omniq.models.result import TaskResult
    from omniq.models.event import TaskEvent
    from omniq.models.schedule import Schedule
    task = Task(func="mymodule.my_function", queue_name="queue2")
    task_id = task.id
    result = TaskResult(task_id=task_id, status="success", result=6)
    event = TaskEvent(task_id=task_id, event_type="completed")
    schedule = Schedule(func="mymodule.report", cron_expression="0 3 * * *")
    schedule_id = schedule.id
    """
    check = """
    assert task.id == task_id and task.status == "running", task
    assert isinstance(tasks, list) and all(t.queue_name == "default" for t in tasks)
    assert result.result == 6 and any(r.task_id == task_id for r in results)
    assert "completed" in [e.event_type for e in events]
    assert schedule.id == schedule_id and isinstance(ready_schedules, list)
    print("ok")
    """
    assert run(in_async_main(STORAGE_ASYNC, setup, check)) == "ok\n"
    sync_script = (
        "from omniq.backend.postgres import create_postgres_backend\n"
        "with create_postgres_backend() as backend:\n"
        + textwrap.indent(textwrap.dedent(setup) + STORAGE_SYNC + textwrap.dedent(check), "    ")
    )
    assert run(sync_script) == "ok\n"


def test_pooling_isolation_and_error_handling_examples(localhost_5432: EmbeddedPostgres) -> None:
    script = (
        "from omniq.backend.postgres import create_postgres_backend\n"
        + CONNECTION_POOLING
        + SCHEMA_ISOLATION
        + "for b in (backend, dev_backend, prod_backend):\n"
        "    with b:\n"
        "        print(b.config.schema, b.config.min_connections, b.config.max_connections,\n"
        "              b.task_queue.get_queue_size_sync() >= 0)\n"
    )
    assert run(script) == "public 5 20 True\nomniq_dev 1 10 True\nomniq_prod 1 10 True\n"
    assert run(ERROR_HANDLING) == ""  # connects fine: nothing to report


def test_cleanup_and_monitoring_examples(localhost_5432: EmbeddedPostgres) -> None:
    after = """
    print(type(expired_count).__name__, type(expired_results).__name__,
          type(old_events).__name__, type(expired_schedules).__name__,
          type(queue_size).__name__, type(recent_events).__name__, type(ready).__name__)
    """
    out = run(DEBUG_LOGGING + in_async_main(CLEANUP + MONITORING, after=after))
    assert out == "int int int int int list list\n"


async def test_row_level_locking_query_runs_on_the_tables(localhost_5432: EmbeddedPostgres) -> None:
    run(SYNC_QUICK_START)  # the tables exist in public; add a pending task
    conn = await asyncpg.connect(localhost_5432.dsn)
    try:
        task_id = await conn.fetchval(
            "INSERT INTO tasks (id, queue_name, func, args, kwargs, created_at, task_data) "
            "VALUES ('spec-lock', 'locking', 'm.f', '[]', '{}', now(), '{}') RETURNING id"
        )
        async with conn.transaction():
            got = await conn.fetchval(ROW_LOCKING_SQL, ["locking"], datetime.now(UTC))
        assert got == task_id
    finally:
        await conn.close()
