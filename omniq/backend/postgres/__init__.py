"""OmniQ's PostgreSQL backend: ``PostgreSQLBackend`` and the two factory functions."""

from __future__ import annotations

from typing import Any

import asyncpg

from ...models.config import PostgresConfig
from .backend import PostgreSQLBackend
from .events import AsyncPostgresEventStorage, PostgresEventStorage
from .queue import AsyncPostgresQueue, PostgresQueue
from .results import AsyncPostgresResultStorage, PostgresResultStorage
from .schedules import AsyncPostgresScheduleStorage, PostgresScheduleStorage

# The specification's error-handling example catches ``asyncpg.ConnectionError``, a name
# asyncpg does not define (the lookup itself would fail while handling the error). Give it
# Python's ConnectionError, the base of every OmniQ connection error, so the example works.
if not hasattr(asyncpg, "ConnectionError"):
    asyncpg.ConnectionError = ConnectionError  # type: ignore[attr-defined]


def create_async_postgres_backend(**settings: Any) -> PostgreSQLBackend:
    """A backend for ``async with``; takes the keyword arguments of :class:`PostgresConfig`."""
    return PostgreSQLBackend(PostgresConfig(**settings))


def create_postgres_backend(**settings: Any) -> PostgreSQLBackend:
    """A backend for ``with`` and the ``_sync`` methods; same arguments as the async factory."""
    return PostgreSQLBackend(PostgresConfig(**settings))


__all__ = [
    "AsyncPostgresEventStorage",
    "AsyncPostgresQueue",
    "AsyncPostgresResultStorage",
    "AsyncPostgresScheduleStorage",
    "PostgreSQLBackend",
    "PostgresConfig",
    "PostgresEventStorage",
    "PostgresQueue",
    "PostgresResultStorage",
    "PostgresScheduleStorage",
    "create_async_postgres_backend",
    "create_postgres_backend",
]
