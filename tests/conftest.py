"""Fixtures every kind of test shares, and the rule that a skip fails in CI.

The suite starts its own PostgreSQL unless OMNIQ_TEST_DSN names one. Fixtures are requested by
name; plain helpers (schema names, the ``Database`` reader, processes) are imported from
``tests.support``. ``tests/acceptance/conftest.py`` adds real ``omniq`` processes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend, create_postgres_backend
from omniq.backend.postgres.protocol import WorkerProtocol
from omniq.embedded import EmbeddedPostgres
from omniq.identifiers import quote_identifier
from omniq.models.config import PostgresConfig
from tests.support.ci import (  # in CI a skip is a failure: its hooks, imported, apply here
    pytest_make_collect_report,  # noqa: F401
    pytest_runtest_makereport,  # noqa: F401
)
from tests.support.contrib import (  # tests marked contrib need auto_explain / pg_stat_statements
    pytest_collection_modifyitems,  # noqa: F401
    pytest_terminal_summary,  # noqa: F401
)
from tests.support.db import (
    Database,
    ExternalServer,
    connect_admin,
    drop_schemas,
    run_in_thread,
    unique_schema,
)


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
# The PostgreSQL backend: one fresh schema per test, so tests never see each other's rows.
# --------------------------------------------------------------------------------------


@pytest.fixture
def schema_name() -> str:
    return unique_schema()


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_admin(pg_dsn)
    yield conn
    await conn.close()


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
async def raw(pg_dsn: str, backend: PostgreSQLBackend) -> AsyncIterator[Any]:
    """Plain connections on the backend's schema (no codecs, as an application's own), for
    holding transactions open by hand; ``await raw()`` makes one, all closed afterwards."""
    made: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(pg_dsn)
        await conn.execute(f"SET search_path TO {quote_identifier(backend.config.schema)}")
        made.append(conn)
        return conn

    yield connect
    for conn in made:
        await conn.close()


@pytest.fixture
def protocol(backend: PostgreSQLBackend) -> WorkerProtocol:
    """The worker protocol on ``backend``: for tests that take and finish tasks as a worker does."""
    return WorkerProtocol(backend)


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
