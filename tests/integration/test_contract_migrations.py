"""Migrations under the version contract (issue 11): the locks each one declares are the locks
it takes (read from pg_locks while it runs), a big table gets its new index CONCURRENTLY outside
the migration transaction while writes go on, an INVALID index left by a failed build is
rebuilt, and `omniq migrate --dry-run` names each step's locks."""

# ruff: noqa: S608 (SQL with the test's own schema names)

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend, schema, sqlfiles
from omniq.backend.postgres.sqlfiles import SQLFiles
from omniq.models.config import PostgresConfig
from omniq.models.task import Task
from tests.support.db import drop_schemas, unique_schema

# pg_locks' mode names, weakest first (the order of schema.LOCK_MODES).
PG_MODES = {
    "AccessShareLock": "ACCESS SHARE",
    "RowShareLock": "ROW SHARE",
    "RowExclusiveLock": "ROW EXCLUSIVE",
    "ShareUpdateExclusiveLock": "SHARE UPDATE EXCLUSIVE",
    "ShareLock": "SHARE",
    "ShareRowExclusiveLock": "SHARE ROW EXCLUSIVE",
    "ExclusiveLock": "EXCLUSIVE",
    "AccessExclusiveLock": "ACCESS EXCLUSIVE",
}
TABLE_LOCKS = """
SELECT c.relname, l.mode FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation
WHERE l.pid = $1 AND l.granted AND c.relnamespace = $2::regnamespace AND c.relkind IN ('r', 'p')
"""


def files_for(name: str) -> SQLFiles:
    return SQLFiles(name, PostgresConfig(schema=name).tables)


def strongest(rows: list[asyncpg.Record], files: SQLFiles) -> dict[str, str]:
    """Table (as a migration declares it: "tasks" or omniq_workers) -> strongest mode held."""
    order = list(schema.LOCK_MODES)
    default = {configured: f'"{kind}"' for kind, configured in files.names.items()}
    found: dict[str, str] = {}
    for row in rows:
        table = default.get(row["relname"], row["relname"])
        mode = PG_MODES[row["mode"]]
        if table not in found or order.index(mode) > order.index(found[table]):
            found[table] = mode
    return found


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(pg_dsn)
    yield c
    await c.close()


@pytest.fixture
async def schema_name(pg_dsn: str) -> AsyncIterator[str]:
    """A schema name of the test's own, dropped afterwards (the shared one is not dropped)."""
    name = unique_schema("contract")
    yield name
    await drop_schemas(pg_dsn, name)


def with_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, sql: str) -> SQLFiles:
    """sql/ plus a migration 9000 (a later release), for schema ``name``."""
    sql_dir = tmp_path / "sql"
    shutil.copytree(sqlfiles.SQL_DIR, sql_dir)
    (sql_dir / "migrations" / "9000_probe.sql").write_text(
        f"-- A later release's migration.\n-- lock: none\n-- name: migration_9000#\n{sql}"
    )
    monkeypatch.setattr(sqlfiles, "SQL_DIR", sql_dir)
    return files_for(name)


async def test_each_migration_takes_the_locks_it_declares(
    conn: asyncpg.Connection, schema_name: str
) -> None:
    files = files_for(schema_name)
    m = files.migrations
    await conn.execute(f"CREATE SCHEMA {schema_name}")
    pid = conn.get_server_pid()
    seen = {}
    for script in files.migration_scripts:
        async with conn.transaction():
            await m.use_schema(conn)
            await m.create_bookkeeping(conn)
            parts = schema.steps(script)
            await conn.execute(parts.transactional)
            for build in parts.builds:
                await conn.execute(build.in_transaction)
            taken = strongest(await conn.fetch(TABLE_LOCKS, pid, schema_name), files)
        taken = {
            t: mode for t, mode in taken.items() if t not in ("omniq_migrations", "omniq_meta")
        }
        declared = {lock.table: lock.mode for lock in schema.declared_locks(script)}
        declared = {
            t: mode for t, mode in declared.items() if t not in ("omniq_migrations", "omniq_meta")
        }
        assert taken == declared, f"{script.name} declares {declared}, takes {taken}"
        seen[script.name] = taken
    order = list(schema.LOCK_MODES)
    for script in files.function_scripts:  # CREATE OR REPLACE: never more than ROW SHARE
        async with conn.transaction():
            await m.use_schema(conn)
            await conn.execute(script.sql)
            taken = strongest(await conn.fetch(TABLE_LOCKS, pid, schema_name), files)
        assert all(order.index(mode) <= order.index("ROW SHARE") for mode in taken.values()), (
            script.name,
            taken,
        )
    print("\nlocks per migration:", seen)


async def test_a_big_table_gets_its_index_concurrently_while_writes_go_on(
    pg_dsn: str,
    conn: asyncpg.Connection,
    schema_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=schema_name)) as backend:
        await conn.execute(
            f"INSERT INTO {schema_name}.tasks (id, queue_name, func, args, kwargs, created_at, "
            "task_data, status) SELECT 'old-' || g, 'q', 'json.dumps', '[]', '{}', now(), '{}', "
            f"'completed' FROM generate_series(1, 3000) AS g; ANALYZE {schema_name}.tasks"
        )
        monkeypatch.setattr(schema, "BIG_TABLE_ROWS", 1000)
        files = with_probe(
            tmp_path,
            monkeypatch,
            schema_name,
            'ALTER TABLE "tasks" ADD COLUMN IF NOT EXISTS probe TEXT;\n'
            'CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_probe_idx ON "tasks" (probe)\n'
            "    WHERE probe IS NOT NULL;\n",
        )
        state = await schema.plan(conn, files, schema_name)
        described = await schema.describe(conn, files, schema_name, state)
        assert any(
            "tasks_probe_idx: built CONCURRENTLY after the transaction" in line
            for line in described
        ), described

        # A transaction with an open snapshot: the build must wait for it, and meanwhile we
        # look at what it holds and write to the table.
        reader = await asyncpg.connect(pg_dsn)
        migrator = await asyncpg.connect(pg_dsn)
        try:
            await reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await reader.fetchval("SELECT 1")  # takes the transaction's snapshot, no table lock
            migrating = asyncio.create_task(schema.migrate(migrator, files, schema_name))
            pid = migrator.get_server_pid()
            for _ in range(600):
                waiting = await conn.fetchrow(
                    "SELECT state, wait_event_type, query FROM pg_stat_activity WHERE pid = $1", pid
                )
                if (
                    waiting["query"].startswith("CREATE INDEX CONCURRENTLY")
                    and waiting["wait_event_type"] == "Lock"
                ):
                    break
                assert not migrating.done(), migrating
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"the build never waited for the open transaction: {waiting}")
            held = strongest(await conn.fetch(TABLE_LOCKS, pid, schema_name), files)
            assert held == {'"tasks"': "SHARE UPDATE EXCLUSIVE"}, held  # not SHARE: writes go on
            assert await conn.fetchval(
                "SELECT backend_xid IS NULL AND state = 'active' FROM pg_stat_activity WHERE pid = $1",
                pid,
            )
            # A write meanwhile goes through at once (a plain CREATE INDEX would block it).
            await asyncio.wait_for(backend.task_queue.enqueue(Task(func="json.dumps")), 10)
            assert not migrating.done()
            await reader.execute("COMMIT")
            applied = await asyncio.wait_for(migrating, 60)
        finally:
            await reader.close()
            await migrator.close()
    assert [s.name for s in applied.scripts][0] == "migrations/9000_probe.sql"
    assert await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
        f"{schema_name}.tasks_probe_idx",
    )
    assert (await schema.plan(conn, files, schema_name)).version == 9000


@pytest.mark.parametrize("big", [True, False], ids=["concurrently", "in-transaction"])
async def test_an_invalid_index_left_by_a_failed_build_is_rebuilt(
    pg_dsn: str,
    conn: asyncpg.Connection,
    schema_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    big: bool,
) -> None:
    async with PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=schema_name)):
        pass
    await conn.execute(
        f"INSERT INTO {schema_name}.tasks (id, queue_name, func, args, kwargs, created_at, "
        "task_data, status) SELECT 'old-' || g, 'q', 'json.dumps', '[]', '{}', now(), '{}', "
        f"'completed' FROM generate_series(1, 200) AS g; ANALYZE {schema_name}.tasks"
    )
    # A build that fails half-way (duplicates for a unique index) leaves an INVALID index.
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            f"CREATE UNIQUE INDEX CONCURRENTLY tasks_probe_idx ON {schema_name}.tasks (queue_name)"
        )
    invalid = f"SELECT indisvalid, indisunique FROM pg_index WHERE indexrelid = to_regclass('{schema_name}.tasks_probe_idx')"
    assert tuple(await conn.fetchrow(invalid)) == (False, True)
    monkeypatch.setattr(schema, "BIG_TABLE_ROWS", 100 if big else 1_000_000)
    files = with_probe(
        tmp_path,
        monkeypatch,
        schema_name,
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_probe_idx ON "tasks" (queue_name);\n',
    )
    await schema.migrate(conn, files, schema_name)
    assert tuple(await conn.fetchrow(invalid)) == (True, False)  # dropped and built again


def test_every_migration_parses_into_steps_and_declares_its_locks() -> None:
    files = files_for("public")
    for script in files.migration_scripts:
        parts = schema.steps(script)
        assert parts.transactional.strip() or parts.builds, script.name
        for lock in schema.declared_locks(script):
            assert lock.mode in schema.LOCK_MODES


async def test_dry_run_names_the_locks_of_each_step(
    pg_dsn: str, conn: asyncpg.Connection, schema_name: str
) -> None:
    full = files_for(schema_name)
    release = files_for(schema_name)
    release.migration_scripts = full.migration_scripts[:8]  # an installation of release 8
    await schema.migrate(conn, release, schema_name)
    result = subprocess.run(
        [sys.executable, "-m", "omniq", "migrate", "--dry-run", "--dsn", pg_dsn]
        + ["--schema", schema_name],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    print("\n" + result.stdout)
    lines = result.stdout.splitlines()
    step = lines.index("would apply migrations/0009_dashboard_indexes.sql")
    assert lines[step + 1] == "    locks in the migration transaction: tasks SHARE"
    assert "would apply functions/tasks.sql" in lines
    assert (await schema.plan(conn, full, schema_name)).version == 8  # nothing was applied


async def test_the_psql_script_builds_indexes_inside_its_transaction(
    pg_dsn: str,
    conn: asyncpg.Connection,
    schema_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`omniq sql` prints one transaction: a migration's concurrent builds appear there in
    their in-transaction form, each after a comment with the statement for a big table."""
    async with PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=schema_name)):
        pass
    files = with_probe(
        tmp_path,
        monkeypatch,
        schema_name,
        'ALTER TABLE "tasks" ADD COLUMN IF NOT EXISTS probe TEXT;\n'
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_probe_idx ON "tasks" (probe);\n',
    )
    (probe,) = [s for s in files.migration_scripts if s.name == "migrations/9000_probe.sql"]
    text = schema.psql_text(probe)
    statements = [line for line in text.splitlines() if not line.startswith("--")]
    assert not any("CONCURRENTLY" in line for line in statements), text
    assert "--   CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_probe_idx" in text
    async with conn.transaction():
        await files.migrations.use_schema(conn)
        await conn.execute(text)
    assert await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
        f"{schema_name}.tasks_probe_idx",
    )


async def test_the_migrate_setting_on_the_command_line(pg_dsn: str, schema_name: str) -> None:
    """--migrate (or $OMNIQ_MIGRATE) overrides a command's own default: a worker started with
    check refuses a schema that is not installed, naming omniq migrate, and creates nothing."""

    def omniq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "omniq", *args, "--dsn", pg_dsn, "--schema", schema_name],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
        )

    for result in (
        omniq("worker", "--burst", "--migrate", "check"),
        omniq("enqueue", "json.dumps", "1", OMNIQ_MIGRATE="check"),
    ):
        assert result.returncode == 1, result.stderr
        assert "has no OmniQ installation" in result.stderr
        assert "omniq migrate" in result.stderr
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT to_regnamespace($1)", schema_name) is None
    finally:
        await conn.close()
    assert omniq("worker", "--burst", "--migrate", "auto").returncode == 0  # installs, runs
    assert omniq("status", "--migrate", "check").returncode == 0
