"""Migrations: fresh install == step-by-step upgrade, re-running changes nothing, twenty
processes starting together migrate once, the version is recorded, and the committed schema
snapshot (sql/schema.snapshot.sql) is the schema OmniQ really installs.

Schemas are compared as normalised `pg_dump --schema-only` catalog dumps, made with the
pg_dump of the embedded PostgreSQL's bindir (scripts/schema-snapshot does the same).
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend, schema, sqlfiles
from omniq.backend.postgres.sqlfiles import Script, SQLFiles
from omniq.errors import SchemaError
from omniq.identifiers import quote_identifier
from omniq.models.config import PostgresConfig
from tests.support.db import drop_schemas, unique_schema

REPO = Path(__file__).resolve().parents[2]


def _load_snapshot_script() -> ModuleType:
    path = REPO / "scripts" / "schema-snapshot"
    loader = importlib.machinery.SourceFileLoader("omniq_schema_snapshot", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


snap = _load_snapshot_script()


@pytest.fixture(scope="module")
async def pg_dump_major(pg_dsn: str) -> int:
    """pg_dump's major version; skip when it cannot dump this server (an older pg_dump)."""
    try:
        major = snap.pg_dump_major()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"no pg_dump: {exc}")
    conn = await asyncpg.connect(pg_dsn)
    try:
        server = int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()
    if server > major:
        pytest.skip(f"pg_dump {major} cannot dump a PostgreSQL {server} server")
    return major


def dump(dsn: str, name: str) -> str:
    return snap.installed_schema(dsn, name)


def files_for(name: str) -> SQLFiles:
    """The SQL files as a backend with the default table names renders them."""
    return SQLFiles(name, PostgresConfig(schema=name).tables)


def number(script: Script) -> int:
    return int(Path(script.name).name.split("_")[0])


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(pg_dsn)
    yield c
    await c.close()


@pytest.fixture
async def schemas(pg_dsn: str) -> AsyncIterator[list[str]]:
    """Names handed out to a test, all dropped afterwards."""
    made: list[str] = []
    yield made
    await drop_schemas(pg_dsn, *made)


def fresh_name(made: list[str], prefix: str) -> str:
    name = unique_schema(prefix)
    made.append(name)
    return name


async def install(dsn: str, name: str) -> None:
    """The automatic-creation path: what every backend does on connect."""
    backend = PostgreSQLBackend(PostgresConfig(dsn=dsn, schema=name, max_connections=1))
    try:
        await backend.connect()
    finally:
        await backend.close()


async def bookkeeping(conn: asyncpg.Connection, name: str) -> list[tuple[str, str, Any]]:
    sql = f"SELECT name, checksum, applied_at FROM {quote_identifier(name)}.omniq_migrations ORDER BY name"  # noqa: S608
    return [tuple(r) for r in await conn.fetch(sql)]


async def migrate_step_by_step(conn: asyncpg.Connection, name: str) -> None:
    """Apply the numbered migrations one release at a time: 0001, then 0002, ... each with the
    function files, checking the recorded version after each step.

    Older releases' function files are not kept, so every step applies today's. Should one of
    them ever need an object that only a later migration creates (a view or a LANGUAGE sql
    function is checked when created), apply the function files at the last step only.
    """
    full = files_for(name)
    migrations = full.migration_scripts
    assert migrations, "no migration files found"
    for k, script in enumerate(migrations, start=1):
        release = files_for(name)
        release.migration_scripts = migrations[:k]  # what a release with k migrations ships
        applied = await schema.migrate(conn, release, name)
        applied_migrations = [s.name for s in applied.scripts if s.name.startswith("migrations/")]
        assert applied_migrations == [script.name]
        assert {s.name for s in applied.scripts} >= {s.name for s in release.function_scripts}
        after = await schema.plan(conn, release, name)
        assert after.scripts == [] and after.version == number(script)
        recorded = [row[0] for row in await bookkeeping(conn, name)]
        assert [r for r in recorded if r.startswith("migrations/")] == [
            s.name for s in migrations[:k]
        ]
    final = await schema.plan(conn, full, name)
    assert final.scripts == [] and final.version == number(migrations[-1])


async def assert_step_by_step_equals_fresh(dsn: str, conn: asyncpg.Connection, made: list[str]):
    fresh = fresh_name(made, "mig_fresh")
    stepped = fresh_name(made, "mig_step")
    await install(dsn, fresh)
    await migrate_step_by_step(conn, stepped)
    assert dump(dsn, stepped) == dump(dsn, fresh)
    fresh_rows = [(n, c) for n, c, _ in await bookkeeping(conn, fresh)]
    stepped_rows = [(n, c) for n, c, _ in await bookkeeping(conn, stepped)]
    assert stepped_rows == fresh_rows


async def test_step_by_step_upgrade_equals_fresh_install(
    pg_dsn: str, pg_dump_major: int, conn: asyncpg.Connection, schemas: list[str]
) -> None:
    await assert_step_by_step_equals_fresh(pg_dsn, conn, schemas)


async def test_step_by_step_with_a_later_migration(
    pg_dsn: str,
    pg_dump_major: int,
    conn: asyncpg.Connection,
    schemas: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same proof with one more (made-up) migration, so the upgrade path from the first
    release is exercised even while sql/migrations holds a single file."""
    sql_dir = tmp_path / "sql"
    shutil.copytree(sqlfiles.SQL_DIR, sql_dir)
    (sql_dir / "migrations" / "9000_probe.sql").write_text(
        textwrap.dedent("""\
            -- A later release: a column and an index on a configurable table.
            -- name: migration_9000#
            ALTER TABLE "tasks" ADD COLUMN probe TEXT;
            CREATE INDEX tasks_probe_idx ON "tasks" (probe) WHERE probe IS NOT NULL;
        """)
    )
    monkeypatch.setattr(sqlfiles, "SQL_DIR", sql_dir)
    assert [s.name for s in files_for("x").migration_scripts][-1] == "migrations/9000_probe.sql"
    await assert_step_by_step_equals_fresh(pg_dsn, conn, schemas)
    stepped = schemas[-1]
    assert "probe text" in dump(pg_dsn, stepped)


async def test_rerunning_migrate_changes_nothing(
    pg_dsn: str, pg_dump_major: int, conn: asyncpg.Connection, schemas: list[str]
) -> None:
    name = fresh_name(schemas, "mig_again")
    await install(pg_dsn, name)
    before_dump, before_rows = dump(pg_dsn, name), await bookkeeping(conn, name)
    backend = PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=name, max_connections=1))
    try:
        assert await backend.migrate(dry_run=True) == []
        assert await backend.migrate() == []
        await backend.connect()  # the automatic path again
    finally:
        await backend.close()
    assert (await schema.migrate(conn, files_for(name), name)).scripts == []
    assert dump(pg_dsn, name) == before_dump
    assert await bookkeeping(conn, name) == before_rows  # same rows, same applied_at


async def test_schema_version_is_recorded(
    pg_dsn: str, conn: asyncpg.Connection, schemas: list[str]
) -> None:
    name = fresh_name(schemas, "mig_version")
    files = files_for(name)
    latest = max(number(s) for s in files.migration_scripts)
    backend = PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=name, max_connections=1))
    try:
        await backend.connect()
        assert await backend.schema_version() == latest
    finally:
        await backend.close()
    rows = await bookkeeping(conn, name)
    expected = {s.name: s.checksum for s in files.migration_scripts + files.function_scripts}
    assert {n: c for n, c, _ in rows} == expected  # every file, with the checksum applied


MIGRATE_ONE = """
import asyncio, json, sys, time
from omniq.backend.postgres import PostgreSQLBackend
from omniq.models.config import PostgresConfig

dsn, name = sys.argv[1], sys.argv[2]
backend = PostgreSQLBackend(PostgresConfig(dsn=dsn, schema=name, min_connections=1,
                                           max_connections=1, connect_timeout=60))
print("ready", flush=True)
sys.stdin.readline()  # the starting gun: all twenty are imported and waiting here
began = time.time()
applied = asyncio.run(backend.migrate())
print(json.dumps({"applied": applied, "began": began, "ended": time.time()}))
"""


async def test_twenty_processes_starting_together_migrate_once(
    pg_dsn: str, conn: asyncpg.Connection, schemas: list[str]
) -> None:
    name = fresh_name(schemas, "mig_race")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_ONE, pg_dsn, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(20)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert "Traceback" not in err and "ERROR" not in err, err
            reports.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    began = [r["began"] for r in reports]
    assert max(began) - min(began) < 1.0, "the processes did not start together"
    files = files_for(name)
    everything = [s.name for s in files.migration_scripts + files.function_scripts]
    did_work = [r["applied"] for r in reports if r["applied"]]
    assert did_work == [everything]  # one process migrated; nineteen found nothing to do
    rows = await bookkeeping(conn, name)
    assert sorted(n for n, _, _ in rows) == sorted(everything)  # one row per file, once
    version = await schema.plan(conn, files, name)
    assert version.scripts == []
    assert version.version == max(number(s) for s in files.migration_scripts)


async def test_committed_snapshot_is_the_installed_schema(
    pg_dsn: str, pg_dump_major: int, schemas: list[str]
) -> None:
    path = snap.snapshot_file(pg_dump_major)  # pg_dump 16 prints views unlike 15: a file each
    assert path.exists(), f"no {path.name} for pg_dump {pg_dump_major}: run scripts/schema-snapshot"
    committed = path.read_text()
    name = fresh_name(schemas, "mig_snapshot")
    await install(pg_dsn, name)
    installed = snap.render(dump(pg_dsn, name), pg_dump_major)
    assert installed == committed, (
        f"sql/{path.name} differs from the schema OmniQ installs: run "
        "scripts/schema-snapshot and commit the file (review its diff)"
    )


async def test_migrations_wait_for_locks_a_bounded_time_and_retry(
    pg_dsn: str, conn: asyncpg.Connection, schemas: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9, defect 9: a migration stuck behind a long transaction waited without bound
    (and queued every query of the queue behind its lock). It now gives up each lock wait
    after lock_timeout, rolls back, and tries again; after the last attempt it says why."""
    name = fresh_name(schemas, "mig_locked")
    full = files_for(name)
    release = files_for(name)
    release.migration_scripts = full.migration_scripts[:2]  # an installation of an older release
    await schema.migrate(conn, release, name)
    monkeypatch.setattr(schema, "LOCK_TIMEOUT", "200ms", raising=False)
    monkeypatch.setattr(schema, "LOCK_RETRY_PAUSE", 0.1, raising=False)
    monkeypatch.setattr(schema, "LOCK_ATTEMPTS", 3, raising=False)

    holder = await asyncpg.connect(pg_dsn)
    migrator = await asyncpg.connect(pg_dsn)
    try:
        writing = holder.transaction()
        await writing.start()  # a long transaction writing to the queue
        await holder.execute(f"LOCK TABLE {quote_identifier(name)}.tasks IN ROW EXCLUSIVE MODE")
        with pytest.raises(SchemaError, match="lock timeout|lock_timeout"):
            await asyncio.wait_for(schema.migrate(migrator, full, name), 30)
        assert (await schema.plan(conn, full, name)).version == 2  # nothing was changed

        monkeypatch.setattr(schema, "LOCK_ATTEMPTS", 50, raising=False)
        attempt = asyncio.create_task(asyncio.wait_for(schema.migrate(migrator, full, name), 30))
        await asyncio.sleep(0.5)  # a few attempts time out meanwhile
        await writing.rollback()  # the transaction ends
        applied = await attempt
        assert [s.name for s in applied.scripts if s.name.startswith("migrations/")] == [
            s.name for s in full.migration_scripts[2:]
        ]
    finally:
        await holder.close()
        await migrator.close()
    assert (await schema.plan(conn, full, name)).scripts == []
