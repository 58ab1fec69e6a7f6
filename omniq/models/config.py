"""PostgresConfig: where the server is and which schema and tables OmniQ uses."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from typing import Any

from ..dsn import parse_dsn
from ..errors import ConfigurationError
from ..identifiers import check_identifier

TABLE_FIELDS = ("tasks_table", "results_table", "events_table", "schedules_table")
MIGRATE_MODES = ("auto", "check", "off")


@dataclass(kw_only=True, slots=True)
class PostgresConfig:
    """Connection and naming settings; defaults follow the specification.

    ``dsn`` (a ``postgresql://`` URL or libpq key/value string), when given, takes precedence
    over host/port/database/username/password. ``listen_dsn`` names a direct server connection
    for LISTEN when the pool goes through PgBouncer in transaction mode.

    ``migrate`` says what connecting does to the schema: ``"auto"`` creates or upgrades it and
    never downgrades it; ``"check"`` changes nothing and refuses (``SchemaError``, naming
    ``omniq migrate``) a missing or outdated installation; ``"off"`` trusts it as it is. Under
    both ``"auto"`` and ``"check"``, a schema a newer release migrated is used as it is while it
    accepts this release, and refused once it does not (README, "Rolling deploys").
    """

    host: str = "localhost"
    port: int = 5432
    database: str = "omniq"
    username: str = "postgres"
    password: str = ""
    min_connections: int = 1
    max_connections: int = 10
    command_timeout: float = 60.0
    schema: str = "public"
    tasks_table: str = "tasks"
    results_table: str = "results"
    events_table: str = "events"
    schedules_table: str = "schedules"
    dsn: str | None = None
    listen_dsn: str | None = None
    connect_timeout: float = 10.0
    acquire_timeout: float = (
        30.0  # waiting longer for a pooled connection raises PoolExhaustedError
    )
    statement_cache_size: int = 100  # 0 when the pool goes through PgBouncer
    application_name: str = "omniq"
    migrate: str = "auto"

    def __post_init__(self) -> None:
        check_identifier(self.schema, "schema")
        names = [check_identifier(getattr(self, f), f) for f in TABLE_FIELDS]
        for field_name, name in [("schema", self.schema), *zip(TABLE_FIELDS, names, strict=True)]:
            # The names are substituted inside $$-quoted PL/pgSQL bodies, where a '$' could
            # end the quote early.
            if "$" in name:
                raise ValueError(f"{field_name} {name!r} must not contain '$'")
        if len(set(names)) != len(names):
            raise ValueError(
                f"table names must differ, got {dict(zip(TABLE_FIELDS, names, strict=True))}"
            )
        if not 0 <= self.min_connections <= self.max_connections or self.max_connections < 1:
            raise ValueError(
                f"need 0 <= min_connections <= max_connections and max_connections >= 1, "
                f"got min={self.min_connections} max={self.max_connections}"
            )
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"port must be an integer between 1 and 65535, got {self.port!r}")
        for key in ("dsn", "listen_dsn"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(f"{key} must be a string, got {type(value).__name__}")
            try:
                if value:
                    parse_dsn(value)  # malformed: a setting to fix, not a connection to retry
            except ConfigurationError as exc:
                raise ConfigurationError(str(exc).replace("dsn", key, 1)) from None
        if self.migrate not in MIGRATE_MODES:
            raise ConfigurationError(
                f"migrate must be one of {', '.join(map(repr, MIGRATE_MODES))}, got {self.migrate!r}"
            )
        if self.command_timeout is not None and self.command_timeout <= 0:
            raise ValueError(
                f"command_timeout must be positive seconds, got {self.command_timeout!r}"
            )

    @property
    def tables(self) -> dict[str, str]:
        """The four configurable table names keyed by their default names."""
        return {
            "tasks": self.tasks_table,
            "results": self.results_table,
            "events": self.events_table,
            "schedules": self.schedules_table,
        }

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if shown["password"]:
            shown["password"] = "***"
        for key in ("dsn", "listen_dsn"):
            if shown[key]:
                shown[key] = redact_dsn(shown[key])
        return "PostgresConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @classmethod
    def from_env(cls, **overrides: Any) -> PostgresConfig:
        """Build from ``OMNIQ_DSN``/``OMNIQ_SCHEMA``; anything unset keeps its default (libpq PG* apply)."""
        env: dict[str, Any] = {}
        if os.environ.get("OMNIQ_DSN"):
            env["dsn"] = os.environ["OMNIQ_DSN"]
        if os.environ.get("OMNIQ_SCHEMA"):
            env["schema"] = os.environ["OMNIQ_SCHEMA"]
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)


def redact_dsn(dsn: str) -> str:
    """Hide the password in a URL or key/value DSN."""

    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn, flags=re.IGNORECASE)
