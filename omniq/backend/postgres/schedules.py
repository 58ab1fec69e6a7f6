"""Schedule storage, and firing due schedules exactly once (claim + fire in one transaction)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ...models.schedule import Schedule
from .base import DEFAULT_LIMIT, Component, Progress, as_list, check_page
from .rows import schedule_from_row, schedule_params
from .sync import run_on

log = logging.getLogger("omniq.scheduler")


@dataclass(frozen=True, slots=True)
class Firing:
    """What one claim-and-fire transaction did."""

    claimed: int  # due schedules taken (fired, expired or paused)
    fired: int  # tasks enqueued
    failed: dict[str, str]  # schedule id -> the error it was paused for


class AsyncPostgresScheduleStorage(Component):
    """Schedules in PostgreSQL. Every method has a blocking ``<name>_sync`` twin."""

    async def save_schedule(self, schedule: Schedule) -> str:
        """Insert or replace a schedule; returns its id."""
        params = schedule_params(schedule)
        async with self._conn() as conn:
            await self._sql.schedules.save_schedule(conn, **params)
        return schedule.id

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        async with self._conn() as conn:
            row = await self._sql.schedules.get_schedule(conn, id=schedule_id)
        return schedule_from_row(row) if row else None

    async def list_schedules(
        self,
        status: str | Sequence[str] | None = None,
        schedule_type: str | None = None,
        queue_name: str | None = None,
        func: str | None = None,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
    ) -> list[Schedule]:
        """Schedules, soonest next_run first, filtered by any combination of the arguments."""
        check_page(limit, offset)
        async with self._conn() as conn:
            rows = await self._sql.schedules.list_schedules(
                conn,
                statuses=as_list(status),
                schedule_type=str(schedule_type) if schedule_type else None,
                queue_name=queue_name,
                func=func,
                limit=limit,
                offset=offset,
            )
        return [schedule_from_row(row) for row in rows]

    async def delete_schedule(self, schedule_id: str) -> bool:
        async with self._conn() as conn:
            return await self._sql.schedules.delete_schedule(conn, id=schedule_id) is not None

    async def pause_schedule(self, schedule_id: str) -> bool:
        return await self._set_status(schedule_id, "paused")

    async def resume_schedule(self, schedule_id: str) -> bool:
        """Resume a paused schedule; a next_run missed while paused fires once, at once."""
        return await self._set_status(schedule_id, "active")

    async def cancel_schedule(self, schedule_id: str) -> bool:
        return await self._set_status(schedule_id, "cancelled")

    async def _set_status(self, schedule_id: str, status: str) -> bool:
        async with self._conn() as conn:
            return bool(
                await self._sql.schedules.set_schedule_status(conn, id=schedule_id, status=status)
            )

    async def get_ready_schedules(self, limit: int = DEFAULT_LIMIT) -> list[Schedule]:
        """Active schedules due now (read only; firing them is :meth:`fire_due_schedules`)."""
        async with self._conn() as conn:
            rows = await self._sql.schedules.ready_schedules(conn, limit=limit)
        return [schedule_from_row(row) for row in rows]

    async def fire_due_schedules(self, limit: int = DEFAULT_LIMIT) -> int:
        """Enqueue the tasks of due schedules and advance them; returns tasks enqueued.

        One transaction: claim (SKIP LOCKED), compute following times with croniter from the
        database's clock, fire. Concurrent callers never fire one due time twice. A window
        missed while nothing ran fires once; the following time is the first one after now.
        A schedule that cannot fire is paused with its error (logged here, and kept in
        ``schedule_data["last_error"]``); the others fire.
        """
        return (await self.fire_due(limit)).fired

    async def fire_due(self, limit: int = DEFAULT_LIMIT) -> Firing:
        """:meth:`fire_due_schedules`, telling how many were claimed and which failed."""
        async with self._conn() as conn, conn.transaction():
            rows = await self._sql.schedules.claim_schedules(conn, limit=limit)
            if not rows:
                return Firing(0, 0, {})
            ids: list[str] = []
            following: list[datetime | None] = []
            errors: list[str | None] = []
            for row in rows:
                ids.append(row["id"])
                try:
                    schedule = schedule_from_row(row)
                    following.append(schedule.next_after(row["db_now"], schedule.next_run))
                    errors.append(None)
                except (
                    Exception
                ) as exc:  # a row no schedule can be made of: pause it, fire the rest
                    following.append(None)
                    errors.append(f"cannot compute its next run: {type(exc).__name__}: {exc}")
            fired = await self._sql.schedules.fire_schedules(
                conn, ids=ids, next_runs=following, errors=errors
            )
        failed = {r["schedule_id"]: r["error"] for r in fired if r["error"] is not None}
        for schedule_id, error in failed.items():
            log.error("schedule %s could not fire and was paused: %s", schedule_id, error)
        return Firing(len(rows), sum(1 for r in fired if r["task_id"] is not None), failed)

    async def next_schedule_at(self) -> datetime | None:
        """When the earliest active schedule is due."""
        async with self._conn() as conn:
            return await self._sql.schedules.next_schedule_at(conn)

    async def cleanup_expired_schedules(self, progress: Progress | None = None) -> int:
        """Delete expired schedules; returns rows deleted."""
        return await self._drain(self._sql.schedules.cleanup_expired_schedules, progress)


class PostgresScheduleStorage(AsyncPostgresScheduleStorage):
    """Schedule storage with its blocking methods: ``save_schedule_sync``, ..."""

    # -- generated by scripts/unasync from AsyncPostgresScheduleStorage: do not edit --
    def save_schedule_sync(self, schedule: Schedule) -> str:
        """Blocking form of :meth:`save_schedule` (same arguments and result)."""
        return run_on(self._sync_loop(), self.save_schedule(schedule))

    def get_schedule_sync(self, schedule_id: str) -> Schedule | None:
        """Blocking form of :meth:`get_schedule` (same arguments and result)."""
        return run_on(self._sync_loop(), self.get_schedule(schedule_id))

    def list_schedules_sync(
        self,
        status: str | Sequence[str] | None = None,
        schedule_type: str | None = None,
        queue_name: str | None = None,
        func: str | None = None,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
    ) -> list[Schedule]:
        """Blocking form of :meth:`list_schedules` (same arguments and result)."""
        return run_on(
            self._sync_loop(),
            self.list_schedules(status, schedule_type, queue_name, func, limit, offset),
        )

    def delete_schedule_sync(self, schedule_id: str) -> bool:
        """Blocking form of :meth:`delete_schedule` (same arguments and result)."""
        return run_on(self._sync_loop(), self.delete_schedule(schedule_id))

    def pause_schedule_sync(self, schedule_id: str) -> bool:
        """Blocking form of :meth:`pause_schedule` (same arguments and result)."""
        return run_on(self._sync_loop(), self.pause_schedule(schedule_id))

    def resume_schedule_sync(self, schedule_id: str) -> bool:
        """Blocking form of :meth:`resume_schedule` (same arguments and result)."""
        return run_on(self._sync_loop(), self.resume_schedule(schedule_id))

    def cancel_schedule_sync(self, schedule_id: str) -> bool:
        """Blocking form of :meth:`cancel_schedule` (same arguments and result)."""
        return run_on(self._sync_loop(), self.cancel_schedule(schedule_id))

    def get_ready_schedules_sync(self, limit: int = DEFAULT_LIMIT) -> list[Schedule]:
        """Blocking form of :meth:`get_ready_schedules` (same arguments and result)."""
        return run_on(self._sync_loop(), self.get_ready_schedules(limit))

    def fire_due_schedules_sync(self, limit: int = DEFAULT_LIMIT) -> int:
        """Blocking form of :meth:`fire_due_schedules` (same arguments and result)."""
        return run_on(self._sync_loop(), self.fire_due_schedules(limit))

    def fire_due_sync(self, limit: int = DEFAULT_LIMIT) -> Firing:
        """Blocking form of :meth:`fire_due` (same arguments and result)."""
        return run_on(self._sync_loop(), self.fire_due(limit))

    def next_schedule_at_sync(self) -> datetime | None:
        """Blocking form of :meth:`next_schedule_at` (same arguments and result)."""
        return run_on(self._sync_loop(), self.next_schedule_at())

    def cleanup_expired_schedules_sync(self, progress: Progress | None = None) -> int:
        """Blocking form of :meth:`cleanup_expired_schedules` (same arguments and result)."""
        return run_on(self._sync_loop(), self.cleanup_expired_schedules(progress))

    # -- end of generated code --
