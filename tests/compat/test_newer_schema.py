"""HEAD against a schema migrated by a simulated newer release (issue 11, "rolling deploys").

A newer release is this repository's sql/ plus what a later release might ship: a migration
that adds a column to every table, and a function file whose body changed. While that release
still accepts HEAD's schema version, HEAD runs against it and changes nothing (its function
files are older: re-applying them would downgrade the newer processes' functions). Once a
contract migration raises ``min_code_version`` past HEAD, HEAD refuses, from Python and from
the CLI, and still changes nothing. "Nothing" is checked on the catalog (``pg_dump
--schema-only``) and on the bookkeeping rows.
"""

# ruff: noqa: S608 (SQL on the test's own schema names)

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend, schema, sqlfiles
from omniq.backend.postgres.sqlfiles import SQLFiles
from omniq.embedded import find_bindir
from omniq.errors import SchemaError
from omniq.models.config import PostgresConfig
from omniq.models.event import TaskEvent
from omniq.models.result import TaskResult
from omniq.models.schedule import Schedule
from omniq.models.task import Task

FUTURE = 9000  # the simulated newer release's schema version
REFUSAL = f"this database was migrated by a newer OmniQ (schema {FUTURE}); upgrade OmniQ"


def newer_release(tmp_path: Path, name: str, *, min_code: int | None) -> SQLFiles:
    """The SQL files of a release newer than HEAD, rendered for schema ``name``."""
    sql_dir = tmp_path / f"sql-{uuid.uuid4().hex[:6]}"
    shutil.copytree(sqlfiles.SQL_DIR, sql_dir)
    contract = (
        f"INSERT INTO omniq_meta (key, value) VALUES ('min_code_version', '{min_code}')\n"
        "    ON CONFLICT (key) DO UPDATE SET value = excluded.value;\n"
        if min_code is not None
        else ""
    )
    (sql_dir / "migrations" / f"{FUTURE}_future.sql").write_text(
        f"-- A later release: one more column on every table (expand).\n"
        f"-- lock: none\n"
        f"-- name: migration_{FUTURE}#\n"
        'ALTER TABLE "tasks" ADD COLUMN future_note TEXT;\n'
        'ALTER TABLE "results" ADD COLUMN future_note TEXT;\n'
        'ALTER TABLE "events" ADD COLUMN future_note TEXT;\n'
        'ALTER TABLE "schedules" ADD COLUMN future_note TEXT;\n'
        "ALTER TABLE omniq_workers ADD COLUMN future_note TEXT;\n" + contract
    )
    sqlapi = sql_dir / "functions" / "sqlapi.sql"
    text = sqlapi.read_text()
    marker = "-- A UUIDv7-style task id, like the Python client's"
    assert marker in text
    sqlapi.write_text(text.replace(marker, "-- (newer release) " + marker[3:], 1))
    saved = sqlfiles.SQL_DIR
    sqlfiles.SQL_DIR = sql_dir  # SQLFiles reads the directory when it is made
    try:
        return SQLFiles(name, PostgresConfig(schema=name).tables)
    finally:
        sqlfiles.SQL_DIR = saved


async def catalog(dsn: str, name: str) -> tuple[str, list[tuple[str, str]], dict[str, str]]:
    """The schema as pg_dump shows it, the bookkeeping rows, and the contract's meta keys."""
    dump = subprocess.run(
        [str(find_bindir() / "pg_dump"), "--schema-only", f"--schema={name}", "--dbname", dsn],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # pg_dump 15.14+ wraps its output in \restrict KEY ... \unrestrict KEY, a new key each run.
    dump = "\n".join(line for line in dump.splitlines() if not line.startswith("\\"))
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT name, checksum FROM {name}.omniq_migrations ORDER BY name")
        meta = await conn.fetch(
            f"SELECT key, value FROM {name}.omniq_meta WHERE key <> 'waiting_recheck'"
        )
    finally:
        await conn.close()
    return dump, [tuple(r) for r in rows], {r["key"]: r["value"] for r in meta}


@pytest.fixture
async def installed(pg_dsn: str, scratch_schema: str) -> str:
    """A schema HEAD installed (the automatic path)."""
    async with PostgreSQLBackend(config(pg_dsn, scratch_schema)):
        pass
    return scratch_schema


def config(dsn: str, name: str, migrate: str = "auto") -> PostgresConfig:
    settings = {} if migrate == "auto" else {"migrate": migrate}  # "auto" is the default
    return PostgresConfig(dsn=dsn, schema=name, max_connections=2, **settings)


async def migrate_with(dsn: str, files: SQLFiles, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await schema.migrate(conn, files, name)
    finally:
        await conn.close()


def omniq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omniq", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


async def use_every_component(backend: PostgreSQLBackend) -> None:
    """HEAD's reads and writes against tables that carry columns HEAD does not know."""
    queue = f"compat-{uuid.uuid4().hex[:6]}"
    task = Task(func="json.dumps", args=[1], queue_name=queue)
    await backend.task_queue.enqueue(task)
    assert (await backend.task_queue.get_task(task.id)).id == task.id  # type: ignore[union-attr]
    assert [t.id for t in await backend.task_queue.list_tasks(queue_name=queue)] == [task.id]
    taken = await backend.task_queue.dequeue([queue])
    assert taken is not None and taken.id == task.id
    await backend.result_storage.set(TaskResult(task_id=task.id, status="success", result=2))
    assert (await backend.result_storage.get(task.id)).result == 2  # type: ignore[union-attr]
    assert task.id in [r.task_id for r in await backend.result_storage.list_results()]
    await backend.event_storage.log_event(TaskEvent(task_id=task.id, event_type="completed"))
    assert len(await backend.event_storage.get_events(task_id=task.id)) >= 2
    schedule = Schedule(func="json.dumps", interval_seconds=3600, queue_name=queue)
    await backend.schedule_storage.save_schedule(schedule)
    assert (await backend.schedule_storage.get_schedule(schedule.id)) is not None
    assert [s.id for s in await backend.schedule_storage.list_schedules(queue_name=queue)] == [
        schedule.id
    ]


async def test_a_newer_schema_that_accepts_head_is_used_and_left_unchanged(
    pg_dsn: str, installed: str, tmp_path: Path
) -> None:
    newer = newer_release(tmp_path, installed, min_code=None)
    await migrate_with(pg_dsn, newer, installed)
    before = await catalog(pg_dsn, installed)

    for mode in ("auto", "check"):
        async with PostgreSQLBackend(config(pg_dsn, installed, mode)) as backend:
            assert await backend.migrate() == []  # nothing to apply to a newer schema
            await use_every_component(backend)
    migrated = omniq_cli("migrate", "--dsn", pg_dsn, "--schema", installed)
    assert migrated.returncode == 0, migrated.stderr
    assert f"is at version {FUTURE}, newer than this OmniQ's" in migrated.stdout

    after = await catalog(pg_dsn, installed)
    assert after[0] == before[0], "HEAD changed the newer schema's catalog"
    assert after[1:] == before[1:], "HEAD changed the bookkeeping of the newer schema"


async def test_a_newer_schema_that_refuses_head_is_refused_and_left_unchanged(
    pg_dsn: str, installed: str, tmp_path: Path
) -> None:
    newer = newer_release(tmp_path, installed, min_code=FUTURE)
    await migrate_with(pg_dsn, newer, installed)
    before = await catalog(pg_dsn, installed)
    assert before[2]["min_code_version"] == str(FUTURE)

    for mode in ("auto", "check"):
        with pytest.raises(SchemaError, match=re.escape(REFUSAL)):
            await PostgreSQLBackend(config(pg_dsn, installed, mode)).connect()
    with pytest.raises(SchemaError, match="upgrade OmniQ"):
        await PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=installed)).migrate()

    for command in (("migrate",), ("migrate", "--dry-run"), ("worker", "--burst")):
        result = omniq_cli(*command, "--dsn", pg_dsn, "--schema", installed)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert result.stderr.startswith(f"omniq: error: {REFUSAL}"), (command, result.stderr)
        assert "Nothing was changed" in result.stderr
    print("\nrefusal as printed:", result.stderr.strip())

    after = await catalog(pg_dsn, installed)
    assert after[0] == before[0], "HEAD changed the schema it refused"
    assert after[1:] == before[1:], "HEAD changed the bookkeeping of the schema it refused"


async def test_twenty_old_processes_against_a_newer_schema_change_nothing(
    pg_dsn: str, installed: str, tmp_path: Path
) -> None:
    """Many HEAD processes connecting at once to a newer schema neither migrate nor wait for
    each other: each finds the schema newer, compatible, and uses it as it is."""
    newer = newer_release(tmp_path, installed, min_code=None)
    await migrate_with(pg_dsn, newer, installed)
    before = await catalog(pg_dsn, installed)
    config = PostgresConfig(dsn=pg_dsn, schema=installed, max_connections=1)
    backends = [PostgreSQLBackend(config) for _ in range(20)]
    try:
        await asyncio.gather(*(b.connect() for b in backends))
    finally:
        await asyncio.gather(*(b.close() for b in backends))
    assert await catalog(pg_dsn, installed) == before
