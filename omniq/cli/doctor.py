"""``omniq doctor``: is this database ready for OmniQ, and is it healthy? Changes nothing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg

from ..backend.postgres import schema as schema_module
from ..backend.postgres.connection import connect_listener, target
from ..backend.postgres.sqlfiles import SQLFiles, sql_files
from ..errors import OmniQError
from ..identifiers import quote_identifier
from ..models.config import PostgresConfig
from . import output
from .common import add_command, config, raw_connection, run

OK, WARN, FAIL = "OK", "WARN", "FAIL"
MIN_SERVER = 13
LISTEN_TIMEOUT = 5.0
DEAD_ROWS_WARN = 10_000  # and more than DEAD_SHARE_WARN of the table
DEAD_SHARE_WARN = 0.2
SEQ_SCAN_ROWS = 100_000  # tables this big should be read through indexes
MAIN_TABLES = ("tasks", "results", "events", "schedules")
BOOKKEEPING = ("omniq_workers", "omniq_migrations", "omniq_meta")
INVARIANT_ROWS = 1000  # finished tasks looked at, at most, per way of finding them


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    doctor = add_command(
        commands,
        "doctor",
        run_doctor,
        "check connection, privileges, schema version, LISTEN, vacuum and index health",
        "Check what OmniQ needs from the database and how its tables are doing. Prints one\n"
        "OK, WARN or FAIL line per check and exits 1 when any check fails. Changes nothing.\n"
        "With --invariants, also check that every task and schedule is in a consistent state\n"
        "(omniq_check_invariants(), see sql/README.md): one FAIL line per violation.",
    )
    doctor.add_argument(
        "--invariants",
        action="store_true",
        help="also run omniq_check_invariants(): tasks stuck waiting, finished tasks missing "
        "their result, event or callbacks, tasks held by dead workers, jammed schedules",
    )
    doctor.add_argument(
        "--window",
        type=float,
        default=1.0,
        metavar="HOURS",
        help="with --invariants: look at tasks finished within this many hours (default: 1)",
    )


def run_doctor(args: argparse.Namespace) -> int:
    cfg = config(args)
    if args.window <= 0:
        print("omniq: error: --window must be a positive number of hours", file=sys.stderr)
        return 2

    async def main() -> list[str]:
        levels = []
        async for level, name, message in checks(cfg, args.invariants, args.window):
            print(f"{level:<5} {name:<11} {message}", flush=True)
            levels.append(level)
        return levels

    levels = run(main)
    failed, warned = levels.count(FAIL), levels.count(WARN)
    print(f"\n{output.count(failed, 'failure')}, {output.count(warned, 'warning')}")
    return 1 if failed else 0


async def checks(
    cfg: PostgresConfig, invariants: bool = False, window_hours: float = 1.0
) -> AsyncIterator[tuple[str, str, str]]:
    files = sql_files(cfg.schema, tuple(cfg.tables.items()))
    q: Any = files.cli
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        try:
            conn = await stack.enter_async_context(raw_connection(cfg))
        except (OmniQError, OSError) as exc:
            yield FAIL, "connection", " ".join(str(exc).split())
            return
        elapsed = (time.monotonic() - started) * 1000
        info = await q.server_info(conn)
        major = conn.get_server_version().major
        level = OK if major >= MIN_SERVER else FAIL
        who = f"{info['username']}{' (superuser)' if info['superuser'] else ''}"
        need = "" if level == OK else f"; OmniQ needs PostgreSQL {MIN_SERVER} or later"
        yield (
            level,
            "connection",
            (
                f"PostgreSQL {info['version']} at {target(cfg)} as {who}, connected in {elapsed:.0f} ms{need}"
            ),
        )
        if not info["autovacuum"]:
            yield WARN, "autovacuum", "autovacuum is off: queue tables bloat unless you vacuum them"
        line, usable = await _privileges(conn, q, cfg, files, info["username"])
        yield line
        m: Any = files.migrations
        installed = usable and await m.installed(conn, schema_name=cfg.schema)
        if usable:
            yield await _schema(conn, files, cfg, installed)
        yield await _listen(conn, q, cfg)
        if installed:
            async for line in _tables(conn, q, cfg, files):
                yield line
        if invariants:
            async for line in _invariants(conn, q, installed, window_hours):
                yield line


async def _invariants(
    conn: asyncpg.Connection, q: Any, installed: bool, window_hours: float
) -> AsyncIterator[tuple[str, str, str]]:
    """One FAIL line per violated invariant, or one OK line."""
    if not installed:
        yield FAIL, "invariants", "OmniQ is not installed in this schema: nothing to check"
        return
    started = time.monotonic()
    rows = await q.check_invariants(
        conn, window=timedelta(hours=window_hours), limit=INVARIANT_ROWS
    )
    elapsed = (time.monotonic() - started) * 1000
    for row in rows:
        subject = [f"task {row['task_id']}"] if row["task_id"] is not None else []
        subject += [f"schedule {row['schedule_id']}"] if row["schedule_id"] is not None else []
        yield FAIL, "invariants", ": ".join([row["invariant"], *subject, row["detail"]])
    if not rows:
        yield (
            OK,
            "invariants",
            f"all hold (tasks finished within {window_hours:g} h looked at; {elapsed:.0f} ms)",
        )


async def _privileges(
    conn: asyncpg.Connection, q: Any, cfg: PostgresConfig, files: SQLFiles, user: str
) -> tuple[tuple[str, str, str], bool]:
    """The privileges line, and whether the schema can be looked into."""
    p = await q.privileges(conn, schema_name=cfg.schema)
    name, who = quote_identifier(cfg.schema, "schema"), quote_identifier(user)
    if not p["schema_exists"]:
        if p["create_database"]:
            return (
                OK,
                "privileges",
                f"schema {name} does not exist yet; this user may create it",
            ), True
        return (
            FAIL,
            "privileges",
            f"schema {name} does not exist and this user lacks CREATE on the database: "
            "have a DBA apply `omniq sql` (or GRANT CREATE ON DATABASE)",
        ), True
    if not p["usage_schema"]:
        message = f"no USAGE on schema {name}: GRANT USAGE ON SCHEMA {name} TO {who}"
        return (FAIL, "privileges", message), False
    tables = [files.names[k] for k in MAIN_TABLES] + list(BOOKKEEPING)
    rows = await q.table_privileges(conn, schema_name=cfg.schema, tables=tables)
    denied = [r["name"] for r in rows if not r["read_write"]]
    if denied:
        roles = await q.protocol_privileges(conn, schema_name=cfg.schema)
        acts_as = "worker" if roles["worker"] else "producer" if roles["producer"] else None
        if acts_as:  # a least-privilege role: it writes through the functions, not the tables
            message = (
                f"acts through OmniQ's functions as a {acts_as} role (sql/roles.sql) in "
                f"schema {name}; it writes no table directly"
            )
            return (OK, "privileges", message), True
        message = (
            f"cannot read and write {', '.join(denied)} in schema {name}: GRANT SELECT, INSERT, "
            f"UPDATE, DELETE ON ALL TABLES IN SCHEMA {name} TO {who}"
        )
        return (FAIL, "privileges", message), False
    rw = f"; read/write on {output.count(len(rows), 'table')}" if rows else ""
    if p["create_schema"]:
        return (OK, "privileges", f"USAGE and CREATE on schema {name}{rw}"), True
    message = f"no CREATE on schema {name}{rw}: upgrades need a DBA to apply `omniq sql`"
    return (WARN, "privileges", message), True


async def _schema(
    conn: asyncpg.Connection, files: SQLFiles, cfg: PostgresConfig, installed: bool
) -> tuple[str, str, str]:
    latest = max(int(s.name.split("/")[1].split("_")[0]) for s in files.migration_scripts)
    if not installed:
        return (
            WARN,
            "schema",
            (
                f"OmniQ is not installed in schema {cfg.schema}: run `omniq migrate` "
                "(or let the first worker create it), or hand `omniq sql` to a DBA"
            ),
        )
    plan = await schema_module.plan(conn, files, cfg.schema)
    known = {s.name for s in files.migration_scripts + files.function_scripts}
    m: Any = files.migrations
    applied = {r["name"] for r in await m.applied_migrations(conn)}
    unknown = sorted(applied - known)
    if unknown:
        return (
            WARN,
            "schema",
            (
                f"version {plan.version}, newer than this OmniQ knows ({', '.join(unknown)}): upgrade OmniQ"
            ),
        )
    if plan.scripts:
        return (
            WARN,
            "schema",
            (
                f"version {plan.version} of {latest}; pending: {', '.join(s.name for s in plan.scripts)}. "
                "Run `omniq migrate` or apply `omniq sql`"
            ),
        )
    return OK, "schema", f"version {plan.version} of {latest}, stored functions up to date"


async def _listen(conn: asyncpg.Connection, q: Any, cfg: PostgresConfig) -> tuple[str, str, str]:
    channel = f"omniq_doctor_{uuid.uuid4().hex[:12]}"
    try:
        listener = await connect_listener(cfg)
    except (OmniQError, OSError) as exc:
        return FAIL, "listen", f"cannot open the listening connection: {exc}"
    heard: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def on_notify(*_: Any) -> None:
        if not heard.done():
            heard.set_result(time.monotonic())

    try:
        await listener.add_listener(channel, on_notify)
        sent = time.monotonic()
        await q.notify(conn, channel=channel, payload="ping")
        try:
            received = await asyncio.wait_for(heard, LISTEN_TIMEOUT)
        except TimeoutError:
            return (
                FAIL,
                "listen",
                (
                    f"sent a NOTIFY, but the listening connection heard nothing within "
                    f"{LISTEN_TIMEOUT:g}s: workers would not wake up. Behind PgBouncer in transaction "
                    "mode? Workers need a direct connection for LISTEN (listen_dsn)"
                ),
            )
        return (
            OK,
            "listen",
            f"round trip of a NOTIFY on a scratch channel: {(received - sent) * 1000:.0f} ms",
        )
    finally:
        await listener.close()


async def _tables(
    conn: asyncpg.Connection, q: Any, cfg: PostgresConfig, files: SQLFiles
) -> AsyncIterator[tuple[str, str, str]]:
    tables = [files.names[k] for k in MAIN_TABLES]
    for t in await q.table_health(conn, schema_name=cfg.schema, tables=tables):
        live, dead = t["live"], t["dead"]
        share = dead / (live + dead) if live + dead else 0.0
        vacuumed = (
            f"last vacuum {output.ago(t['last_vacuum'])}" if t["last_vacuum"] else "never vacuumed"
        )
        text = f"{t['name']}: {live:,} rows, {dead:,} dead ({share:.0%}), {output.size(t['bytes'])}, {vacuumed}"
        if dead > DEAD_ROWS_WARN and share > DEAD_SHARE_WARN:
            yield (
                WARN,
                "vacuum",
                text + ": autovacuum is falling behind (VACUUM it; check long transactions)",
            )
        elif live > SEQ_SCAN_ROWS and t["seq_scan"] > t["idx_scan"]:
            yield (
                WARN,
                "vacuum",
                text
                + (
                    f"; {t['seq_scan']:,} sequential vs {t['idx_scan']:,} index scans: some query misses its index"
                ),
            )
        else:
            yield OK, "vacuum", text
    indexes = await q.index_usage(conn, schema_name=cfg.schema, tables=tables)
    if indexes:
        unused = [i["name"] for i in indexes if not i["scans"]]
        top = max(indexes, key=lambda i: i["scans"])
        total = sum(i["bytes"] for i in indexes)
        text = f"{len(indexes)} indexes, {output.size(total)}; busiest {top['name']} ({top['scans']:,} scans)"
        if unused:
            text += f"; not used since statistics reset: {', '.join(unused)}"
        yield OK, "indexes", text
