"""``omniq migrate`` and ``omniq sql``: installing and upgrading the schema, or handing it to a DBA."""

from __future__ import annotations

import argparse
import re
from typing import Any

from .. import __version__
from ..backend.postgres import PostgreSQLBackend
from ..backend.postgres import schema as schema_module
from ..backend.postgres.sqlfiles import Query, Script, SQLFiles, sql_files
from ..identifiers import quote_identifier
from ..models.config import PostgresConfig
from .common import CommandError, add_command, config, raw_connection, run

PLACEHOLDER = re.compile(r"\$(\d+)")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    migrate = add_command(
        commands,
        "migrate",
        run_migrate,
        "create or upgrade OmniQ's schema and show its version",
        "Apply pending migrations and changed function files, in one transaction under an\n"
        "advisory lock (the path every OmniQ process takes on connect).",
    )
    migrate.add_argument(
        "--dry-run",
        action="store_true",
        help="only list what would be applied (the SQL: omniq sql)",
    )

    sql = add_command(
        commands,
        "sql",
        run_sql,
        "print the SQL that installs or upgrades the schema, for psql",
        "Print exactly what `omniq migrate` would run on the configured schema, as one\n"
        "transaction a DBA can review and apply by hand:\n\n"
        "  omniq sql --schema jobs > omniq.sql    # review, then:\n"
        '  psql "$DSN" -f omniq.sql\n\n'
        "Connects (read only) to find what is already applied; --fresh prints the full\n"
        "installation for an empty schema without connecting.",
    )
    sql.add_argument("--fresh", action="store_true", help="full installation, no connection needed")


def run_migrate(args: argparse.Namespace) -> int:
    cfg = config(args)

    async def main() -> tuple[list[str], schema_module.Plan, list[str]]:
        applied = [] if args.dry_run else await PostgreSQLBackend(cfg).migrate()
        files = sql_files(cfg.schema, tuple(cfg.tables.items()))
        async with raw_connection(cfg) as conn:
            plan = await schema_module.plan(conn, files, cfg.schema)
            schema_module.check_compatible(plan, files)
            return applied, plan, await schema_module.describe(conn, files, cfg.schema, plan)

    applied, plan, steps = run(main)
    name = quote_identifier(cfg.schema, "schema")
    for script in applied:
        print(f"applied {script}")
    for line in steps:  # each pending step, with the locks it takes
        print(line)
    if plan.scripts:
        print(
            f"schema {name} is at version {plan.version}, the latest is {_latest(cfg)}: "
            "run `omniq migrate` to apply, or `omniq sql` to see the SQL"
        )
    elif plan.newer:
        print(
            f"schema {name} is at version {plan.version}, newer than this OmniQ's "
            f"{plan.code_version}; it accepts this version (from {plan.min_code_version}): "
            "nothing to apply, nothing changed"
        )
    elif applied:
        print(f"schema {name} is now at version {plan.version}, the latest")
    else:
        print(f"schema {name} is up to date: version {plan.version}, nothing to apply")
    return 0


def _latest(cfg: PostgresConfig) -> int:
    files = sql_files(cfg.schema, tuple(cfg.tables.items()))
    return max(int(s.name.split("/")[-1].split("_")[0]) for s in files.migration_scripts)


def run_sql(args: argparse.Namespace) -> int:
    if args.fresh:
        cfg = PostgresConfig(schema=args.schema)
        files = sql_files(cfg.schema, tuple(cfg.tables.items()))
        print(
            script_text(files, cfg, files.migration_scripts + files.function_scripts, 0, False),
            end="",
        )
        return 0
    cfg = config(args)
    files = sql_files(cfg.schema, tuple(cfg.tables.items()))

    async def main() -> tuple[schema_module.Plan, bool]:
        async with raw_connection(cfg) as conn:
            m: Any = files.migrations
            plan = await schema_module.plan(conn, files, cfg.schema)
            if plan.scripts and await m.installed(conn, schema_name=cfg.schema):
                recorded = await m.get_meta(conn, key=schema_module.TABLES_KEY)
                if recorded not in (None, _tables(files)):  # the refusal migrate would give
                    raise CommandError(
                        f"schema {cfg.schema!r} holds an OmniQ installation with tables {recorded}, "
                        f"not {_tables(files)}"
                    )
            return plan, await m.schema_exists(conn, schema_name=cfg.schema)

    plan, exists = run(main)
    print(script_text(files, cfg, plan.scripts, plan.version, exists), end="")
    return 0


def _tables(files: SQLFiles) -> str:
    return ",".join(files.names[k] for k in ("tasks", "results", "events", "schedules"))


def script_text(
    files: SQLFiles, cfg: PostgresConfig, scripts: list[Script], version: int, schema_exists: bool
) -> str:
    """The migrator's own statements, in its order, with values written as SQL literals."""
    m: Any = files.migrations
    name = quote_identifier(cfg.schema, "schema")
    head = [
        f"-- OmniQ {__version__}: install or upgrade schema {name} (tables {_tables(files)}).",
        "-- Generated by `omniq sql`; the same statements `omniq migrate` runs, in one transaction.",
        '-- Apply with: psql "$DSN" -f this-file.sql (it stops at the first error; nothing is kept then)',
        "-- Comments of OmniQ's sql/ files are not sent to the server; read them there.",
    ]
    if not scripts:
        head.append(f"-- Schema {name} is up to date (version {version}): nothing to apply.")
        return "\n".join(head) + "\n"
    head.append("-- Applies, in order:")
    head += [f"--   {s.name}" for s in scripts]
    parts = [
        "\n".join(head),
        "\\set ON_ERROR_STOP on\nBEGIN;",  # psql: stop at the first error (all is rolled back)
        "-- Wait for any OmniQ process migrating this schema right now.\n"
        + bind(m.lock_installation, schema_name=cfg.schema),
        "-- Give up any other lock wait after a while, rather than hold up the queue behind it.\n"
        + bind(m.bound_lock_waits, timeout=schema_module.LOCK_TIMEOUT),
        *([] if schema_exists else [bind(m.create_schema)]),
        bind(m.use_schema),
        "-- Bookkeeping: what is applied, and the table names of this installation.\n"
        + bind(m.create_bookkeeping),
        bind(m.set_meta, key=schema_module.TABLES_KEY, value=_tables(files)),
    ]
    for script in scripts:
        parts.append(f"-- ==== {script.name} ====\n{script.sql.strip()}")
        parts.append(bind(m.record_migration, name=script.name, checksum=script.checksum))
    parts.append("COMMIT;")
    return "\n\n".join(parts) + "\n"


def bind(query: Query, **values: Any) -> str:
    """A named query with its $n placeholders replaced by literals of the given values."""
    args = query.args(values)
    if "$$" in query.sql:
        raise RuntimeError(f"{query.name} has a dollar-quoted body; it cannot be bound as text")
    text = PLACEHOLDER.sub(lambda match: literal(args[int(match.group(1)) - 1]), query.sql.strip())
    return text if text.endswith(";") else text + ";"


def literal(value: Any) -> str:
    """A string as a SQL literal, safe whatever standard_conforming_strings is."""
    text = str(value)
    if "\x00" in text:
        raise ValueError("a SQL literal cannot hold NUL")
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + text.replace("'", "''") + "'"
