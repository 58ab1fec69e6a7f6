"""The task queue: enqueue (one, many, in the caller's transaction), dequeue (blocking on
LISTEN), and the task-table API around them."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from ...errors import DuplicateTaskError, UnknownDependencyError
from ...models._common import as_utc, new_id, utcnow
from ...models.enums import TaskStatus
from ...models.task import Task, check_queue_name, func_path, is_reserved_id
from ...models.unique import Enqueued, QueueSettings, check_limits
from ...observability import tracing
from .base import DEFAULT_LIMIT, Component, Progress, as_list, check_page
from .connection import Connection
from .protocol import WorkerProtocol
from .rows import (
    Call,
    calls_columns,
    calls_json,
    one_task_params,
    task_from_row,
    task_params,
    tasks_json,
)
from .sync import run_on

if TYPE_CHECKING:
    from .backend import PostgreSQLBackend

T = TypeVar("T")


def _with_hint(exc: asyncpg.PostgresError) -> str:
    """The database's message and its hint, as one line for a Python exception."""
    message = getattr(exc, "message", None) or str(exc)  # str(exc) adds DETAIL and HINT lines
    hint = getattr(exc, "hint", None)
    return f"{message}. {hint}" if hint else message


def _refuse_reserved(task: Task) -> None:
    if is_reserved_id(task.id):
        raise ValueError(
            f"task id {task.id!r} is reserved for OmniQ's own tasks (schedule fires "
            "'<schedule id>@<UTC time>' and callbacks '<task id>@on_success'...); "
            "nothing was enqueued. Choose another id."
        )


def _queues(queues: str | Sequence[str]) -> list[str]:
    names = [queues] if isinstance(queues, str) else list(queues)
    if not names:
        raise ValueError("dequeue needs at least one queue name")
    return [check_queue_name(q) for q in names]


class AsyncPostgresQueue(Component):
    """Tasks in PostgreSQL. Every method has a blocking ``<name>_sync`` twin.

    Workers finish, release and rescue tasks through :class:`~.protocol.WorkerProtocol`, which
    is not public; ``dequeue`` takes tasks the way a worker does.
    """

    def __init__(self, backend: PostgreSQLBackend) -> None:
        super().__init__(backend)
        self._protocol = WorkerProtocol(backend)

    async def enqueue(self, task: Task, *, connection: Connection | None = None) -> str:
        """Store ``task`` and wake a waiting worker; returns its id.

        With ``connection`` (an asyncpg connection of yours, inside your transaction) the task
        is written in that transaction: it becomes visible, and wakes workers, only on commit.
        """
        if task.dependencies or task.unique is not None:
            (task_id,) = await self.enqueue_many([task], connection=connection)
            return task_id
        # Most tasks: one typed call (omniq_enqueue_one_v1), no JSON document to unpack.
        _refuse_reserved(task)
        with tracing.publishing((task,)):  # a producer span, its trace context in the metadata
            params = one_task_params(task)  # raises TypeError before anything is sent
            await self._insert(lambda conn: self._sql.tasks.enqueue_one(conn, **params), connection)
        task.status = TaskStatus.PENDING
        return task.id

    async def enqueue_many(
        self, tasks: Iterable[Task], *, connection: Connection | None = None
    ) -> list[str]:
        """Store a batch in one statement (one round trip, one NOTIFY per queue)."""
        batch = list(tasks)
        if not batch:
            return []
        for task in batch:
            _refuse_reserved(task)
        with tracing.publishing(batch):  # a producer span, its trace context in the metadata
            payload = tasks_json(batch)  # raises TypeError before anything is sent
            changed = await self._insert(
                lambda conn: self._sql.tasks.enqueue_tasks(conn, tasks=payload), connection
            )
        statuses = {row["id"]: row["status"] for row in changed}
        for task in batch:
            task.status = TaskStatus(
                statuses.get(task.id, "waiting" if task.dependencies else "pending")
            )
        # A unique task not created: the id of the task that holds its key (omniq_enqueue_v2).
        held = {row["id"]: row["existing_id"] for row in changed if row["existing_id"]}
        return [held.get(task.id, task.id) for task in batch]

    async def enqueue_calls(
        self,
        template: Task | str | Callable[..., Any],
        calls: Iterable[Call],
        *,
        connection: Connection | None = None,
    ) -> list[str]:
        """Enqueue one task per call of the same function, in one statement; returns the new
        ids in call order.

        Each call is a tuple (or list) of positional arguments or a dict of keyword arguments.
        Everything else comes from ``template``: a Task (its queue, priority, retries, timeout,
        run_at, metadata...; its id and arguments are not used), or just the function. No Task
        object is built per call, so a fan-out of thousands costs about half of
        :meth:`enqueue_many` of the same tasks.
        """
        task = template if isinstance(template, Task) else Task(func=func_path(template))
        if task.args or task.kwargs:
            raise ValueError(
                "the template of enqueue_calls takes no arguments: each call gives its own; "
                "nothing was enqueued"
            )
        if task.unique is not None:
            raise ValueError(
                "enqueue_calls makes no unique tasks (each would need its own key): use "
                "enqueue_many_unique; nothing was enqueued"
            )
        batch = calls if isinstance(calls, list) else list(calls)
        if not batch:
            return []
        ids = [new_id() for _ in batch]
        # One producer span for the batch, its trace context in every task's metadata (the
        # template's copy gets it: the caller's template is left as it was).
        head = dataclasses.replace(task, id=ids[0])
        with tracing.publishing([head] * len(batch)):
            # Either raises TypeError before anything is sent.
            if task.dependencies:  # waiting tasks: the batch path resolves them
                payload = calls_json(head, batch, ids)
                await self._insert(
                    lambda conn: self._sql.tasks.enqueue_tasks(conn, tasks=payload), connection
                )
            else:  # typed arrays, the template once (omniq_enqueue_calls_v1)
                shared, created, args = calls_columns(head, batch)
                await self._insert(
                    lambda conn: self._sql.tasks.enqueue_calls(
                        conn, template=shared, ids=ids, created_at=created, calls=args
                    ),
                    connection,
                )
        return ids

    async def _insert(
        self, run: Callable[[Connection], Awaitable[T]], connection: Connection | None
    ) -> T:
        """Run an enqueue query on a connection; the database's refusals become the errors
        enqueue documents, each saying that nothing was stored."""
        async with self._conn(connection) as conn:
            try:
                return await run(conn)
            except asyncpg.UniqueViolationError as exc:
                raise DuplicateTaskError(
                    f"a task with this id already exists ({exc.detail or exc}); nothing was "
                    "enqueued. Use a new id, or omit id to get a generated one."
                ) from None
            except asyncpg.ForeignKeyViolationError as exc:
                raise UnknownDependencyError(
                    f"{exc}; nothing was enqueued. {exc.hint or ''}".strip()
                ) from None
            except (asyncpg.InvalidParameterValueError, asyncpg.CheckViolationError) as exc:
                # A reserved id, a dependency cycle, or a row the database's own checks
                # refuse (sql/migrations/0005): what Python lets through, the database stops.
                raise ValueError(f"{_with_hint(exc)}; nothing was enqueued") from None

    async def dequeue(
        self,
        queues: str | Sequence[str],
        timeout: float | None = None,
        *,
        worker_id: str | None = None,
    ) -> Task | None:
        """Take the next ready task, marked running; ``None`` when there is none.

        ``timeout=None`` looks once. With ``timeout=T`` it waits up to T seconds for a task,
        woken by NOTIFY (no polling), and also when a delayed task falls due meanwhile.
        """
        tasks = await self.dequeue_many(queues, 1, timeout=timeout, worker_id=worker_id)
        return tasks[0] if tasks else None

    async def dequeue_many(
        self,
        queues: str | Sequence[str],
        limit: int,
        *,
        timeout: float | None = None,
        worker_id: str | None = None,
    ) -> list[Task]:
        """Take up to ``limit`` ready tasks at once; waits like :meth:`dequeue`."""
        names = _queues(queues)
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        if timeout is None or timeout <= 0:
            return await self._protocol.take(names, limit, worker_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        listener = await self._backend.listener()
        with listener.watch("tasks", frozenset(names)) as wakeup:
            while True:
                wakeup.clear()  # before looking: a NOTIFY from now on is not missed
                tasks = await self._protocol.take(names, limit, worker_id)
                if tasks:
                    return tasks
                remaining = deadline - loop.time()
                if remaining <= 0 or listener.closed:  # closing: another query would reopen it
                    return []
                due = await self.next_due_at(names)
                if due is not None:
                    remaining = min(remaining, max(0.0, (due - utcnow()).total_seconds()) + 0.002)
                await wakeup.wait(remaining)
                if listener.closed:  # the backend is closing: looking again would reopen it
                    return []

    async def next_due_at(self, queues: str | Sequence[str]) -> datetime | None:
        """When the earliest delayed pending task of these queues becomes due."""
        async with self._conn() as conn:
            return await self._sql.tasks.next_due_at(conn, queues=_queues(queues))

    async def get_task(self, task_id: str) -> Task | None:
        async with self._conn() as conn:
            row = await self._sql.tasks.get_task(conn, id=task_id)
        return task_from_row(row) if row else None

    async def update_task(self, task: Task) -> bool:
        """Write the task's fields back (status, priority, run_at, ...); False if it is gone.

        A final status (completed, failed, expired, cancelled) ends the task the one way
        every ending goes: result, final event, callbacks and dependents follow. Leaving a
        final status (use :meth:`retry_tasks`) and changing dependencies raise ValueError.
        """
        params = task_params(task)
        async with self._conn() as conn:
            try:
                return bool(await self._sql.tasks.update_task(conn, **params))
            except asyncpg.InvalidParameterValueError as exc:
                raise ValueError(_with_hint(exc)) from None

    async def delete_task(self, task_id: str) -> bool:
        """Delete a task (its result and events stay); False if there is none.

        Refused (ValueError) while a waiting task depends on it: cancel it instead.
        """
        async with self._conn() as conn:
            try:
                return bool(await self._sql.tasks.delete_task(conn, id=task_id))
            except asyncpg.DependentObjectsStillExistError as exc:
                raise ValueError(_with_hint(exc)) from None

    async def cancel_task(self, task_id: str, reason: str = "cancelled by request") -> bool:
        """Cancel a task that has not started yet (and the tasks that depend on it)."""
        return await self.cancel_tasks([task_id], reason) == 1

    async def cancel_tasks(
        self, task_ids: Sequence[str], reason: str = "cancelled by request"
    ) -> int:
        async with self._conn() as conn:
            cancelled = await self._sql.tasks.cancel_tasks(conn, ids=list(task_ids), reason=reason)
        return cancelled or 0

    async def abort_task(
        self, task_id: str, reason: str | None = None, *, requested_by: str | None = None
    ) -> bool:
        """Abort a task: one that has not started is cancelled (with the tasks that depend on
        it); a running one is asked to stop, and its worker hears it at once (NOTIFY): an
        ``async def`` task is cancelled, a thread task sees ``omniq.current_task().
        should_abort()`` become True. It ends ``cancelled``, with an error naming
        ``requested_by`` (default: the database user) and ``reason``. False, changing nothing,
        for a finished task or an unknown id; asking again is harmless."""
        async with self._conn() as conn:
            return bool(
                await self._sql.tasks.abort_task(
                    conn, id=task_id, reason=reason, requested_by=requested_by
                )
            )

    async def retry_tasks(
        self,
        task_ids: Sequence[str] | None = None,
        *,
        queue_name: str | None = None,
        func: str | None = None,
    ) -> int:
        """Send failed tasks (or the given failed/cancelled/expired ones) back to pending."""
        async with self._conn() as conn:
            ids = list(task_ids) if task_ids is not None else None
            try:
                retried = await self._sql.tasks.retry_tasks(
                    conn, ids=ids, queue_name=queue_name, func=func
                )
            except asyncpg.UniqueViolationError as exc:  # tasks_unique_key_idx
                raise ValueError(
                    f"{exc.detail or exc}: another task holds the unique key of a task to retry; "
                    "nothing was retried. Cancel one of the two first."
                ) from None
        return retried or 0

    async def list_tasks(
        self,
        queue_name: str | None = None,
        status: str | Sequence[str] | None = None,
        func: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
    ) -> list[Task]:
        """Tasks, newest first, filtered by any combination of the arguments."""
        check_page(limit, offset)
        async with self._conn() as conn:
            rows = await self._sql.tasks.list_tasks(
                conn,
                statuses=as_list(status),
                queue_name=queue_name,
                func=func,
                created_after=as_utc(created_after),
                created_before=as_utc(created_before),
                limit=limit,
                offset=offset,
            )
        return [task_from_row(row) for row in rows]

    async def get_queue_size(self, queue_name: str = "default") -> int:
        """Pending tasks in the queue (ready now or delayed)."""
        async with self._conn() as conn:
            pending = await self._sql.tasks.count_pending(conn, queue_name=queue_name)
        return pending or 0

    async def cleanup_expired_tasks(self, progress: Progress | None = None) -> int:
        """Mark overdue unstarted tasks expired, then delete expired tasks; returns rows deleted."""
        return await self._drain(self._sql.tasks.cleanup_expired_tasks, progress)

    async def purge_finished_tasks(
        self, older_than: timedelta, progress: Progress | None = None
    ) -> int:
        """Delete finished tasks created more than ``older_than`` ago; returns rows deleted."""
        return await self._drain(
            self._sql.tasks.purge_finished_tasks, progress, older_than=older_than
        )

    async def requeue_stalled(self, older_than: timedelta) -> int:
        """Put tasks running for longer than ``older_than`` back to pending."""
        async with self._conn() as conn:
            requeued = await self._sql.tasks.requeue_stalled(conn, older_than=older_than)
        return requeued or 0

    # Unique tasks and queue settings (issue 13): sql/functions/unique.sql and queues.sql.

    async def enqueue_unique(self, task: Task, *, connection: Connection | None = None) -> Enqueued:
        """Enqueue ``task`` and tell whether it was created: ``(id, created)``; when another
        task holds its unique key, ``created`` is False and ``id`` is that task's."""
        (enqueued,) = await self.enqueue_many_unique([task], connection=connection)
        return enqueued

    async def enqueue_many_unique(
        self, tasks: Iterable[Task], *, connection: Connection | None = None
    ) -> list[Enqueued]:
        """:meth:`enqueue_many`, telling for each task whether it was created. A key repeated
        in the batch: the first task takes it, the later ones are deduplicated against it."""
        batch = list(tasks)
        ids = await self.enqueue_many(batch, connection=connection)
        return [Enqueued(got, got == task.id) for task, got in zip(batch, ids, strict=True)]

    async def pause_queue(self, name: str) -> bool:
        """Pause a queue: it keeps accepting tasks, no worker takes any, running ones finish.
        A name never used before is fine. True when this call paused it."""
        async with self._conn() as conn:
            return bool(await self._sql.queues.pause_queue(conn, name=check_queue_name(name)))

    async def resume_queue(self, name: str) -> bool:
        """Resume a paused queue; its workers are woken by NOTIFY. True when it was paused."""
        async with self._conn() as conn:
            return bool(await self._sql.queues.resume_queue(conn, name=check_queue_name(name)))

    async def set_queue_limits(
        self,
        name: str,
        *,
        max_running: int | None = None,
        rate: float | None = None,
        burst: int | None = None,
    ) -> QueueSettings:
        """Set the queue's limits, enforced in the database across every worker: at most
        ``max_running`` of its tasks running (0 pauses, 1 runs them one at a time), at most
        ``rate`` started per second with up to ``burst`` at once (default: one second's worth).
        Each call sets all three; None removes that limit. Returns the queue's settings."""
        check_limits(max_running, rate, burst)
        async with self._conn() as conn:
            try:
                await self._sql.queues.set_queue_limits(
                    conn,
                    name=check_queue_name(name),
                    max_running=max_running,
                    rate=rate,
                    burst=burst,
                )
            except (asyncpg.InvalidParameterValueError, asyncpg.CheckViolationError) as exc:
                raise ValueError(f"{_with_hint(exc)}; nothing was changed") from None
        (settings,) = await self.queue_settings([name])
        return settings

    async def queue_settings(self, names: Sequence[str] | None = None) -> list[QueueSettings]:
        """The settings of the named queues (every queue that has some when None), by name;
        a named queue never paused or limited is listed with no limit."""
        wanted = None if names is None else [check_queue_name(n) for n in names]
        async with self._conn() as conn:
            rows = await self._sql.queues.queue_settings(conn, names=wanted)
        found = {row["name"]: QueueSettings(**dict(row)) for row in rows}
        if wanted is None:
            return list(found.values())
        return [found.get(n) or QueueSettings(n) for n in sorted(set(wanted))]


class PostgresQueue(AsyncPostgresQueue):
    """The task queue with its blocking methods: ``enqueue_sync``, ``dequeue_sync``, ..."""

    # -- generated by scripts/unasync from AsyncPostgresQueue: do not edit --
    def enqueue_sync(self, task: Task, *, connection: Connection | None = None) -> str:
        """Blocking form of :meth:`enqueue` (same arguments and result)."""
        return run_on(self._sync_loop(), self.enqueue(task, connection=connection))

    def enqueue_many_sync(
        self, tasks: Iterable[Task], *, connection: Connection | None = None
    ) -> list[str]:
        """Blocking form of :meth:`enqueue_many` (same arguments and result)."""
        return run_on(self._sync_loop(), self.enqueue_many(tasks, connection=connection))

    def enqueue_calls_sync(
        self,
        template: Task | str | Callable[..., Any],
        calls: Iterable[Call],
        *,
        connection: Connection | None = None,
    ) -> list[str]:
        """Blocking form of :meth:`enqueue_calls` (same arguments and result)."""
        return run_on(self._sync_loop(), self.enqueue_calls(template, calls, connection=connection))

    def dequeue_sync(
        self,
        queues: str | Sequence[str],
        timeout: float | None = None,
        *,
        worker_id: str | None = None,
    ) -> Task | None:
        """Blocking form of :meth:`dequeue` (same arguments and result)."""
        return run_on(self._sync_loop(), self.dequeue(queues, timeout, worker_id=worker_id))

    def dequeue_many_sync(
        self,
        queues: str | Sequence[str],
        limit: int,
        *,
        timeout: float | None = None,
        worker_id: str | None = None,
    ) -> list[Task]:
        """Blocking form of :meth:`dequeue_many` (same arguments and result)."""
        return run_on(
            self._sync_loop(),
            self.dequeue_many(queues, limit, timeout=timeout, worker_id=worker_id),
        )

    def next_due_at_sync(self, queues: str | Sequence[str]) -> datetime | None:
        """Blocking form of :meth:`next_due_at` (same arguments and result)."""
        return run_on(self._sync_loop(), self.next_due_at(queues))

    def get_task_sync(self, task_id: str) -> Task | None:
        """Blocking form of :meth:`get_task` (same arguments and result)."""
        return run_on(self._sync_loop(), self.get_task(task_id))

    def update_task_sync(self, task: Task) -> bool:
        """Blocking form of :meth:`update_task` (same arguments and result)."""
        return run_on(self._sync_loop(), self.update_task(task))

    def delete_task_sync(self, task_id: str) -> bool:
        """Blocking form of :meth:`delete_task` (same arguments and result)."""
        return run_on(self._sync_loop(), self.delete_task(task_id))

    def cancel_task_sync(self, task_id: str, reason: str = "cancelled by request") -> bool:
        """Blocking form of :meth:`cancel_task` (same arguments and result)."""
        return run_on(self._sync_loop(), self.cancel_task(task_id, reason))

    def cancel_tasks_sync(
        self, task_ids: Sequence[str], reason: str = "cancelled by request"
    ) -> int:
        """Blocking form of :meth:`cancel_tasks` (same arguments and result)."""
        return run_on(self._sync_loop(), self.cancel_tasks(task_ids, reason))

    def abort_task_sync(
        self, task_id: str, reason: str | None = None, *, requested_by: str | None = None
    ) -> bool:
        """Blocking form of :meth:`abort_task` (same arguments and result)."""
        return run_on(
            self._sync_loop(), self.abort_task(task_id, reason, requested_by=requested_by)
        )

    def retry_tasks_sync(
        self,
        task_ids: Sequence[str] | None = None,
        *,
        queue_name: str | None = None,
        func: str | None = None,
    ) -> int:
        """Blocking form of :meth:`retry_tasks` (same arguments and result)."""
        return run_on(
            self._sync_loop(), self.retry_tasks(task_ids, queue_name=queue_name, func=func)
        )

    def list_tasks_sync(
        self,
        queue_name: str | None = None,
        status: str | Sequence[str] | None = None,
        func: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
    ) -> list[Task]:
        """Blocking form of :meth:`list_tasks` (same arguments and result)."""
        return run_on(
            self._sync_loop(),
            self.list_tasks(queue_name, status, func, created_after, created_before, limit, offset),
        )

    def get_queue_size_sync(self, queue_name: str = "default") -> int:
        """Blocking form of :meth:`get_queue_size` (same arguments and result)."""
        return run_on(self._sync_loop(), self.get_queue_size(queue_name))

    def cleanup_expired_tasks_sync(self, progress: Progress | None = None) -> int:
        """Blocking form of :meth:`cleanup_expired_tasks` (same arguments and result)."""
        return run_on(self._sync_loop(), self.cleanup_expired_tasks(progress))

    def purge_finished_tasks_sync(
        self, older_than: timedelta, progress: Progress | None = None
    ) -> int:
        """Blocking form of :meth:`purge_finished_tasks` (same arguments and result)."""
        return run_on(self._sync_loop(), self.purge_finished_tasks(older_than, progress))

    def requeue_stalled_sync(self, older_than: timedelta) -> int:
        """Blocking form of :meth:`requeue_stalled` (same arguments and result)."""
        return run_on(self._sync_loop(), self.requeue_stalled(older_than))

    def enqueue_unique_sync(self, task: Task, *, connection: Connection | None = None) -> Enqueued:
        """Blocking form of :meth:`enqueue_unique` (same arguments and result)."""
        return run_on(self._sync_loop(), self.enqueue_unique(task, connection=connection))

    def enqueue_many_unique_sync(
        self, tasks: Iterable[Task], *, connection: Connection | None = None
    ) -> list[Enqueued]:
        """Blocking form of :meth:`enqueue_many_unique` (same arguments and result)."""
        return run_on(self._sync_loop(), self.enqueue_many_unique(tasks, connection=connection))

    def pause_queue_sync(self, name: str) -> bool:
        """Blocking form of :meth:`pause_queue` (same arguments and result)."""
        return run_on(self._sync_loop(), self.pause_queue(name))

    def resume_queue_sync(self, name: str) -> bool:
        """Blocking form of :meth:`resume_queue` (same arguments and result)."""
        return run_on(self._sync_loop(), self.resume_queue(name))

    def set_queue_limits_sync(
        self,
        name: str,
        *,
        max_running: int | None = None,
        rate: float | None = None,
        burst: int | None = None,
    ) -> QueueSettings:
        """Blocking form of :meth:`set_queue_limits` (same arguments and result)."""
        return run_on(
            self._sync_loop(),
            self.set_queue_limits(name, max_running=max_running, rate=rate, burst=burst),
        )

    def queue_settings_sync(self, names: Sequence[str] | None = None) -> list[QueueSettings]:
        """Blocking form of :meth:`queue_settings` (same arguments and result)."""
        return run_on(self._sync_loop(), self.queue_settings(names))

    # -- end of generated code --
