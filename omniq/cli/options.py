"""Options every command shares: where PostgreSQL is, which schema; the embedded fallback."""

from __future__ import annotations

import argparse
import os
import sys

from ..models.config import MIGRATE_MODES, PostgresConfig, redact_dsn

PG_ENV = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSERVICE")


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--dsn",
        help="postgresql:// URL or libpq string (default: $OMNIQ_DSN, then PG* variables, then embedded)",
    )
    group.add_argument(
        "--listen-dsn",
        default=os.environ.get("OMNIQ_LISTEN_DSN") or None,
        help="a direct server connection for LISTEN when --dsn goes through PgBouncer in "
        "transaction mode; also turns off prepared-statement caching (default: $OMNIQ_LISTEN_DSN)",
    )
    group.add_argument(
        "--schema",
        default=os.environ.get("OMNIQ_SCHEMA", "public"),
        help="schema of the OmniQ tables (default: $OMNIQ_SCHEMA or public)",
    )
    group.add_argument(
        "--migrate",
        choices=MIGRATE_MODES,
        default=os.environ.get("OMNIQ_MIGRATE") or None,
        help="what connecting does to the schema: auto creates or upgrades it, check only "
        "verifies it (production, with `omniq migrate` as a deploy step), off trusts it "
        "(default: $OMNIQ_MIGRATE, else auto for worker, scheduler, enqueue and dashboard, "
        "check for the commands that read or manage what exists)",
    )


def config_from_args(args: argparse.Namespace, **settings: object) -> PostgresConfig:
    """--dsn, else OMNIQ_DSN, else the libpq PG* variables, else the embedded server."""
    dsn = args.dsn or os.environ.get("OMNIQ_DSN")
    if not dsn and any(os.environ.get(name) for name in PG_ENV):
        dsn = "postgresql://"  # asyncpg fills host, port, user, password and database from PG*
    if not dsn:
        from ..embedded import EmbeddedPostgres, default_data_dir, ensure_running

        was_running = EmbeddedPostgres(default_data_dir()).is_running()
        dsn = ensure_running()
        if not was_running:  # say so once, when it starts; `omniq embedded status` tells later
            print(
                f"omniq: started the embedded PostgreSQL at {redact_dsn(dsn)} (data in "
                f"{default_data_dir()}; stop it with `{command_name()} embedded stop`)",
                file=sys.stderr,
            )
    if getattr(args, "migrate", None):  # the user's choice wins over the command's default
        settings = {**settings, "migrate": args.migrate}
    listen_dsn = getattr(args, "listen_dsn", None)
    if listen_dsn:  # the pool goes through a transaction pooler: no named prepared statements
        settings = {"statement_cache_size": 0, **settings}
    return PostgresConfig(dsn=dsn, schema=args.schema, listen_dsn=listen_dsn, **settings)  # type: ignore[arg-type]


def command_name() -> str:
    """How the user can run omniq again: ``omniq`` when it is on PATH, else its full path."""
    import shutil
    from pathlib import Path

    script = Path(sys.argv[0])
    if script.name == "omniq" and shutil.which("omniq") != str(script.resolve()):
        return str(script)  # e.g. .venv/bin/omniq, not on PATH
    return "omniq" if script.name == "omniq" or shutil.which("omniq") else "python -m omniq"
