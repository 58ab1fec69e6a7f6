"""Tasks for the limit tests: each records when it ran on the database's clock."""

from __future__ import annotations

import asyncio

import asyncpg

from omniq.identifiers import quote_identifier


async def db_window(dsn: str, schema: str, seconds: float) -> None:
    """Sleep ``seconds``; record (start, end) read from clock_timestamp() in ``schema``.windows,
    so windows from several worker processes compare on one clock."""
    conn = await asyncpg.connect(dsn)
    try:
        table = f"{quote_identifier(schema)}.windows"
        start = await conn.fetchval("SELECT clock_timestamp()")
        await asyncio.sleep(seconds)
        await conn.execute(
            f"INSERT INTO {table} (started, ended) VALUES ($1, clock_timestamp())",  # noqa: S608
            start,
        )
    finally:
        await conn.close()
