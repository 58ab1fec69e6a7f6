"""Creates and migrates OmniQ's schema: numbered migrations once, function files when changed.

Everything runs in one transaction under an advisory lock, so any number of processes
starting together migrate once and the others wait, then find nothing left to do.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from ...errors import SchemaError
from .sqlfiles import Script, SQLFiles

log = logging.getLogger("omniq.migrate")

TABLES_KEY = "tables"
# How long one migration statement may wait for a lock (SET LOCAL lock_timeout), how many
# times a migration that timed out is tried again, and the pause between attempts.
LOCK_TIMEOUT = "5s"
LOCK_ATTEMPTS = 6
LOCK_RETRY_PAUSE = 2.0
# Creating an object whose name is taken: a user's own table, or a configured table name
# equal to one of OmniQ's own objects (omniq_workers, tasks_pkey, ...).
_CLASHES = (
    asyncpg.DuplicateTableError,
    asyncpg.DuplicateObjectError,
    asyncpg.DuplicateFunctionError,
)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a migration run would apply, in order."""

    scripts: list[Script]
    version: int  # number of the latest numbered migration already applied (0: none)


async def plan(conn: asyncpg.Connection, files: SQLFiles, schema: str) -> Plan:
    """The scripts not yet applied (or changed since), without taking any lock."""
    applied: dict[str, str] = {}
    if await files.migrations.installed(conn, schema_name=schema):
        applied = {
            r["name"]: r["checksum"] for r in await files.migrations.applied_migrations(conn)
        }
    todo = [s for s in files.migration_scripts if s.name not in applied]
    todo += [s for s in files.function_scripts if applied.get(s.name) != s.checksum or todo]
    version = max(
        (_number_of(name) for name in applied if name.startswith("migrations/")), default=0
    )
    return Plan(todo, version)


async def migrate(conn: asyncpg.Connection, files: SQLFiles, schema: str) -> Plan:
    """Bring the schema up to date; returns what was applied (nothing when current).

    Every lock a migration takes on OmniQ's tables waits at most LOCK_TIMEOUT: a migration
    stuck behind a long transaction would otherwise queue every query of the queue behind
    it. On a timeout the whole migration rolls back and is tried again, LOCK_ATTEMPTS times
    in all, with a pause between, before SchemaError says who holds the lock.
    """
    current = await plan(conn, files, schema)
    if not current.scripts:
        await _check_tables(conn, files)
        return current
    attempt = 1
    while True:
        try:
            return await _apply(conn, files, schema)
        except asyncpg.LockNotAvailableError as exc:
            if attempt >= LOCK_ATTEMPTS:
                raise SchemaError(
                    f"could not migrate schema {files.names['public']!r}: {exc} after "
                    f"{LOCK_ATTEMPTS} attempts (lock_timeout {LOCK_TIMEOUT}). A long transaction "
                    "holds a lock on OmniQ's tables: find it in pg_stat_activity / pg_locks, "
                    "let it finish, and migrate again (nothing was changed)."
                ) from exc
            log.warning(
                "migrating schema %s: %s; attempt %d of %d in %gs",
                files.names["public"],
                exc,
                attempt + 1,
                LOCK_ATTEMPTS,
                LOCK_RETRY_PAUSE,
            )
            await asyncio.sleep(LOCK_RETRY_PAUSE)
            attempt += 1


async def _apply(conn: asyncpg.Connection, files: SQLFiles, schema: str) -> Plan:
    """One attempt: lock, bound the lock waits, apply what is missing, in one transaction."""
    async with conn.transaction():
        await files.migrations.lock_installation(conn, schema_name=schema)
        await files.migrations.bound_lock_waits(conn, timeout=LOCK_TIMEOUT)
        if not await files.migrations.schema_exists(conn, schema_name=schema):
            await files.migrations.create_schema(conn)  # a user owning the schema needs no more
        await files.migrations.use_schema(conn)
        await files.migrations.create_bookkeeping(conn)
        await _check_tables(conn, files)
        todo = await plan(conn, files, schema)  # again, now that we hold the lock
        for script in todo.scripts:
            try:
                await conn.execute(script.sql)
            except _CLASHES as exc:
                raise SchemaError(
                    f"cannot install OmniQ in schema {files.names['public']!r}: {exc} "
                    f"(applying {script.name}). A table, index or function of that name already "
                    "exists there; use another schema or other table names."
                ) from exc
            await files.migrations.record_migration(
                conn, name=script.name, checksum=script.checksum
            )
    return todo


async def _check_tables(conn: asyncpg.Connection, files: SQLFiles) -> None:
    """One installation per schema: refuse a second one with other table names."""
    wanted = ",".join(files.names[k] for k in ("tasks", "results", "events", "schedules"))
    recorded = await files.migrations.get_meta(conn, key=TABLES_KEY)
    if recorded is None:
        await files.migrations.set_meta(conn, key=TABLES_KEY, value=wanted)
    elif recorded != wanted:
        raise SchemaError(
            f"schema {files.names['public']!r} already holds an OmniQ installation with tables "
            f"{recorded} (tasks, results, events, schedules), not {wanted}. Use another schema "
            "for a second installation, or the same table names."
        )


def _number_of(name: str) -> int:
    return int(name.split("/")[-1].split("_")[0])
