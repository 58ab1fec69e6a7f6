"""What the four storage components share: their backend, its SQL files, a connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .connection import Connection, Given, Pooled

if TYPE_CHECKING:
    from .backend import PostgreSQLBackend
    from .sqlfiles import SQLFiles

DEFAULT_LIMIT = 100
CLEANUP_BATCH = 10_000
Progress = Callable[[int], None]  # called with the rows removed so far by a long cleanup


class Component:
    """Base of the storage components; their ``_sync`` twins are written by scripts/unasync."""

    def __init__(self, backend: PostgreSQLBackend) -> None:
        self._backend = backend

    @property
    def _sql(self) -> SQLFiles:
        return self._backend.sql

    def _sync_loop(self) -> asyncio.AbstractEventLoop:
        return self._backend._sync_loop()

    def _conn(self, connection: Connection | None = None) -> Pooled | Given:
        """The caller's connection when given (their transaction), else a pooled one (the
        one the last operation kept in hand, when it is free)."""
        if connection is not None:
            return Given(connection, self._backend.config)
        return self._backend._lend()

    async def _drain(
        self,
        call: Callable[..., Awaitable[int | None]],
        progress: Progress | None = None,
        **params: Any,
    ) -> int:
        """Call a batched cleanup function until a batch comes back short; total rows removed.

        ``progress`` is called with the running total after every full batch.
        """
        total = 0
        while True:
            async with self._conn() as conn:
                removed = await call(conn, batch=CLEANUP_BATCH, **params) or 0
            total += removed
            if removed < CLEANUP_BATCH:
                return total
            if progress is not None:
                progress(total)


def as_list(value: str | Sequence[str] | None) -> list[str] | None:
    """A status/type filter given as one value or several."""
    if value is None:
        return None
    if isinstance(value, str):
        return [str(value)]
    return [str(v) for v in value]


def check_page(limit: int, offset: int) -> None:
    if not isinstance(limit, int) or limit < 0 or not isinstance(offset, int) or offset < 0:
        raise ValueError(
            f"limit and offset must be non-negative integers, got limit={limit!r} offset={offset!r}"
        )
