"""Event storage: the append-only log of what happened to each task."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from ...models._common import as_utc
from ...models.event import TaskEvent
from .base import DEFAULT_LIMIT, Component, Progress, as_list, check_page
from .rows import event_from_row, events_json
from .sync import with_sync_methods


class AsyncPostgresEventStorage(Component):
    """Task events in PostgreSQL. Every method has a blocking ``<name>_sync`` twin."""

    async def log_event(self, event: TaskEvent) -> None:
        await self.log_events([event])

    async def log_events(self, events: Iterable[TaskEvent]) -> None:
        """Append several events in one statement."""
        batch = list(events)
        if batch:
            payload = events_json(batch)
            async with self._conn() as conn:
                await self._sql.events.log_events(conn, events=payload)

    async def get_events(
        self,
        task_id: str | None = None,
        event_type: str | Sequence[str] | None = None,
        queue_name: str | None = None,
        worker_id: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
    ) -> list[TaskEvent]:
        """Events, newest first, filtered by any combination of the arguments."""
        check_page(limit, offset)
        async with self._conn() as conn:
            rows = await self._sql.events.list_events(
                conn,
                task_id=task_id,
                event_types=as_list(event_type),
                queue_name=queue_name,
                worker_id=worker_id,
                after=as_utc(after),
                before=as_utc(before),
                limit=limit,
                offset=offset,
            )
        return [event_from_row(row) for row in rows]

    async def cleanup_old_events(self, cutoff: datetime, progress: Progress | None = None) -> int:
        """Delete events older than ``cutoff`` (naive means UTC); returns rows deleted."""
        return await self._drain(
            self._sql.events.cleanup_old_events, progress, before=as_utc(cutoff)
        )


@with_sync_methods
class PostgresEventStorage(AsyncPostgresEventStorage):
    """Event storage with its blocking methods: ``log_event_sync``, ``get_events_sync``, ..."""
