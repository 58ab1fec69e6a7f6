"""The schema in the database: it matches the specification and migrates once, idempotently and
concurrently, and the migration and function files run in psql as written (the files' layout
and the Python scans: tests/unit/test_sql_files.py)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend, schema
from omniq.backend.postgres.sqlfiles import SQL_DIR, sql_files
from omniq.models.config import PostgresConfig
from tests.support.db import drop_schemas, latest_migration, unique_schema

REPO = Path(__file__).resolve().parents[2]
SQL_FILES = {kind: sorted((SQL_DIR / kind).glob("*.sql")) for kind in ("migrations", "functions")}


# -- the schema in the database ----------------------------------------------------------

SPEC_TABLES = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, queue_name TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending', func TEXT NOT NULL, args JSONB NOT NULL,
    kwargs JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL, run_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ, retry_count INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL DEFAULT 3, retry_delay REAL NOT NULL DEFAULT 1.0,
    dependencies JSONB NOT NULL DEFAULT '[]', callbacks JSONB NOT NULL DEFAULT '{}',
    metadata JSONB NOT NULL DEFAULT '{}', task_data JSONB NOT NULL
);
CREATE TABLE results (
    task_id TEXT PRIMARY KEY, status TEXT NOT NULL DEFAULT 'pending', result JSONB, error TEXT,
    error_type TEXT, traceback TEXT, created_at TIMESTAMPTZ NOT NULL, started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ, expires_at TIMESTAMPTZ, worker_id TEXT, execution_time REAL,
    memory_usage BIGINT, metadata JSONB NOT NULL DEFAULT '{}', result_data JSONB NOT NULL
);
CREATE TABLE events (
    id TEXT PRIMARY KEY, task_id TEXT NOT NULL, event_type TEXT NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL, message TEXT, details JSONB NOT NULL DEFAULT '{}',
    worker_id TEXT, queue_name TEXT, schedule_id TEXT, error_type TEXT, error_message TEXT,
    traceback TEXT, execution_time REAL, memory_usage BIGINT,
    metadata JSONB NOT NULL DEFAULT '{}', event_data JSONB NOT NULL
);
CREATE TABLE schedules (
    id TEXT PRIMARY KEY, schedule_type TEXT NOT NULL, func TEXT NOT NULL,
    args JSONB NOT NULL DEFAULT '[]', kwargs JSONB NOT NULL DEFAULT '{}',
    queue_name TEXT NOT NULL DEFAULT 'default', cron_expression TEXT, interval_seconds REAL,
    timestamp TIMESTAMPTZ, status TEXT NOT NULL DEFAULT 'active', created_at TIMESTAMPTZ NOT NULL,
    last_run TIMESTAMPTZ, next_run TIMESTAMPTZ, max_runs INTEGER,
    run_count INTEGER NOT NULL DEFAULT 0, ttl_seconds REAL, expires_at TIMESTAMPTZ,
    metadata JSONB NOT NULL DEFAULT '{}', schedule_data JSONB NOT NULL
);
"""


async def columns(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, tuple]:
    rows = await conn.fetch(
        "SELECT column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        schema,
        table,
    )
    qualified = (f'"{schema}".', f"{schema}.")  # serial defaults name their sequence

    def default(value: str | None) -> str | None:
        for prefix in qualified:
            value = value.replace(prefix, "") if value else value
        return value

    return {r["column_name"]: (r[1], r[2], default(r[3])) for r in rows}


async def test_tables_columns_and_defaults_match_the_specification(
    backend: PostgreSQLBackend, admin: asyncpg.Connection
) -> None:
    spec = unique_schema("spec")
    await admin.execute(f"CREATE SCHEMA {spec}; SET search_path TO {spec}; {SPEC_TABLES}")
    await admin.execute("RESET search_path")
    try:
        for table in ("tasks", "results", "events", "schedules"):
            want = await columns(admin, spec, table)
            have = await columns(admin, backend.config.schema, table)
            assert want.keys() <= have.keys(), (table, want.keys() - have.keys())
            for name, (data_type, nullable, default) in want.items():
                got_type, got_nullable, got_default = have[name]
                assert (got_type, got_nullable) == (data_type, nullable), (table, name)
                if default is not None:
                    assert got_default == default, (table, name)
            pkey = await admin.fetchval(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE i.indrelid = $1::regclass AND i.indisprimary",
                f'"{backend.config.schema}".{table}',
            )
            assert pkey == ("task_id" if table == "results" else "id")
    finally:
        await admin.execute(f"DROP SCHEMA {spec} CASCADE")


async def test_partial_index_serves_dequeue(
    backend: PostgreSQLBackend, admin: asyncpg.Connection
) -> None:
    indexes = await admin.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'tasks'",
        backend.config.schema,
    )
    defs = [r["indexdef"] for r in indexes]
    assert any(
        "priority DESC" in d and "created_at" in d and "WHERE (status = 'pending'::text)" in d
        for d in defs
    ), defs


async def test_migrating_again_does_nothing(
    backend: PostgreSQLBackend, make_backend, admin: asyncpg.Connection
) -> None:
    table = f'"{backend.config.schema}".omniq_migrations'
    before = await admin.fetch(f"SELECT name, checksum, applied_at FROM {table} ORDER BY name")  # noqa: S608
    assert len(before) == len(backend.sql.migration_scripts) + len(backend.sql.function_scripts)
    assert await backend.migrate() == []
    assert await backend.migrate(dry_run=True) == []
    assert await backend.schema_version() == latest_migration()
    await make_backend(dsn=backend.config.dsn, schema=backend.config.schema)
    after = await admin.fetch(f"SELECT name, checksum, applied_at FROM {table} ORDER BY name")  # noqa: S608
    assert after == before


async def test_changed_function_file_is_applied_again(
    backend: PostgreSQLBackend, make_backend, admin: asyncpg.Connection
) -> None:
    table = f'"{backend.config.schema}".omniq_migrations'
    await admin.execute(
        f"UPDATE {table} SET checksum = 'outdated' WHERE name = 'functions/tasks.sql'"  # noqa: S608
    )
    assert await backend.migrate(dry_run=True) == ["functions/tasks.sql"]
    await make_backend(dsn=backend.config.dsn, schema=backend.config.schema)  # migrates on connect
    checksum = await admin.fetchval(
        f"SELECT checksum FROM {table} WHERE name = 'functions/tasks.sql'"  # noqa: S608
    )
    assert checksum == next(
        s.checksum for s in backend.sql.function_scripts if s.name.endswith("tasks.sql")
    )
    assert await backend.migrate(dry_run=True) == []


async def test_dry_run_on_a_fresh_schema_creates_nothing(
    pg_dsn: str, admin: asyncpg.Connection
) -> None:
    schema = unique_schema()
    backend = PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=schema))
    planned = await backend.migrate(dry_run=True)
    assert planned[0] == "migrations/0001_initial.sql"
    assert set(planned) == {
        s.name for s in backend.sql.migration_scripts + backend.sql.function_scripts
    }
    assert await admin.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 0


async def applied(admin: asyncpg.Connection, schema: str) -> tuple[int, int]:
    table = f'"{schema}".omniq_migrations'
    return (
        await admin.fetchval(f"SELECT count(*) FROM {table}"),  # noqa: S608
        await admin.fetchval(f"SELECT count(DISTINCT applied_at) FROM {table}"),  # noqa: S608
    )


async def test_ten_backends_migrate_a_fresh_schema_at_once(
    pg_dsn: str, admin: asyncpg.Connection
) -> None:
    schema = unique_schema()
    backends = [
        PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=schema, min_connections=1))
        for _ in range(10)
    ]
    try:
        await asyncio.gather(*(b.connect() for b in backends))
        versions = await asyncio.gather(*(b.schema_version() for b in backends))
        assert versions == [latest_migration()] * 10
        scripts = len(sql_files(schema, tuple(PostgresConfig().tables.items())).migration_scripts)
        count, transactions = await applied(admin, schema)
        assert count >= scripts and transactions == 1  # one migrator did it all
    finally:
        await asyncio.gather(*(b.close() for b in backends))
        await drop_schemas(pg_dsn, schema)


MIGRATOR = """
import asyncio, sys
from omniq.backend.postgres import create_async_postgres_backend

async def main():
    backend = create_async_postgres_backend(dsn=sys.argv[1], schema=sys.argv[2])
    sys.stdin.readline()  # start together
    async with backend:
        print(await backend.schema_version())

asyncio.run(main())
"""


async def test_six_processes_migrate_a_fresh_schema_at_once(
    pg_dsn: str, admin: asyncpg.Connection
) -> None:
    schema = unique_schema()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATOR,
            pg_dsn,
            schema,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        for _ in range(6)
    ]
    try:
        await asyncio.sleep(0.5)  # let the interpreters import
        results = await asyncio.wait_for(
            asyncio.gather(*(p.communicate(b"go\n") for p in procs)), 90
        )
        assert [p.returncode for p in procs] == [0] * 6, [err.decode()[-500:] for _, err in results]
        assert [out.strip() for out, _ in results] == [str(latest_migration()).encode()] * 6
        assert (await applied(admin, schema))[1] == 1
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await drop_schemas(pg_dsn, schema)


# -- psql ----------------------------------------------------------------------------------


def psql_path() -> str:
    try:
        from omniq.embedded import find_bindir

        return str(find_bindir() / "psql")
    except RuntimeError:
        found = shutil.which("psql")
        if not found:
            pytest.skip("psql not installed")
        return found


async def test_migration_and_function_files_run_in_psql_as_written(
    pg_dsn: str, make_backend, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    """With the default names the files are plain SQL: psql builds the same schema."""
    parts = urlsplit(pg_dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        pytest.skip("needs a URL-style DSN")
    database = f"omniq_psql_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {database}")
    try:
        target = urlunsplit(parts._replace(path="/" + database))
        files = [str(p) for kind in ("migrations", "functions") for p in SQL_FILES[kind]]
        # A migration as `omniq sql` prints it (schema.psql_text): its CREATE INDEX
        # CONCURRENTLY statements, which cannot run in a transaction block, built inside it.
        for script in sql_files("public", ()).migration_scripts:
            path = SQL_DIR / script.name
            assert path in SQL_FILES["migrations"] and schema.steps(script).transactional
            if schema.steps(script).builds:
                files[files.index(str(path))] = str(tmp_path / path.name)
                (tmp_path / path.name).write_text(schema.psql_text(script))
        args = [psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", target]
        for path in files:
            args += ["-f", path]
        proc = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        other = await asyncpg.connect(target)
        library = await make_backend()
        try:
            for table in ("tasks", "results", "events", "schedules", "omniq_workers"):
                by_psql = await columns(other, "public", table)
                assert by_psql == await columns(admin, library.config.schema, table), table
            functions = (
                "SELECT proname FROM pg_proc WHERE pronamespace = $1::regnamespace ORDER BY 1"
            )
            by_psql_functions = [r[0] for r in await other.fetch(functions, "public")]
            library_functions = [
                r[0] for r in await admin.fetch(functions, f'"{library.config.schema}"')
            ]
            assert by_psql_functions == library_functions
        finally:
            await other.close()
    finally:
        await admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
