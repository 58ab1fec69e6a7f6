"""Result storage: one row per task, and waiting for it woken by the completion NOTIFY."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from ...errors import TaskNotFoundError
from ...models._common import as_utc
from ...models.enums import ResultStatus, TaskStatus
from ...models.result import TaskResult
from .base import DEFAULT_LIMIT, Component, Progress, as_list, check_page
from .rows import result_from_row, result_params
from .sync import run_on

FINAL = frozenset(
    {ResultStatus.SUCCESS, ResultStatus.FAILURE, ResultStatus.CANCELLED, ResultStatus.EXPIRED}
)
TASK_FINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)


class AsyncPostgresResultStorage(Component):
    """Task results in PostgreSQL. Every method has a blocking ``<name>_sync`` twin."""

    async def set(self, result: TaskResult) -> None:
        """Store a result, replacing the task's earlier one."""
        params = result_params(result)
        async with self._conn() as conn:
            await self._sql.results.upsert_result(conn, **params)

    async def get(self, task_id: str) -> TaskResult | None:
        """The task's result, or ``None``. A result past its ``expires_at`` (``result_ttl``)
        stays readable until ``cleanup_expired_results()`` deletes it."""
        async with self._conn() as conn:
            row = await self._sql.results.get_result(conn, task_id=task_id)
        return result_from_row(row) if row else None

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        """The task's final result as soon as it is stored; ``None`` after ``timeout`` seconds.

        Returns at once when there is nothing to wait for: ``None`` if the task is final but
        its result was deleted (``cleanup_expired_results``, ``delete``), and
        :class:`~omniq.errors.TaskNotFoundError` if neither the task nor a result exists
        (an unknown id, an enqueue not committed yet, or a task purged with its result).
        Woken by the NOTIFY that storing a final result sends, not by polling.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        listener = await self._backend.listener()
        with listener.watch("results", frozenset([task_id])) as wakeup:
            while True:
                wakeup.clear()
                result = await self.get(task_id)
                if result is not None and result.status in FINAL:
                    return result
                if result is None:  # unknown id, or a final task whose result was deleted?
                    task = await self._backend.task_queue.get_task(task_id)
                    if task is None or task.status in TASK_FINAL:
                        # A final status and its result are committed together: read again.
                        result = await self.get(task_id)
                        if result is not None and result.status in FINAL:
                            return result
                        if task is not None:
                            return None
                        if result is None:
                            raise TaskNotFoundError(
                                f"no task and no result with id {task_id!r}: it was never "
                                "enqueued, its enqueue has not committed yet, or it was purged "
                                "together with its result"
                            )
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return None
                await wakeup.wait(remaining)
                if listener.closed:  # the backend is closing: looking again would reopen it
                    return None

    async def list_results(
        self,
        status: str | Sequence[str] | None = None,
        worker_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
    ) -> list[TaskResult]:
        """Results, newest first, filtered by any combination of the arguments."""
        check_page(limit, offset)
        async with self._conn() as conn:
            rows = await self._sql.results.list_results(
                conn,
                statuses=as_list(status),
                worker_id=worker_id,
                created_after=as_utc(created_after),
                created_before=as_utc(created_before),
                limit=limit,
                offset=offset,
            )
        return [result_from_row(row) for row in rows]

    async def delete(self, task_id: str) -> bool:
        async with self._conn() as conn:
            return await self._sql.results.delete_result(conn, task_id=task_id) is not None

    async def cleanup_expired_results(self, progress: Progress | None = None) -> int:
        """Delete results past their expires_at; returns rows deleted."""
        return await self._drain(self._sql.results.cleanup_expired_results, progress)


class PostgresResultStorage(AsyncPostgresResultStorage):
    """Result storage with its blocking methods: ``set_sync``, ``get_sync``, ``wait_sync``, ..."""

    # -- generated by scripts/unasync from AsyncPostgresResultStorage: do not edit --
    def set_sync(self, result: TaskResult) -> None:
        """Blocking form of :meth:`set` (same arguments and result)."""
        return run_on(self._sync_loop(), self.set(result))

    def get_sync(self, task_id: str) -> TaskResult | None:
        """Blocking form of :meth:`get` (same arguments and result)."""
        return run_on(self._sync_loop(), self.get(task_id))

    def wait_sync(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        """Blocking form of :meth:`wait` (same arguments and result)."""
        return run_on(self._sync_loop(), self.wait(task_id, timeout))

    def list_results_sync(
        self,
        status: str | Sequence[str] | None = None,
        worker_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
    ) -> list[TaskResult]:
        """Blocking form of :meth:`list_results` (same arguments and result)."""
        return run_on(
            self._sync_loop(),
            self.list_results(status, worker_id, created_after, created_before, limit, offset),
        )

    def delete_sync(self, task_id: str) -> bool:
        """Blocking form of :meth:`delete` (same arguments and result)."""
        return run_on(self._sync_loop(), self.delete(task_id))

    def cleanup_expired_results_sync(self, progress: Progress | None = None) -> int:
        """Blocking form of :meth:`cleanup_expired_results` (same arguments and result)."""
        return run_on(self._sync_loop(), self.cleanup_expired_results(progress))

    # -- end of generated code --
