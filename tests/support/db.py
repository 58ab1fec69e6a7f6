"""Database helpers for tests: fresh schema names, dropping them, reading what OmniQ stored."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import asyncpg
import pytest

from omniq.identifiers import quote_identifier
from omniq.models.config import PostgresConfig


@dataclass
class ExternalServer:
    """Stands in for EmbeddedPostgres when tests run against a server we don't control."""

    dsn: str

    def restart(self, mode: str = "fast") -> NoReturn:
        pytest.skip("needs an embedded server")


def latest_migration() -> int:
    """The number of the newest file in sql/migrations: what schema_version() reports."""
    from omniq.backend.postgres.sqlfiles import SQL_DIR

    return max(int(p.name.split("_")[0]) for p in (SQL_DIR / "migrations").glob("*.sql"))


def unique_schema(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def drop_schemas(dsn: str, *schemas: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(name)} CASCADE")
    finally:
        await conn.close()


def run_in_thread(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine on a private loop in another thread (safe from sync fixtures)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:  # pragma: no cover - re-raised below
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


async def connect_admin(dsn: str) -> asyncpg.Connection:
    """A plain asyncpg connection (JSONB decoded) for checking what the library wrote."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=json.dumps, decoder=json.loads, format="text"
    )
    return conn


class Database:
    """Reads one installation's tables directly: what the library really stored."""

    KEYS = {"tasks": "id", "results": "task_id", "events": "id", "schedules": "id"}

    def __init__(self, conn: asyncpg.Connection, config: PostgresConfig) -> None:
        self.conn = conn
        self.schema = config.schema
        self.tables = config.tables

    def table(self, kind: str) -> str:
        name = self.tables.get(kind, kind)
        return f"{quote_identifier(self.schema)}.{quote_identifier(name)}"

    async def count(self, kind: str, where: str = "", *args: Any) -> int:
        sql = f"SELECT count(*) FROM {self.table(kind)}"  # noqa: S608
        return await self.conn.fetchval(sql + (f" WHERE {where}" if where else ""), *args)

    async def rows(self, kind: str, where: str = "", *args: Any, order: str = "") -> list[dict]:
        sql = f"SELECT * FROM {self.table(kind)}"  # noqa: S608
        sql += f" WHERE {where}" if where else ""
        sql += f" ORDER BY {order}" if order else ""
        return [dict(r) for r in await self.conn.fetch(sql, *args)]

    async def row(self, kind: str, key: str) -> dict | None:
        found = await self.rows(kind, f"{self.KEYS[kind]} = $1", key)
        return found[0] if found else None

    async def events(self, task_id: str) -> list[str]:
        """The event types of a task's history as people read it (get_events, the dashboard,
        ``omniq task``): the events stored and the life cycle derived from the task and result
        rows (sql/queries/events.sql, list_events), oldest first."""
        from omniq.backend.postgres.sqlfiles import sql_files

        files = sql_files(self.schema, tuple(self.tables.items()))
        found = await files.events.list_events(
            self.conn, task_id=task_id, event_types=None, queue_name=None, worker_id=None,
            after=None, before=None, limit=10_000, offset=0,
        )  # fmt: skip
        return [r["event_type"] for r in reversed(found)]

    async def stored_events(self, task_id: str) -> list[str]:
        """The event types stored for a task, oldest first (ties in insertion order)."""
        found = await self.rows("events", "task_id = $1", task_id, order="timestamp, ctid")
        return [r["event_type"] for r in found]

    async def execute(self, sql: str, *args: Any) -> str:
        """Run SQL with {tasks}/{results}/{events}/{schedules} replaced by the quoted tables."""
        return await self.conn.execute(sql.format(**{k: self.table(k) for k in self.KEYS}), *args)
