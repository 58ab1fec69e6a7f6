"""The worker protocol: how a worker takes tasks, records their outcomes, keeps its registration
alive, releases what it cannot finish and rescues the tasks of workers that died.

It is ``omniq.worker``'s view of the database, not public API: users enqueue and read through
the four storage components, and a worker is the one caller of these methods. Outcomes are
typed (:class:`Outcome`); :func:`outcomes_json` is the one place that turns them into the JSON
document ``omniq_finish_tasks`` reads with ``jsonb_to_recordset``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
import orjson

from ...models.task import Task
from .base import Component
from .connection import Connection, connect_kwargs, translate_errors
from .query import required
from .rows import task_from_row

OutcomeKind = Literal["success", "failure", "expired", "aborted"]  # aborted: on a request


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt of a task ended, as its worker records it.

    ``result`` is the return value already serialised to JSON (checked once, when the task
    returned); ``func`` and ``queue`` are for the worker's own log lines and metrics, not sent.
    """

    task_id: str
    attempt: int
    kind: OutcomeKind
    func: str = ""
    queue: str = ""
    result: orjson.Fragment | None = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    execution_time: float | None = None


def outcomes_json(outcomes: Sequence[Outcome]) -> str:
    """The ``p_outcomes`` document of ``omniq_finish_tasks``: one object per outcome whose keys
    are the columns of its ``jsonb_to_recordset`` (sql/functions/tasks.sql), in id order, the
    order in which the database locks the rows, as every other locker does."""
    return orjson.dumps(
        [
            {
                "id": o.task_id,
                "attempt": o.attempt,
                "outcome": o.kind,
                "result": o.result,
                "error": o.error,
                "error_type": o.error_type,
                "traceback": o.traceback,
                "started_at": o.started_at,
                "finished_at": o.finished_at,
                "execution_time": o.execution_time,
            }
            for o in sorted(outcomes, key=_task_id)
        ]
    ).decode()


def _task_id(outcome: Outcome) -> str:
    return outcome.task_id


@dataclass(frozen=True, slots=True)
class Registration:
    """What a worker's heartbeat tells the database about it, besides the tasks it holds.

    ``stale_after``: how long it may stay silent before another worker rescues its tasks;
    ``version``: the OmniQ version it runs (shown by the dashboard and ``omniq status``).
    """

    worker_id: str
    hostname: str
    pid: int
    queues: Sequence[str]
    concurrency: int
    stale_after: timedelta = timedelta(seconds=30)
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Rescue:
    """What a rescue did: tasks returned to pending, and when another worker's held task could
    go stale next (None: no other worker holds any)."""

    rescued: int
    next_check_at: datetime | None


class WorkerProtocol(Component):
    """The calls a worker makes, each one statement (most of them one stored procedure)."""

    async def connect(self, purpose: str) -> asyncpg.Connection:
        """A connection of the worker's own, outside the pool (for the heartbeat thread, whose
        event loop is not the pool's), named ``<application_name>-<purpose>``."""
        config = self._backend.config
        kwargs = connect_kwargs(config)
        kwargs["server_settings"]["application_name"] += f"-{purpose}"
        async with translate_errors(config):
            return await asyncpg.connect(**kwargs, statement_cache_size=config.statement_cache_size)

    async def take(
        self,
        queues: Sequence[str],
        limit: int,
        worker_id: str | None,
        start: Callable[[Task], None] | None = None,
    ) -> list[Task]:
        """Take up to ``limit`` ready tasks, marked running under ``worker_id``; does not wait.
        ``start`` is given each task before the connection goes back to the pool: the release
        takes turns of the event loop, which the tasks can use to begin."""
        async with self._conn() as conn:
            rows = await self._sql.tasks.dequeue_tasks(
                conn, queues=list(queues), limit=limit, worker_id=worker_id
            )
            tasks = [task_from_row(row) for row in rows]
            if start is not None:
                for task in tasks:
                    start(task)
        return tasks

    async def finish(self, outcomes: Sequence[Outcome], worker_id: str | None) -> dict[str, str]:
        """Record outcomes in one transaction; returns task id -> its new status.

        A task no longer held in that attempt (rescued, cancelled, or recorded already) is left
        alone and missing from the answer.
        """
        if not outcomes:
            return {}
        async with self._conn() as conn:
            rows = await self._sql.tasks.finish_tasks(
                conn, outcomes=outcomes_json(outcomes), worker_id=worker_id
            )
        return {row["id"]: row["status"] for row in rows}

    async def release(self, task_ids: Sequence[str], worker_id: str | None, reason: str) -> int:
        """Return running tasks of this worker to pending without counting a retry."""
        async with self._conn() as conn:
            released = await self._sql.tasks.release_tasks(
                conn, ids=list(task_ids), worker_id=worker_id, reason=reason
            )
        return released or 0

    async def heartbeat(
        self,
        registration: Registration,
        held: Sequence[str] = (),
        stuck_threads: int = 0,
        *,
        connection: Connection | None = None,
    ) -> list[str]:
        """Register the worker or refresh its registration; returns the ids among ``held`` it
        no longer holds (a rescue took them). ``stuck_threads``: its threads still running task
        functions it gave up. ``connection``: the heartbeat thread's own connection."""
        async with self._conn(connection) as conn:
            lost = await self._sql.workers.heartbeat(
                conn, **_heartbeat_params(registration, held, stuck_threads)
            )
        return list(lost or [])

    async def rescue(self, caller: str | None = None) -> Rescue:
        """Requeue the tasks of workers silent for longer than their own ``stale_after``.

        ``caller``: the calling worker's id (alive by definition: its own tasks don't count).
        """
        async with self._conn() as conn:
            row = await self._sql.workers.rescue_tasks(conn, caller=caller)
        row = required(row, "rescue_tasks")
        return Rescue(row["rescued"], row["next_check_at"])

    async def held_tasks(self, worker_id: str) -> list[str]:
        """The ids of the tasks the database says this worker holds (running under its id)."""
        async with self._conn() as conn:
            rows = await self._sql.workers.held_tasks(conn, worker_id=worker_id)
        return [row["id"] for row in rows]

    async def abort_requests(self, worker_id: str) -> list[tuple[str, int]]:
        """(id, attempt) of the tasks this worker runs that someone asked to abort."""
        async with self._conn() as conn:
            rows = await self._sql.workers.abort_requests(conn, worker_id=worker_id)
        return [(row["id"], row["attempts"]) for row in rows]

    async def worker_stopped(self, worker_id: str) -> int:
        """Deregister a worker, releasing any task it still holds; returns tasks released."""
        async with self._conn() as conn:
            released = await self._sql.workers.worker_stopped(conn, worker_id=worker_id)
        return released or 0


def _heartbeat_params(
    registration: Registration, held: Sequence[str], stuck_threads: int
) -> dict[str, Any]:
    return {
        "worker_id": registration.worker_id,
        "hostname": registration.hostname,
        "pid": registration.pid,
        "queues": list(registration.queues),
        "concurrency": registration.concurrency,
        "held": list(held),
        "stale_after": registration.stale_after,
        "stuck_threads": stuck_threads,
        "version": registration.version,
    }
