"""Shared fixtures. The suite starts its own PostgreSQL unless OMNIQ_TEST_DSN names one."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend, create_postgres_backend
from omniq.embedded import EmbeddedPostgres
from omniq.identifiers import quote_identifier
from omniq.models.config import PostgresConfig


@dataclass
class ExternalServer:
    """Stands in for EmbeddedPostgres when tests run against a server we don't control."""

    dsn: str

    def restart(self, mode: str = "fast") -> NoReturn:
        pytest.skip("needs an embedded server")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres | ExternalServer]:
    """One PostgreSQL for the whole session: OMNIQ_TEST_DSN, or a throwaway embedded one."""
    external = os.environ.get("OMNIQ_TEST_DSN")
    if external:
        yield ExternalServer(external)
        return
    with EmbeddedPostgres(durable=True) as server:  # stop() also deletes its temp data dir
        yield server


@pytest.fixture(scope="session")
def pg_dsn(pg_server: EmbeddedPostgres | ExternalServer) -> str:
    return pg_server.dsn


# --------------------------------------------------------------------------------------
# Fixtures owned by other parts of OmniQ go below this line (schema/migrations, pools,
# queue clients...). Build them on `pg_dsn`; use `pg_server.restart()` only in tests
# that may be skipped, since it skips against an external OMNIQ_TEST_DSN server.
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# The PostgreSQL backend: one fresh schema per test, so tests never see each other's rows.
# --------------------------------------------------------------------------------------


def latest_migration() -> int:
    """The number of the newest file in sql/migrations: what schema_version() reports."""
    from omniq.backend.postgres.sqlfiles import SQL_DIR

    return max(int(p.name.split("_")[0]) for p in (SQL_DIR / "migrations").glob("*.sql"))


def unique_schema(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def drop_schemas(dsn: str, *schemas: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(name)} CASCADE")
    finally:
        await conn.close()


def run_in_thread(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine on a private loop in another thread (safe from sync fixtures)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:  # pragma: no cover - re-raised below
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def schema_name() -> str:
    return unique_schema()


async def connect_admin(dsn: str) -> asyncpg.Connection:
    """A plain asyncpg connection (JSONB decoded) for checking what the library wrote."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=json.dumps, decoder=json.loads, format="text"
    )
    return conn


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_admin(pg_dsn)
    yield conn
    await conn.close()


class Database:
    """Reads one installation's tables directly: what the library really stored."""

    KEYS = {"tasks": "id", "results": "task_id", "events": "id", "schedules": "id"}

    def __init__(self, conn: asyncpg.Connection, config: PostgresConfig) -> None:
        self.conn = conn
        self.schema = config.schema
        self.tables = config.tables

    def table(self, kind: str) -> str:
        name = self.tables.get(kind, kind)
        return f"{quote_identifier(self.schema)}.{quote_identifier(name)}"

    async def count(self, kind: str, where: str = "", *args: Any) -> int:
        sql = f"SELECT count(*) FROM {self.table(kind)}"  # noqa: S608
        return await self.conn.fetchval(sql + (f" WHERE {where}" if where else ""), *args)

    async def rows(self, kind: str, where: str = "", *args: Any, order: str = "") -> list[dict]:
        sql = f"SELECT * FROM {self.table(kind)}"  # noqa: S608
        sql += f" WHERE {where}" if where else ""
        sql += f" ORDER BY {order}" if order else ""
        return [dict(r) for r in await self.conn.fetch(sql, *args)]

    async def row(self, kind: str, key: str) -> dict | None:
        found = await self.rows(kind, f"{self.KEYS[kind]} = $1", key)
        return found[0] if found else None

    async def events(self, task_id: str) -> list[str]:
        """The event types logged for a task, oldest first (ties in insertion order)."""
        found = await self.rows("events", "task_id = $1", task_id, order="timestamp, ctid")
        return [r["event_type"] for r in found]

    async def execute(self, sql: str, *args: Any) -> str:
        """Run SQL with {tasks}/{results}/{events}/{schedules} replaced by the quoted tables."""
        return await self.conn.execute(sql.format(**{k: self.table(k) for k in self.KEYS}), *args)


@pytest.fixture
def db(admin: asyncpg.Connection, backend: PostgreSQLBackend) -> Database:
    return Database(admin, backend.config)


@pytest.fixture
def db_of(admin: asyncpg.Connection) -> Callable[[PostgreSQLBackend], Database]:
    return lambda b: Database(admin, b.config)


@pytest.fixture
async def backend(pg_dsn: str, schema_name: str) -> AsyncIterator[PostgreSQLBackend]:
    """A connected backend on a schema of its own, dropped afterwards."""
    config = PostgresConfig(dsn=pg_dsn, schema=schema_name, max_connections=5)
    b = PostgreSQLBackend(config)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()
        await drop_schemas(pg_dsn, schema_name)


@pytest.fixture
async def make_backend(pg_dsn: str) -> AsyncIterator[Callable[..., Awaitable[PostgreSQLBackend]]]:
    """Factory for extra connected backends (own schema unless given); all closed afterwards."""
    made: list[PostgreSQLBackend] = []

    async def make(**settings: Any) -> PostgreSQLBackend:
        settings.setdefault("dsn", pg_dsn)
        settings.setdefault("schema", unique_schema())
        b = PostgreSQLBackend(PostgresConfig(**settings))
        made.append(b)
        await b.connect()
        return b

    yield make
    for b in made:
        await b.close()
    await drop_schemas(pg_dsn, *{b.config.schema for b in made})


@pytest.fixture
def sync_backend(pg_dsn: str, schema_name: str) -> Iterator[PostgreSQLBackend]:
    """A backend opened with ``with``: its own loop thread serves the ``_sync`` methods."""
    with create_postgres_backend(dsn=pg_dsn, schema=schema_name, max_connections=5) as b:
        yield b
    run_in_thread(lambda: drop_schemas(pg_dsn, schema_name))


# --------------------------------------------------------------------------------------
# Real `python -m omniq worker|scheduler` processes (tests/processes.py), on the test's schema.
# --------------------------------------------------------------------------------------


@pytest.fixture
def omniq(
    pg_dsn: str, backend: PostgreSQLBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Start ``omniq`` commands on ``backend``'s schema; every one is killed when the test ends."""
    from processes import Processes

    processes = Processes(pg_dsn, backend.config.schema, tmp_path_factory.mktemp("omniq-logs"))
    try:
        yield processes
    finally:
        processes.kill_all()
