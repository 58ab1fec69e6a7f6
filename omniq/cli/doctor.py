"""``omniq doctor``: is this database ready for OmniQ, and is it healthy? Changes nothing."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta

from ..backend.postgres import PostgreSQLBackend, installation
from ..backend.postgres.connection import target
from ..backend.postgres.monitor import AsyncPostgresMonitor
from ..backend.postgres.schema import Plan
from ..errors import OmniQError
from ..identifiers import quote_identifier
from ..models.config import PostgresConfig
from . import output
from .common import add_command, config, run

OK, WARN, FAIL = "OK", "WARN", "FAIL"
MIN_SERVER = 13
LISTEN_TIMEOUT = 5.0
DEAD_ROWS_WARN = 10_000  # and more than DEAD_SHARE_WARN of the table
DEAD_SHARE_WARN = 0.2
SEQ_SCAN_ROWS = 100_000  # tables this big should be read through indexes
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
    cfg = dataclasses.replace(
        config(args), migrate="off"
    )  # it changes nothing, whatever --migrate says
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
    started = time.monotonic()
    backend = PostgreSQLBackend(cfg)
    try:
        await backend.connect()
    except (OmniQError, OSError) as exc:
        yield FAIL, "connection", " ".join(str(exc).split())
        return
    try:
        elapsed = (time.monotonic() - started) * 1000
        monitor = backend.monitor
        info = await monitor.server()
        level = OK if info["major"] >= MIN_SERVER else FAIL
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
        line, usable = await _privileges(monitor, cfg, info["username"])
        yield line
        plan = await installation.state(backend) if usable else None
        installed = plan is not None and plan.installed
        if plan is not None:
            yield _schema(plan, cfg)
        yield await _listen(monitor)
        if installed:
            async for line in _tables(monitor):
                yield line
        if invariants:
            async for line in _invariants(monitor, installed, window_hours):
                yield line
    finally:
        await backend.close()


async def _invariants(
    monitor: AsyncPostgresMonitor, installed: bool, window_hours: float
) -> AsyncIterator[tuple[str, str, str]]:
    """One FAIL line per violated invariant, or one OK line."""
    if not installed:
        yield FAIL, "invariants", "OmniQ is not installed in this schema: nothing to check"
        return
    started = time.monotonic()
    rows = await monitor.check_invariants(timedelta(hours=window_hours), INVARIANT_ROWS)
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
    monitor: AsyncPostgresMonitor, cfg: PostgresConfig, user: str
) -> tuple[tuple[str, str, str], bool]:
    """The privileges line, and whether the schema can be looked into."""
    p = await monitor.privileges()
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
    tables = p["tables"]
    denied = [name for name, read_write in tables.items() if not read_write]
    if denied:
        acts_as = "worker" if p["worker"] else "producer" if p["producer"] else None
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
    rw = f"; read/write on {output.count(len(tables), 'table')}" if tables else ""
    if p["create_schema"]:
        return (OK, "privileges", f"USAGE and CREATE on schema {name}{rw}"), True
    message = f"no CREATE on schema {name}{rw}: upgrades need a DBA to apply `omniq sql`"
    return (WARN, "privileges", message), True


def _schema(plan: Plan, cfg: PostgresConfig) -> tuple[str, str, str]:
    if not plan.installed:
        return (
            WARN,
            "schema",
            (
                f"OmniQ is not installed in schema {cfg.schema}: run `omniq migrate` "
                "(or let the first worker create it), or hand `omniq sql` to a DBA"
            ),
        )
    if plan.newer:
        accepts = "it accepts this version" if plan.compatible else "it refuses this version"
        return (
            WARN if plan.compatible else FAIL,
            "schema",
            f"version {plan.version}, newer than this OmniQ's {plan.code_version} ({accepts}): "
            "upgrade OmniQ",
        )
    if plan.scripts:
        return (
            WARN,
            "schema",
            (
                f"version {plan.version} of {plan.code_version}; pending: {', '.join(s.name for s in plan.scripts)}. "
                "Run `omniq migrate` or apply `omniq sql`"
            ),
        )
    return (
        OK,
        "schema",
        f"version {plan.version} of {plan.code_version}, stored functions up to date",
    )


async def _listen(monitor: AsyncPostgresMonitor) -> tuple[str, str, str]:
    try:
        took = await monitor.listen_round_trip(LISTEN_TIMEOUT)
    except (OmniQError, OSError) as exc:
        return FAIL, "listen", f"cannot open the listening connection: {exc}"
    if took is None:
        return (
            FAIL,
            "listen",
            (
                f"sent a NOTIFY, but the listening connection heard nothing within "
                f"{LISTEN_TIMEOUT:g}s: workers would not wake up. Behind PgBouncer in transaction "
                "mode? Workers need a direct connection for LISTEN (listen_dsn)"
            ),
        )
    return OK, "listen", f"round trip of a NOTIFY on a scratch channel: {took * 1000:.0f} ms"


async def _tables(monitor: AsyncPostgresMonitor) -> AsyncIterator[tuple[str, str, str]]:
    for t in await monitor.table_health():
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
    indexes = await monitor.index_usage()
    if indexes:
        unused = [i["name"] for i in indexes if not i["scans"]]
        top = max(indexes, key=lambda i: i["scans"])
        total = sum(i["bytes"] for i in indexes)
        text = f"{len(indexes)} indexes, {output.size(total)}; busiest {top['name']} ({top['scans']:,} scans)"
        if unused:
            text += f"; not used since statistics reset: {', '.join(unused)}"
        yield OK, "indexes", text
