"""Least privilege: sql/roles.sql applied with psql, then OmniQ used as each role by a LOGIN
user of its own (the embedded server trusts local connections, so no passwords). What a role
may do works through the Python API and psql; what it may not do fails with
PermissionDeniedError (Python) or `permission denied` (SQL).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import WorkerProtocol
from omniq.embedded import find_bindir
from omniq.errors import PermissionDeniedError
from omniq.identifiers import quote_identifier
from omniq.models.config import PostgresConfig
from omniq.models.enums import ResultStatus, TaskStatus
from omniq.models.schedule import Schedule
from omniq.models.task import Task
from omniq.worker import AsyncWorker
from tests.support.db import ExternalServer, drop_schemas, unique_schema
from tests.support.processes import child_env

ROLES_SQL = Path(__file__).resolve().parents[2] / "sql" / "roles.sql"


@pytest.fixture(autouse=True)
def _embedded_only(pg_server: Any) -> None:
    if isinstance(pg_server, ExternalServer):
        pytest.skip("creates roles and logs in without a password: needs the embedded server")


def as_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def apply_roles(dsn: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """Apply sql/roles.sql the way a DBA does: psql -v name=value -f sql/roles.sql."""
    args = [str(find_bindir() / "psql"), "-X", "-d", dsn, "-f", str(ROLES_SQL)]
    for name, value in variables.items():
        args[1:1] = ["-v", f"{name}={value}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@dataclass
class Installation:
    """One OmniQ schema with roles applied, and a login user for each role."""

    dsn: str  # superuser
    schema: str
    roles: dict[str, str]  # producer/worker/admin -> group role
    users: dict[str, str]  # producer/worker/admin/nobody -> login user
    made: list[PostgreSQLBackend]

    def dsn_of(self, who: str) -> str:
        return as_user(self.dsn, self.users[who])

    def apply(self, **variables: str) -> subprocess.CompletedProcess[str]:
        names = {f"{k}_role": v for k, v in self.roles.items()}
        return apply_roles(self.dsn, schema=self.schema, **names, **variables)

    async def backend(self, who: str, *, connect: bool = True) -> PostgreSQLBackend:
        backend = PostgreSQLBackend(
            PostgresConfig(dsn=self.dsn_of(who), schema=self.schema, max_connections=2)
        )
        self.made.append(backend)
        if connect:
            await backend.connect()
        return backend

    async def connect(self, who: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.dsn_of(who))
        await conn.execute(f"SET search_path TO {quote_identifier(self.schema)}")
        return conn


@pytest.fixture
async def inst(pg_dsn: str) -> AsyncIterator[Installation]:
    tag = uuid.uuid4().hex[:8]
    schema = unique_schema("roles")
    roles = {kind: f"omniq_{kind}_{tag}" for kind in ("producer", "worker", "admin")}
    users = {kind: f"{kind}_user_{tag}" for kind in ("producer", "worker", "admin", "nobody")}
    installer = PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=schema, max_connections=1))
    await installer.connect()  # installed by the superuser, like a first deployment
    await installer.close()
    installation = Installation(pg_dsn, schema, roles, users, [])
    applied = installation.apply()
    assert applied.returncode == 0, applied.stderr
    admin = await asyncpg.connect(pg_dsn)
    try:
        for kind in ("producer", "worker", "admin"):
            await admin.execute(f"CREATE ROLE {users[kind]} LOGIN IN ROLE {roles[kind]}")
        # Sessions of the admin user act as the admin role: what they create, it owns.
        await admin.execute(f"ALTER ROLE {users['admin']} SET role = '{roles['admin']}'")
        await admin.execute(f"CREATE ROLE {users['nobody']} LOGIN")
        await admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {users['nobody']}")
        yield installation
    finally:
        for backend in installation.made:
            await backend.close()
        await drop_schemas(pg_dsn, schema)
        for name in [*users.values(), *roles.values()]:
            await admin.execute(f"DROP OWNED BY {name}")  # privileges on other objects
            await admin.execute(f"DROP ROLE {name}")
        await admin.close()


async def denied(call: Callable[[], Awaitable[Any]]) -> str:
    """The Python API call fails with OmniQ's PermissionDeniedError; returns the message."""
    with pytest.raises(PermissionDeniedError) as info:
        await call()
    return str(info.value)


async def refused(conn: asyncpg.Connection, statement: str) -> None:
    """The SQL statement fails for lack of a privilege (or of ownership)."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied|must be owner"):
        await conn.execute(statement)


# -- producer ------------------------------------------------------------------------------


async def test_producer_enqueues_and_reads_results_but_touches_nothing(
    inst: Installation,
) -> None:
    producer = await inst.backend("producer")  # connecting checks the schema version
    first = Task(func="operator.add", args=(2, 3))
    await producer.task_queue.enqueue(first)
    after = Task(func="operator.mul", args=(4, 5), dependencies=[first.id])
    await producer.task_queue.enqueue(after)  # dependencies too, with no write privilege
    assert after.status == TaskStatus.WAITING
    (fanned,) = await producer.task_queue.enqueue_calls("operator.neg", [(8,)])  # typed arrays

    sql = await inst.connect("producer")
    try:
        from_sql = await sql.fetchval("SELECT omniq_add_task('operator.neg', '[7]')")
        # Read: tasks (every queue's arguments, by default), results, events.
        assert await sql.fetchval("SELECT args FROM tasks WHERE id = $1", first.id) == "[2, 3]"
        assert await sql.fetchval("SELECT count(*) FROM events") == 0  # readable, none stored
        history = await producer.event_storage.get_events(task_id=first.id)
        assert [str(e.event_type) for e in history] == ["enqueued"]  # derived from the row
        # Write: nothing, except through omniq_enqueue.
        for statement in (
            "INSERT INTO tasks (id, queue_name, func, args, kwargs, created_at, task_data)"
            " VALUES ('forged', 'default', 'os.system', '[]', '{}', now(), '{}')",
            "UPDATE tasks SET status = 'completed'",
            "DELETE FROM tasks",
            "INSERT INTO results (task_id, created_at, result_data) VALUES ('x', now(), '{}')",
            "DELETE FROM results",
            "INSERT INTO events (task_id, event_type, timestamp) VALUES ('x', 'forged', now())",
            "UPDATE schedules SET status = 'paused'",
            "SELECT omniq_dequeue_v1(ARRAY['default'], 1, 'thief')",
            "SELECT omniq_purge_finished_tasks('0 seconds')",
            "CREATE TABLE mine (x int)",
        ):
            await refused(sql, statement)
        # Nor can it take an id OmniQ reserves for a schedule's fire or a callback first.
        for squatted in ("nightly@2030-01-01T00:00:00.000000Z", f"{first.id}@on_failure"):
            with pytest.raises(asyncpg.InvalidParameterValueError, match="reserved"):
                await sql.fetch(
                    "SELECT * FROM omniq_enqueue($1::jsonb)",
                    f'[{{"id": "{squatted}", "func": "os.system"}}]',
                )
    finally:
        await sql.close()

    worker = await inst.backend("worker")
    stats = await AsyncWorker(worker, concurrency=2, install_signal_handlers=False).run(burst=True)
    assert stats.succeeded == 4

    result = await producer.result_storage.wait(first.id, timeout=10)
    assert result is not None and result.status == ResultStatus.SUCCESS and result.result == 5
    assert (await producer.result_storage.get(after.id)).result == 20
    assert (await producer.result_storage.get(from_sql)).result == -7
    assert (await producer.result_storage.get(fanned)).result == -8
    assert (await producer.task_queue.get_task(first.id)).status == TaskStatus.COMPLETED

    queue = producer.task_queue
    assert "permission denied" in await denied(lambda: queue.dequeue("default"))
    await denied(lambda: queue.cancel_task(after.id))
    await denied(lambda: queue.retry_tasks(queue_name="default"))
    await denied(lambda: queue.purge_finished_tasks(timedelta(0)))
    await denied(lambda: queue.delete_task(first.id))
    await denied(lambda: producer.result_storage.delete(first.id))
    await denied(lambda: producer.event_storage.cleanup_old_events(datetime.now(UTC)))
    await denied(
        lambda: producer.schedule_storage.save_schedule(
            Schedule(func="operator.add", interval_seconds=60, args=(1, 2))
        )
    )


async def test_producer_without_task_reads_sees_results_only(inst: Installation) -> None:
    applied = inst.apply(producer_reads_tasks="off")
    assert applied.returncode == 0, applied.stderr
    producer = await inst.backend("producer")
    task = Task(func="operator.add", args=("secret", "!"))
    await producer.task_queue.enqueue(task)
    await denied(lambda: producer.task_queue.get_task(task.id))  # other queues' arguments too
    await denied(lambda: producer.event_storage.get_events(task_id=task.id))
    sql = await inst.connect("producer")
    try:
        await refused(sql, "SELECT args FROM tasks")
        await refused(sql, "SELECT * FROM events")
    finally:
        await sql.close()

    worker = await inst.backend("worker")
    await AsyncWorker(worker, install_signal_handlers=False).run(burst=True)
    result = await producer.result_storage.wait(task.id, timeout=10)
    assert result is not None and result.result == "secret!"

    again = inst.apply(producer_reads_tasks="on")  # and back: the script is idempotent
    assert again.returncode == 0, again.stderr
    assert (await producer.task_queue.get_task(task.id)).args == ("secret", "!")


# -- worker --------------------------------------------------------------------------------


async def test_worker_runs_tasks_and_schedules_but_does_no_maintenance(
    inst: Installation,
) -> None:
    admin = await inst.backend("admin")
    due = datetime.now(UTC) - timedelta(seconds=1)
    schedule = Schedule(func="operator.add", interval_seconds=3600, args=(1, 1), next_run=due)
    await admin.schedule_storage.save_schedule(schedule)
    await admin.task_queue.enqueue(
        Task(
            func="operator.truediv",
            args=(1, 0),
            max_retries=0,
            callbacks={"on_failure": "json.dumps"},
        )
    )

    worker = await inst.backend("worker")
    fired = await worker.schedule_storage.fire_due_schedules()
    assert fired == 1
    stats = await AsyncWorker(worker, install_signal_handlers=False).run(burst=True)
    assert (stats.succeeded, stats.failed) == (2, 1)  # the schedule's task and the callback
    assert (await WorkerProtocol(worker).rescue()).rescued == 0
    assert await worker.monitor.workers() == []  # it deregistered when it stopped

    queue = worker.task_queue
    await denied(lambda: queue.purge_finished_tasks(timedelta(0)))
    await denied(lambda: queue.cleanup_expired_tasks())
    await denied(lambda: queue.retry_tasks(queue_name="default"))
    await denied(lambda: queue.requeue_stalled(timedelta(0)))
    await denied(lambda: queue.delete_task(schedule.id))
    await denied(lambda: worker.result_storage.cleanup_expired_results())
    await denied(lambda: worker.schedule_storage.pause_schedule(schedule.id))
    sql = await inst.connect("worker")
    try:
        for statement in (
            # Issue 9, defect 6: a compromised worker host must not rewrite another task
            # (its func to os.system) nor forge outcomes: it writes no table directly.
            "UPDATE tasks SET func = 'os.system', args = '[\"id\"]' WHERE status = 'pending'",
            "INSERT INTO tasks (id, queue_name, func, args, kwargs, created_at, task_data)"
            " VALUES ('forged', 'default', 'os.system', '[]', '{}', now(), '{}')",
            "UPDATE results SET result = '\"forged\"'",
            "INSERT INTO results (task_id, created_at, result_data) VALUES ('x', now(), '{}')",
            "INSERT INTO events (task_id, event_type, timestamp) VALUES ('x', 'forged', now())",
            "UPDATE schedules SET func = 'os.system'",
            "UPDATE omniq_workers SET stale_after = '1 year'",
            "DELETE FROM omniq_workers",
            "DELETE FROM events",
            "DELETE FROM results",
            "SELECT count(*) FROM events",
            "CREATE INDEX mine ON tasks (func)",
            # The terminal routine and the other helpers run only inside the protocol functions.
            """SELECT * FROM omniq_end_tasks('[{"id": "x", "status": "completed"}]', '{pending}')""",
            "SELECT omniq_cancel_tasks(ARRAY['x'], 'no')",
            "SELECT omniq_expire_tasks()",
        ):
            await refused(sql, statement)
    finally:
        await sql.close()


# -- admin ---------------------------------------------------------------------------------


async def test_admin_migrates_and_maintains(inst: Installation) -> None:
    superuser = await asyncpg.connect(inst.dsn)
    try:  # pretend a new OmniQ release changed a function file
        await superuser.execute(
            f"DELETE FROM {quote_identifier(inst.schema)}.omniq_migrations"  # noqa: S608
            " WHERE name = 'functions/maintenance.sql'"
        )
    finally:
        await superuser.close()
    admin = await inst.backend("admin", connect=False)
    assert await admin.migrate(dry_run=True) == ["functions/maintenance.sql"]
    assert await admin.migrate() == ["functions/maintenance.sql"]  # as the owner role
    await admin.connect()

    producer = await inst.backend("producer")
    task = Task(func="operator.add", args=(1, 2), max_retries=0)
    await producer.task_queue.enqueue(task)
    queue = admin.task_queue
    assert await queue.cancel_task(task.id)
    assert await queue.retry_tasks([task.id]) == 1
    assert await queue.requeue_stalled(timedelta(hours=1)) == 0
    assert await queue.cleanup_expired_tasks() == 0
    assert await queue.purge_finished_tasks(timedelta(days=1)) == 0
    schedule = Schedule(func="operator.add", interval_seconds=60, args=(1, 2))
    await admin.schedule_storage.save_schedule(schedule)
    assert await admin.schedule_storage.pause_schedule(schedule.id)
    assert await admin.schedule_storage.resume_schedule(schedule.id)

    sql = await inst.connect("admin")
    try:
        assert await sql.fetchval("SELECT current_user") == inst.roles["admin"]
        await sql.execute("CALL omniq_cleanup('30 days', 1000)")
        assert len(await sql.fetch("SELECT * FROM omniq_queue_overview")) == 1
    finally:
        await sql.close()


# -- without roles.sql, and the definer function --------------------------------------------


async def test_other_users_cannot_enqueue(inst: Installation) -> None:
    """omniq_enqueue runs with its owner's rights, so PUBLIC may not call it."""
    sql = await inst.connect("nobody")
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="omniq_enqueue"):
            await sql.fetch("""SELECT * FROM omniq_enqueue('[{"func": "os.system"}]')""")
        await refused(sql, "SELECT omniq_add_task('os.system', '[\"id\"]')")
    finally:
        await sql.close()


async def test_fresh_install_revokes_enqueue_from_public(pg_dsn: str) -> None:
    """Before any roles.sql: the SECURITY DEFINER functions are not open to every user, and
    each pins its search_path with the temporary schema last."""
    name = unique_schema("definer")
    backend = PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=name, max_connections=1))
    await backend.connect()
    await backend.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            """SELECT p.proname, p.prosecdef, p.proconfig,
                      has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
               FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
               WHERE n.nspname = $1 AND p.prosecdef ORDER BY p.proname""",
            name,
        )
        assert {r["proname"] for r in rows} >= {
            "omniq_enqueue", "omniq_enqueue_v1", "omniq_enqueue_one_v1", "omniq_enqueue_calls_v1",
            "omniq_dequeue_v1",
            "omniq_finish_tasks_v1",
            "omniq_release_tasks_v1", "omniq_cancel_tasks", "omniq_cancel_tasks_v1",
            "omniq_heartbeat_v1", "omniq_worker_stopped_v1", "omniq_rescue_tasks",
            "omniq_rescue_tasks_v1", "omniq_claim_schedules_v1", "omniq_fire_schedules_v1",
            "omniq_waiting_committed",
        }  # fmt: skip
        for row in rows:
            assert not row["public_execute"], row["proname"]
            path = next(c for c in row["proconfig"] if c.startswith("search_path="))
            assert path == f"search_path={name}, pg_temp", (row["proname"], path)
    finally:
        await conn.close()
        await drop_schemas(pg_dsn, name)


async def test_doctor_recognises_the_roles(inst: Installation) -> None:
    """A worker or producer role writes no table: `omniq doctor` says so, not FAIL."""
    for who in ("worker", "producer"):
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "omniq", "doctor", "--dsn", inst.dsn_of(who), "--schema",
             inst.schema],
            capture_output=True, text=True, timeout=120, env=child_env(), check=False,
        )  # fmt: skip
        assert f"OK    privileges  acts through OmniQ's functions as a {who} role" in proc.stdout, (
            proc.stdout + proc.stderr
        )
