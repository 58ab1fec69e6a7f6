"""Errors a user can act on, and bad input that stores nothing."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import socket
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from omniq.backend.postgres import (
    PostgreSQLBackend,
    create_async_postgres_backend,
    create_postgres_backend,
)
from omniq.errors import (
    AuthenticationError,
    DatabaseConnectionError,
    DatabaseNotFoundError,
    PermissionDeniedError,
    PoolExhaustedError,
    QueryTimeoutError,
)
from omniq.models.schedule import Schedule
from omniq.models.task import Task
from tests.support.db import Database

# -- values JSON cannot carry ----------------------------------------------------------

UNSTORABLE = [
    object(),
    {1, 2},
    frozenset(),
    datetime(2030, 1, 1),
    math.nan,
    math.inf,
    "NUL \x00 inside",
    2**64 + 1,
    -(2**64) - 1,
    b"bytes",
    {1: "int key"},
    [1, [2, [math.nan]]],
]


def value_id(value: Any) -> str:
    return "object" if type(value) is object else f"{type(value).__name__}:{value!r}"[:30]


@pytest.mark.parametrize("value", UNSTORABLE, ids=value_id)
async def test_unstorable_values_raise_type_error_and_store_nothing(
    value: Any, backend: PostgreSQLBackend, db: Database
) -> None:
    for where, fields in (
        ("args", {"args": (1, value)}),
        ("kwargs", {"kwargs": {"ok": 1, "bad": value}}),
        ("metadata", {"metadata": {"bad": value}}),
    ):
        task = Task(func="m.f", **fields)
        with pytest.raises(TypeError) as info:
            await backend.task_queue.enqueue(task)
        assert where in str(info.value) and task.id in str(info.value)  # names what to fix
        with pytest.raises(TypeError):
            await backend.task_queue.enqueue_many([Task(func="m.ok"), task])
    assert await db.count("tasks") == 0
    assert await db.count("events") == 0


async def test_bad_schedule_args_store_nothing(backend: PostgreSQLBackend, db: Database) -> None:
    with pytest.raises(TypeError):
        await backend.schedule_storage.save_schedule(
            Schedule(func="m.f", interval_seconds=5, kwargs={"when": datetime(2030, 1, 1)})
        )
    assert await db.count("schedules") == 0


def test_invalid_cron_and_func_raise_value_error() -> None:
    with pytest.raises(ValueError, match="cron"):
        Schedule(func="m.f", cron_expression="every day at noon")
    with pytest.raises(ValueError, match="cron"):
        Schedule(func="m.f", cron_expression="* * * *")
    with pytest.raises(ValueError, match="import path"):
        Task(func="not a module path")
    with pytest.raises(ValueError, match="import path"):
        Schedule(func="os.path.", interval_seconds=1)


# -- connecting ------------------------------------------------------------------------


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def loop_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "omniq-loop")


async def test_refused_connection_is_a_connection_error_naming_host_and_port() -> None:
    port = refused_port()
    backend = create_async_postgres_backend(host="127.0.0.1", port=port, connect_timeout=5)
    with pytest.raises(ConnectionError) as info:
        async with backend:
            pass
    assert isinstance(info.value, DatabaseConnectionError)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "running" in str(info.value)  # the hint
    dsn_backend = create_async_postgres_backend(dsn=f"postgresql://u@127.0.0.1:{port}/x")
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        await dsn_backend.connect()


def test_refused_connection_sync() -> None:
    port = refused_port()
    threads = loop_threads()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        with create_postgres_backend(host="127.0.0.1", port=port):
            pass
    assert loop_threads() == threads  # the loop thread of the failed backend is gone


async def test_unreachable_host_is_a_connection_error() -> None:
    # TEST-NET-1 (RFC 5737) is never routed: the connect fails or times out quickly.
    backend = create_async_postgres_backend(host="192.0.2.1", port=5432, connect_timeout=0.5)
    with pytest.raises(ConnectionError, match="192.0.2.1:5432"):
        await backend.connect()


def dsn_with(dsn: str, *, user: str | None = None, password: str | None = None,
             database: str | None = None) -> str:  # fmt: skip
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        pytest.skip("needs a URL-style DSN")
    host = parts.hostname or "localhost"
    netloc = (user or parts.username or "postgres") + (f":{password}" if password else "")
    netloc += f"@{host}" + (f":{parts.port}" if parts.port else "")
    path = "/" + (database or parts.path.lstrip("/"))
    return urlunsplit((parts.scheme, netloc, path, parts.query, ""))


async def test_unknown_database(pg_dsn: str) -> None:
    backend = create_async_postgres_backend(dsn=dsn_with(pg_dsn, database="no_such_db_here"))
    with pytest.raises(DatabaseNotFoundError, match="does not exist") as info:
        await backend.connect()
    assert isinstance(info.value, ConnectionError)
    assert "no_such_db_here" in str(info.value) and "Create the database" in str(info.value)


async def test_pool_exhausted(make_backend) -> None:
    backend = await make_backend(min_connections=1, max_connections=1, acquire_timeout=0.2)
    async with backend.acquire():
        with pytest.raises(PoolExhaustedError, match="max_connections") as info:
            await backend.task_queue.get_queue_size()
        assert isinstance(info.value, TimeoutError)
    assert await backend.task_queue.get_queue_size() == 0  # fine once released


async def test_statement_timeout_is_reported(
    backend: PostgreSQLBackend, make_backend, admin: asyncpg.Connection, db: Database
) -> None:
    slow = await make_backend(
        dsn=backend.config.dsn, schema=backend.config.schema, command_timeout=0.3
    )
    async with admin.transaction():
        await admin.execute(f"LOCK TABLE {db.table('tasks')} IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(QueryTimeoutError, match="command_timeout"):
            await slow.task_queue.get_queue_size()
    assert await slow.task_queue.get_queue_size() == 0


@pytest.fixture
async def role(admin: asyncpg.Connection):
    """A login role with no privileges beyond the defaults (CONNECT, TEMPORARY)."""
    name = f"omniq_role_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'right-password'")
    yield name
    await admin.execute(f"DROP OWNED BY {name} CASCADE")
    await admin.execute(f"DROP ROLE {name}")


async def test_missing_create_privilege(pg_dsn: str, role: str, admin: asyncpg.Connection) -> None:
    schema = f"noperm_{uuid.uuid4().hex[:8]}"
    backend = create_async_postgres_backend(dsn=dsn_with(pg_dsn, user=role), schema=schema)
    with pytest.raises(PermissionDeniedError, match="permission denied") as info:
        await backend.connect()
    assert isinstance(info.value, PermissionError)
    assert "CREATE" in str(info.value)  # the hint says which privilege
    assert await admin.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 0


async def test_a_schema_of_ones_own_is_enough(
    pg_dsn: str, role: str, admin: asyncpg.Connection
) -> None:
    """No CREATE on the database is needed when an administrator made the schema."""
    schema = f"given_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
    backend = create_async_postgres_backend(dsn=dsn_with(pg_dsn, user=role), schema=schema)
    async with backend:
        await backend.task_queue.enqueue(Task(func="m.f"))
        assert await backend.task_queue.dequeue(["default"]) is not None


async def test_wrong_password(pg_server: Any, pg_dsn: str, role: str) -> None:
    hba: Path | None = getattr(pg_server, "data_dir", None)
    if hba is None:
        pytest.skip("needs the embedded server, to require passwords for one role")
    hba = hba / "pg_hba.conf"
    original = hba.read_text()
    reload = "SELECT pg_reload_conf()"
    admin = await asyncpg.connect(pg_dsn)
    try:
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original)
        await admin.execute(reload)
        await asyncio.sleep(0.2)  # the postmaster re-reads pg_hba.conf on SIGHUP
        wrong = create_async_postgres_backend(dsn=dsn_with(pg_dsn, user=role, password="nope"))
        with pytest.raises(AuthenticationError) as info:
            await wrong.connect()
        assert isinstance(info.value, ConnectionError)
        assert role in str(info.value) and "password" in str(info.value)
        right = dsn_with(pg_dsn, user=role, password="right-password")
        conn = await asyncpg.connect(right)  # the rule is live and the password right
        await conn.close()
    finally:
        hba.write_text(original)
        await admin.execute(reload)
        await admin.close()


async def test_spec_error_handling_example_catches_asyncpg_connection_error() -> None:
    """The specification's Error Handling block, pointed at a port where nothing listens."""
    port = refused_port()
    out = io.StringIO()
    code = f"""
from omniq.backend.postgres import create_postgres_backend
import asyncpg

try:
    backend = create_postgres_backend(
        host="127.0.0.1", port={port},
        database="omniq"
    )

    with backend:
        # Your operations here
        pass

except asyncpg.ConnectionError as e:
    print(f"Database connection failed: {{e}}")
except Exception as e:
    print(f"Unexpected error: {{e}}")
"""

    def run() -> None:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<spec>", "exec"), {})  # noqa: S102

    await asyncio.to_thread(run)
    assert out.getvalue().startswith("Database connection failed: "), out.getvalue()
    assert f"127.0.0.1:{port}" in out.getvalue()


async def test_pool_recovers_when_its_connections_are_killed(
    make_backend, admin: asyncpg.Connection
) -> None:
    app = f"killed-{uuid.uuid4().hex[:8]}"
    backend = await make_backend(application_name=app, min_connections=2)
    await backend.task_queue.enqueue(Task(func="m.f"))
    killed = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
        app,
    )
    assert killed >= 2
    await asyncio.sleep(0.1)
    assert await backend.task_queue.get_queue_size() == 1  # fresh connections, no error


# -- DSNs: URLs and libpq key=value strings, one host or several (issue 10, defect 6) ---------


def key_value_dsn(dsn: str, **more: str) -> str:
    """The test server's URL DSN written as a libpq key=value string."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        pytest.skip("needs a URL-style DSN")
    fields = {
        "host": parts.hostname or "localhost",
        "port": str(parts.port or 5432),
        "user": parts.username or "postgres",
        "dbname": parts.path.lstrip("/"),
        **more,
    }
    return " ".join(f"{k}={v}" for k, v in fields.items())


async def test_libpq_key_value_dsn_connects(pg_dsn: str, make_backend) -> None:
    dsn = key_value_dsn(pg_dsn, application_name="'kv test'", connect_timeout="5")
    backend = await make_backend(dsn=dsn)
    task = Task(func="m.f")
    await backend.task_queue.enqueue(task)
    assert (await backend.task_queue.get_task(task.id)) is not None
    async with backend.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") == "kv test"
    listener = await backend.listener()  # the LISTEN connection takes the same DSN
    assert listener.backend_pid is not None


async def test_multi_host_dsns_skip_a_dead_host(pg_dsn: str, make_backend) -> None:
    """Both forms, with a refused first host: libpq's (and asyncpg's) failover order."""
    dead = refused_port()
    parts = urlsplit(pg_dsn)
    url = pg_dsn.replace(
        f"{parts.hostname}:{parts.port}", f"127.0.0.1:{dead},{parts.hostname}:{parts.port}"
    )
    for dsn in (url + "?target_session_attrs=read-write",
                key_value_dsn(pg_dsn, host=f"127.0.0.1,{parts.hostname}",
                              port=f"{dead},{parts.port}", target_session_attrs="read-write")):  # fmt: skip
        backend = await make_backend(dsn=dsn)
        await backend.task_queue.enqueue(Task(func="m.f"))


@pytest.mark.parametrize("form", ["url", "key=value"])
async def test_refused_multi_host_dsn_is_a_connection_error_naming_every_host(form: str) -> None:
    """Issue 9, defect 10: translating the error parsed the DSN with urlsplit(...).port,
    which raises ValueError on a multi-host URL, so the error escaped the retry policy."""
    a, b = refused_port(), refused_port()
    dsn = (
        f"postgresql://postgres@127.0.0.1:{a},127.0.0.1:{b}/omniq?target_session_attrs=read-write"
        if form == "url"
        else f"host=127.0.0.1,127.0.0.1 port={a},{b} user=postgres dbname=omniq"
    )
    backend = create_async_postgres_backend(dsn=dsn, connect_timeout=5)
    with pytest.raises(DatabaseConnectionError) as info:
        await backend.connect()
    assert f"127.0.0.1:{a},127.0.0.1:{b}/omniq" in str(info.value)


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("host=127.0.0.1 prot=5432", "unknown or unsupported setting 'prot'"),
        ("host='127.0.0.1 port=5432", "no closing quote"),
        ("just some words", "expected key=value"),
        ("mysql://u@h/db", "scheme must be postgresql://"),
        ("postgresql://u@h:99999/db", "port '99999'"),
        ("postgresql://u@h:5432,h2:nope/db", "port 'nope'"),
        ("host=a,b port=1,2,3", "2 hosts but 3 ports"),
    ],
)
def test_malformed_dsn_is_a_configuration_error_not_a_connection_error(
    dsn: str, problem: str
) -> None:
    """A bad setting must not look like an outage: the README's retry loop would retry it
    forever. It fails when the config is built, before any connection."""
    from omniq.errors import ConfigurationError

    with pytest.raises(ValueError) as info:
        create_async_postgres_backend(dsn=dsn)
    assert isinstance(info.value, ConfigurationError)
    assert not isinstance(info.value, ConnectionError)
    assert problem in str(info.value) and "postgresql://user:password@host" in str(info.value)


# -- PostgresConfig(migrate=...): what connecting does to the schema ---------------------------


async def test_migrate_check_refuses_a_missing_or_outdated_installation(
    pg_dsn: str, make_backend, admin: asyncpg.Connection
) -> None:
    from omniq.errors import SchemaError

    name = f"t_{uuid.uuid4().hex[:12]}"
    checking = create_async_postgres_backend(dsn=pg_dsn, schema=name, migrate="check")
    with pytest.raises(SchemaError, match=f'schema "{name}" has no OmniQ installation'):
        await checking.connect()
    assert await admin.fetchval("SELECT to_regnamespace($1)", name) is None  # nothing created
    off = create_async_postgres_backend(dsn=pg_dsn, schema=name, migrate="off")
    await off.connect()  # trusts the schema as it is: no query of its own
    await off.close()
    assert await admin.fetchval("SELECT to_regnamespace($1)", name) is None

    installed = await make_backend(schema=name)  # migrate="auto", the default
    await checking.connect()  # current now
    await checking.close()
    await admin.execute(
        f"DELETE FROM {name}.omniq_migrations WHERE name = (SELECT max(name) "  # noqa: S608
        f"FROM {name}.omniq_migrations WHERE name LIKE 'migrations/%')"
    )
    with pytest.raises(
        SchemaError, match=r"is not up to date: \d+ script\(s\) to apply \(migrations/"
    ):
        await checking.connect()
    await installed.close()
