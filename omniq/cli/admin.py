"""``omniq migrate`` and ``omniq sql``: installing and upgrading the schema, or handing it to a DBA."""

from __future__ import annotations

import argparse
import dataclasses

from ..backend.postgres import PostgreSQLBackend, installation
from ..backend.postgres.schema import Plan
from ..identifiers import quote_identifier
from ..models.config import PostgresConfig
from .common import add_command, config, run


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

    async def main() -> tuple[list[str], Plan, list[str], int]:
        applied = [] if args.dry_run else await PostgreSQLBackend(cfg).migrate()
        async with PostgreSQLBackend(_reads_only(cfg)) as backend:
            plan = await installation.state(backend)
            installation.check_compatible(backend, plan)
            steps = await installation.pending_steps(backend, plan)
            return applied, plan, steps, installation.latest_version(backend)

    applied, plan, steps, latest = run(main)
    name = quote_identifier(cfg.schema, "schema")
    for script in applied:
        print(f"applied {script}")
    for line in steps:  # each pending step, with the locks it takes
        print(line)
    if plan.scripts:
        print(
            f"schema {name} is at version {plan.version}, the latest is {latest}: "
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


def run_sql(args: argparse.Namespace) -> int:
    if args.fresh:
        print(installation.install_script(PostgresConfig(schema=args.schema)), end="")
        return 0

    async def main() -> str:
        async with PostgreSQLBackend(_reads_only(config(args))) as backend:
            return await installation.upgrade_script(backend)

    print(run(main), end="")
    return 0


def _reads_only(cfg: PostgresConfig) -> PostgresConfig:
    """The same settings, connecting without touching the schema (whatever --migrate says)."""
    return dataclasses.replace(cfg, migrate="off")
