"""Creates and migrates OmniQ's schema, and keeps the version contract between releases.

The schema version is the number of the newest migration applied. The database records it
(``omniq_meta`` key ``schema_version``) together with the oldest code schema version that may
still run against it (``min_code_version``, raised by a contract migration that removes what
older releases use). A process whose code is older than the database runs only if the database
still accepts its version, and then changes nothing; otherwise it refuses. No process ever
downgrades anything: function files are re-applied only by code at least as new as the schema.

Migrations run under an advisory lock that every migrator takes by polling, outside any
transaction, so that any number of processes starting together migrate once. The pending
migrations and the function files are applied in one transaction; a migration that builds an
index ``CONCURRENTLY`` on a big table ends its transaction there, builds the index outside it,
and is recorded once the index is valid (see ``sql/README.md``, "Migrations").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ... import __version__
from ...errors import SchemaError
from ...identifiers import quote_identifier
from . import sqlfiles
from .connection import Connection
from .sqlfiles import Script, SQLFiles

log = logging.getLogger("omniq.migrate")

TABLES_KEY = "tables"
VERSION_KEY = "schema_version"  # written by record_migration (sql/queries/migrations.sql)
MIN_CODE_KEY = "min_code_version"  # written by contract migrations (0010 on)
# How long one migration statement may wait for a lock (SET LOCAL lock_timeout), how many
# times a migration that timed out is tried again, and the pause between attempts.
LOCK_TIMEOUT = "5s"
LOCK_ATTEMPTS = 6
LOCK_RETRY_PAUSE = 2.0
# How often a process waiting for another migrator asks for the lock again.
LOCK_POLL = 0.1
# A table this big (the planner's row estimate; bytes when it was never analyzed) gets the
# CREATE INDEX CONCURRENTLY statements of a migration outside the migration transaction.
BIG_TABLE_ROWS = 100_000
BIG_TABLE_BYTES = 64 * 1024 * 1024
# Creating an object whose name is taken: a user's own table, or a configured table name
# equal to one of OmniQ's own objects (omniq_workers, tasks_pkey, ...).
_CLASHES = (
    asyncpg.DuplicateTableError,
    asyncpg.DuplicateObjectError,
    asyncpg.DuplicateFunctionError,
)
_CONCURRENTLY = re.compile(
    r"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(?P<index>\w+)\s+"
    r'ON\s+(?:ONLY\s+)?(?P<table>"(?:[^"]|"")+"|\w+)',
    re.MULTILINE | re.IGNORECASE,
)
_LOCK_LINE = re.compile(r"^--\s*lock:\s*(?P<table>\"[^\"]+\"|\w+)\s+(?P<mode>[A-Z ]+?)\s*$")
LOCK_MODES = (
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
)
# Locks of the migrations written before migrations declared their own `-- lock:` lines.
OLD_LOCKS_FILE = "migrations/locks-0001-0009.txt"


@dataclass(frozen=True, slots=True)
class Plan:
    """The state of an installation against this code, and what a migration run would apply."""

    scripts: list[Script]  # in order; empty when current, or newer than this code
    version: int  # the database's schema version: its newest migration (0: not installed)
    code_version: int = 0  # this code's schema version: its newest migration file
    min_code_version: int = 0  # the oldest code version the database accepts (0: any)
    installed: bool = False

    @property
    def newer(self) -> bool:
        """The database was migrated by a newer OmniQ."""
        return self.version > self.code_version

    @property
    def compatible(self) -> bool:
        """This code may run against the database (it accepts this code's version)."""
        return self.code_version >= self.min_code_version


@dataclass(frozen=True, slots=True)
class IndexBuild:
    """An index a migration builds concurrently (its statement says CONCURRENTLY)."""

    index: str  # the index name, unqualified
    table: str  # the table as the statement names it (quoted, configured name)
    sql: str  # the statement as written: CONCURRENTLY, outside any transaction

    @property
    def in_transaction(self) -> str:
        """The same build inside the migration transaction (for a small table)."""
        return re.sub(r"\bCONCURRENTLY\s+", "", self.sql, count=1, flags=re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Steps:
    """A migration split where it must be: its transactional part, then its index builds."""

    transactional: str
    builds: list[IndexBuild] = field(default_factory=list)


def code_version(files: SQLFiles) -> int:
    """This code's schema version: the number of its newest migration file."""
    return max((number_of(s.name) for s in files.migration_scripts), default=0)


def number_of(name: str) -> int:
    """The number of a migration, from its name ``migrations/0010_name.sql``."""
    return int(name.split("/")[-1].split("_")[0])


def steps(script: Script) -> Steps:
    """Split a migration before its first concurrent index build: those statements come last
    in a migration file, one index each, ``IF NOT EXISTS``."""
    first = _CONCURRENTLY.search(script.sql)
    if first is None:
        return Steps(script.sql)
    builds = []
    for statement in re.split(r";[ \t]*(?:\n|$)", script.sql[first.start() :]):
        if not statement.strip():
            continue
        match = _CONCURRENTLY.match(statement.strip())
        if match is None:
            raise SchemaError(
                f"{script.name}: after its first concurrent index build a migration may hold "
                "only more of them (one index each, CONCURRENTLY IF NOT EXISTS), not "
                f"{statement.strip()[:80]!r}"
            )
        builds.append(IndexBuild(match["index"], match["table"], statement.strip() + ";"))
    return Steps(script.sql[: first.start()], builds)


def psql_text(script: Script) -> str:
    """A script as the one-transaction file `omniq sql` prints runs it: a migration's concurrent
    index builds inside the transaction (fine on a small table), each after a comment giving the
    statement to run first, outside the file, on a big one (the file's build then finds it)."""
    parts = steps(script)
    text = [parts.transactional.strip()]
    for build in parts.builds:
        statement = "\n".join(f"--   {line}" for line in build.sql.splitlines())  # all commented
        text.append(
            f"-- On a big table, build this index first, outside this file (writes go on):\n"
            f"{statement}\n{build.in_transaction}"
        )
    return "\n".join(t for t in text if t)


async def plan(conn: Connection, files: SQLFiles, schema: str) -> Plan:
    """The installation's state and the scripts not yet applied (or changed since), without
    taking any lock. Nothing is to apply to a database newer than this code: its function
    files are newer than ours, and ours must not replace them."""
    m = files.migrations
    code = code_version(files)
    if not await m.installed(conn, schema_name=schema):
        return Plan(files.migration_scripts + files.function_scripts, 0, code)
    applied = {r["name"]: r["checksum"] for r in await m.applied_migrations(conn)}
    numbers = [number_of(name) for name in applied if name.startswith("migrations/")]
    version = max([int(await m.get_meta(conn, key=VERSION_KEY) or 0), *numbers], default=0)
    min_code = int(await m.get_meta(conn, key=MIN_CODE_KEY) or 0)
    todo: list[Script] = []
    if version <= code:
        todo = [s for s in files.migration_scripts if s.name not in applied]
        todo += [s for s in files.function_scripts if applied.get(s.name) != s.checksum or todo]
    return Plan(todo, version, code, min_code, installed=True)


def check_compatible(state: Plan, files: SQLFiles) -> None:
    """Refuse a database that does not accept this code's version (nothing is changed)."""
    if state.compatible:
        return
    raise SchemaError(
        f"this database was migrated by a newer OmniQ (schema {state.version}); upgrade OmniQ. "
        f"This OmniQ ({__version__}) has schema {state.code_version}, and schema "
        f"{quote_identifier(files.names['public'], 'schema')} accepts schema "
        f"{state.min_code_version} or later. Nothing was changed."
    )


async def prepare(
    conn: Connection, files: SQLFiles, schema: str, mode: str = "auto"
) -> Plan | None:
    """What connecting does to the schema (``PostgresConfig.migrate``).

    ``auto`` creates or upgrades it, never downgrades it, and refuses a newer schema that does
    not accept this code; ``check`` changes nothing and refuses a missing, outdated or
    incompatible installation; ``off`` does nothing. A newer schema that accepts this code is
    used as it is, in both ``auto`` and ``check``.
    """
    if mode == "off":
        return None
    if mode == "auto":
        return await migrate(conn, files, schema)
    name = quote_identifier(schema, "schema")
    state = await plan(conn, files, schema)
    if not state.installed:
        raise SchemaError(
            f"schema {name} has no OmniQ installation. Check the schema name (--schema, "
            f"OMNIQ_SCHEMA); to install OmniQ there, run `omniq migrate --schema {name}`."
        )
    check_compatible(state, files)
    await _check_tables(conn, files, write=False)
    if state.scripts:
        what = ", ".join(s.name for s in state.scripts[:3]) + (
            ", ..." if len(state.scripts) > 3 else ""
        )
        raise SchemaError(
            f"schema {name} is not up to date: {len(state.scripts)} script(s) to apply ({what}); "
            f"it is at schema version {state.version}, this OmniQ's is {state.code_version}. "
            f"Run `omniq migrate --schema {name}` (or connect with migrate='auto'); "
            "nothing was changed."
        )
    _note_newer(state, files)
    return state


def _note_newer(state: Plan, files: SQLFiles) -> None:
    if state.newer:
        log.info(
            "schema %s is at version %d, newer than this OmniQ's %d; it accepts this version, "
            "so this process uses it as it is and changes nothing",
            files.names["public"],
            state.version,
            state.code_version,
        )


async def migrate(conn: Connection, files: SQLFiles, schema: str) -> Plan:
    """Bring the schema up to date; returns what was applied (nothing when current or newer).

    Refuses (SchemaError, nothing changed) a database migrated by a newer OmniQ that does not
    accept this code. Every lock a migration takes on OmniQ's tables waits at most
    LOCK_TIMEOUT: a migration stuck behind a long transaction would otherwise queue every
    query of the queue behind it. On a timeout the transaction rolls back and is tried again,
    LOCK_ATTEMPTS times in all, with a pause between, before SchemaError says who holds it.
    """
    current = await plan(conn, files, schema)
    check_compatible(current, files)
    if not current.scripts:
        await _check_tables(conn, files)
        _note_newer(current, files)
        return current
    async with _migration_lock(conn, files, schema):
        return await _apply_all(conn, files, schema)


@contextlib.asynccontextmanager
async def _migration_lock(conn: Connection, files: SQLFiles, schema: str) -> AsyncIterator[None]:
    """The schema's migration lock for this session, taken by polling outside any transaction."""
    m = files.migrations
    waited = 0
    while not await m.try_lock_installation(conn, schema_name=schema):
        if waited % int(30 / LOCK_POLL) == 0:
            log.info("waiting for another process migrating schema %s", files.names["public"])
        waited += 1
        await asyncio.sleep(LOCK_POLL)
    try:
        yield
    finally:
        try:
            await m.unlock_installation(conn, schema_name=schema)
        except BaseException:
            conn.terminate()  # the lock ends with the session: never keep it by mistake
            raise


async def _apply_all(conn: Connection, files: SQLFiles, schema: str) -> Plan:
    """Apply what is missing, holding the migration lock: one transaction, split only after a
    migration whose concurrent index builds meet a big table."""
    applied: list[Script] = []
    while True:
        done, deferred = await _with_lock_retries(
            files, functools.partial(_apply_transaction, conn, files, schema, bool(applied))
        )
        applied += done
        if deferred is None:
            final = await plan(conn, files, schema)
            return Plan(applied, final.version, final.code_version, final.min_code_version, True)
        script, builds = deferred
        for build in builds:
            await _build_concurrently(conn, files, schema, build)
        await files.migrations.record_migration(conn, name=script.name, checksum=script.checksum)
        applied.append(script)


async def _with_lock_retries(files: SQLFiles, attempt_once: Any) -> Any:
    attempt = 1
    while True:
        try:
            return await attempt_once()
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


async def _apply_transaction(
    conn: Connection, files: SQLFiles, schema: str, migrated: bool
) -> tuple[list[Script], tuple[Script, list[IndexBuild]] | None]:
    """One transaction: the pending migrations up to (and including the transactional part of)
    the first that must build an index outside it, else all of them and the function files.
    Returns what it recorded and the migration whose builds are left to do."""
    m = files.migrations
    done: list[Script] = []
    async with conn.transaction():
        await m.bound_lock_waits(conn, timeout=LOCK_TIMEOUT)
        if not await m.schema_exists(conn, schema_name=schema):
            await m.create_schema(conn)  # a user owning the schema needs no more
        await m.use_schema(conn)
        await m.create_bookkeeping(conn)
        await _check_tables(conn, files)
        todo = await plan(conn, files, schema)  # again, now that we hold the lock
        check_compatible(todo, files)
        migrations = [s for s in todo.scripts if s.name.startswith("migrations/")]
        for script in migrations:
            parts = steps(script)
            if parts.transactional.strip():  # a migration may hold only index builds
                await _execute(conn, files, script, parts.transactional)
            deferred = []
            for build in parts.builds:
                if await _big(conn, files, schema, build.table):
                    deferred.append(build)
                else:
                    await _drop_if_invalid(conn, files, schema, build, concurrently=False)
                    await _execute(conn, files, script, build.in_transaction)
            if deferred:
                return done, (script, deferred)
            await m.record_migration(conn, name=script.name, checksum=script.checksum)
            done.append(script)
        functions = files.function_scripts if migrations or migrated else todo.scripts
        for script in functions:
            await _execute(conn, files, script, script.sql)
            await m.record_migration(conn, name=script.name, checksum=script.checksum)
            done.append(script)
    return done, None


async def _execute(conn: Connection, files: SQLFiles, script: Script, sql: str) -> None:
    try:
        await conn.execute(sql)
    except _CLASHES as exc:
        raise SchemaError(
            f"cannot install OmniQ in schema {files.names['public']!r}: {exc} "
            f"(applying {script.name}). A table, index or function of that name already "
            "exists there; use another schema or other table names."
        ) from exc


async def _big(conn: Connection, files: SQLFiles, schema: str, table: str) -> bool:
    """Whether a table is big enough to build its indexes CONCURRENTLY."""
    size = await files.migrations.relation_size(conn, name=_qualified(schema, table))
    if size is None:
        return False
    rows: int = size["rows"]
    return rows >= BIG_TABLE_ROWS if rows >= 0 else bool(size["bytes"] >= BIG_TABLE_BYTES)


async def _drop_if_invalid(
    conn: Connection, files: SQLFiles, schema: str, build: IndexBuild, concurrently: bool
) -> None:
    """Drop the index an earlier concurrent build left INVALID (failed, interrupted): IF NOT
    EXISTS would otherwise keep it, and an invalid index is never used."""
    name = _qualified(schema, build.index)
    if await files.migrations.index_valid(conn, name=name) is False:
        log.warning("index %s was left INVALID by an earlier build: rebuilding it", name)
        drop = await files.migrations.drop_index_statement(
            conn, schema_name=schema, index_name=build.index, concurrently=concurrently
        )
        if drop is not None:
            await conn.execute(drop)


async def _build_concurrently(
    conn: Connection, files: SQLFiles, schema: str, build: IndexBuild
) -> None:
    """Build an index CONCURRENTLY, outside any transaction: writes to the table go on. It
    waits for the transactions already running, unbounded by lock_timeout (it blocks no
    writer)."""
    log.info("building index %s CONCURRENTLY on %s", build.index, build.table)
    await _drop_if_invalid(conn, files, schema, build, concurrently=True)
    await files.migrations.use_schema_for_session(conn)
    try:
        await conn.execute(build.sql)
    finally:
        await files.migrations.reset_search_path(conn)
    if await files.migrations.index_valid(conn, name=_qualified(schema, build.index)) is not True:
        raise SchemaError(
            f"index {build.index} on {build.table} is not valid after its concurrent build; "
            "run `omniq migrate` again (it drops and rebuilds it)"
        )


def _qualified(schema: str, name: str) -> str:
    quoted = name if name.startswith('"') else quote_identifier(name)
    return f"{quote_identifier(schema)}.{quoted}"


async def _check_tables(conn: Connection, files: SQLFiles, write: bool = True) -> None:
    """One installation per schema: refuse a second one with other table names."""
    wanted = ",".join(files.names[k] for k in ("tasks", "results", "events", "schedules"))
    recorded = await files.migrations.get_meta(conn, key=TABLES_KEY)
    if recorded is None and write:
        await files.migrations.set_meta(conn, key=TABLES_KEY, value=wanted)
    elif recorded is not None and recorded != wanted:
        raise SchemaError(
            f"schema {files.names['public']!r} already holds an OmniQ installation with tables "
            f"{recorded} (tasks, results, events, schedules), not {wanted}. Use another schema "
            "for a second installation, or the same table names."
        )


# -- what each step locks ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lock:
    table: str  # as the declaration names it: "tasks" (a configurable table) or omniq_meta
    mode: str  # one of LOCK_MODES


def declared_locks(script: Script) -> list[Lock]:
    """The table locks a migration declares it takes inside the migration transaction (its
    strongest per table): its own `-- lock: "tasks" SHARE` lines, or, for the migrations
    written before that rule, sql/migrations/locks-0001-0009.txt."""
    text = (sqlfiles.SQL_DIR / script.name).read_text()
    lines = text.splitlines()
    if not any(line.startswith("-- lock:") for line in lines):
        number = f"{number_of(script.name):04d}"
        old = (sqlfiles.SQL_DIR / OLD_LOCKS_FILE).read_text().splitlines()
        lines = [f"-- lock: {line.split(None, 1)[1]}" for line in old if line.startswith(number)]
    declared = [line.strip() for line in lines if line.startswith("-- lock:")]
    if not declared:
        raise SchemaError(
            f"{script.name} declares no locks: add `-- lock:` lines (or `-- lock: none`)"
        )
    locks = []
    for line in declared:
        found = _LOCK_LINE.match(line)
        if line == "-- lock: none":
            continue
        if found is None or found["mode"] not in LOCK_MODES:
            raise SchemaError(f"{script.name}: cannot read the lock declaration {line!r}")
        locks.append(Lock(found["table"], found["mode"]))
    return locks


async def describe(conn: Connection, files: SQLFiles, schema: str, state: Plan) -> list[str]:
    """What each pending step would do and which locks it takes, for `omniq migrate --dry-run`."""
    lines = []
    for script in state.scripts:
        lines.append(f"would apply {script.name}")
        if script.name.startswith("functions/"):
            continue
        locks = ", ".join(f"{_table(files, lk.table)} {lk.mode}" for lk in declared_locks(script))
        lines.append(f"    locks in the migration transaction: {locks or 'none on tables'}")
        for build in steps(script).builds:
            table = build.table.strip('"').replace('""', '"')
            if await _big(conn, files, schema, build.table):
                lines.append(
                    f"    index {build.index}: built CONCURRENTLY after the transaction "
                    f"({table} is big): {table} SHARE UPDATE EXCLUSIVE, writes go on"
                )
            else:
                lines.append(
                    f"    index {build.index}: built in the transaction ({table} is small): "
                    f"{table} SHARE, writes wait for the build"
                )
    if any(s.name.startswith("functions/") for s in state.scripts):
        lines.append(
            "    locks of the function files: at most ROW SHARE on tables (checking SQL "
            "function bodies), ACCESS EXCLUSIVE for an instant on the views they replace"
        )
    if state.scripts:
        lines.append(
            "    and ROW EXCLUSIVE on omniq_migrations and omniq_meta (the bookkeeping), under "
            "the schema's advisory migration lock (other migrators wait for it, the queue does not)"
        )
    return lines


def _table(files: SQLFiles, declared: str) -> str:
    name = declared.strip('"')
    return files.names.get(name, name)
