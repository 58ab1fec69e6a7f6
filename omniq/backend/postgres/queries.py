"""Typed named queries: one class per query of sql/queries/*.sql, written by scripts/queries
from the -- name: headers and the types PostgreSQL reports; do not edit."""

# source: sql/queries sha256 e3c504c0abe2fd70

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from asyncpg import Record

from .connection import Connection
from .query import Query, QueryGroup, QueryGroups


class QueueOverview(Query):
    """queue_overview() of sql/queries/cli.sql."""

    async def __call__(self, conn: Connection) -> list[Record]:
        return await conn.fetch(self.sql)


class RecentOutcomes(Query):
    """recent_outcomes(since) of sql/queries/cli.sql."""

    async def __call__(self, conn: Connection, *, since: datetime | None) -> list[Record]:
        return await conn.fetch(self.sql, since)


class ScheduleOverview(Query):
    """schedule_overview() of sql/queries/cli.sql."""

    async def __call__(self, conn: Connection) -> Record | None:
        return await conn.fetchrow(self.sql)


class ServerInfo(Query):
    """server_info() of sql/queries/cli.sql."""

    async def __call__(self, conn: Connection) -> Record | None:
        return await conn.fetchrow(self.sql)


class Privileges(Query):
    """privileges(schema_name) of sql/queries/cli.sql."""

    async def __call__(self, conn: Connection, *, schema_name: str | None) -> Record | None:
        return await conn.fetchrow(self.sql, schema_name)


class TablePrivileges(Query):
    """table_privileges(schema_name, tables) of sql/queries/cli.sql."""

    async def __call__(
        self, conn: Connection, *, schema_name: str | None, tables: Sequence[str | None] | None
    ) -> list[Record]:
        return await conn.fetch(self.sql, schema_name, tables)


class ProtocolPrivileges(Query):
    """protocol_privileges(schema_name) of sql/queries/cli.sql."""

    async def __call__(self, conn: Connection, *, schema_name: str | None) -> Record | None:
        return await conn.fetchrow(self.sql, schema_name)


class TableHealth(Query):
    """table_health(schema_name, tables) of sql/queries/cli.sql."""

    async def __call__(
        self, conn: Connection, *, schema_name: str | None, tables: Sequence[str | None] | None
    ) -> list[Record]:
        return await conn.fetch(self.sql, schema_name, tables)


class IndexUsage(Query):
    """index_usage(schema_name, tables) of sql/queries/cli.sql."""

    async def __call__(
        self, conn: Connection, *, schema_name: str | None, tables: Sequence[str | None] | None
    ) -> list[Record]:
        return await conn.fetch(self.sql, schema_name, tables)


class Notify(Query):
    """notify(channel, payload) of sql/queries/cli.sql."""

    async def __call__(self, conn: Connection, *, channel: str | None, payload: str | None) -> None:
        await conn.fetchval(self.sql, channel, payload)


class CheckInvariants(Query):
    """check_invariants(window, limit) of sql/queries/cli.sql."""

    async def __call__(
        self, conn: Connection, *, window: timedelta | None, limit: int | None
    ) -> list[Record]:
        return await conn.fetch(self.sql, window, limit)


class LogEvents(Query):
    """log_events(events) of sql/queries/events.sql."""

    async def __call__(self, conn: Connection, *, events: Any | None) -> str:
        return await conn.execute(self.sql, events)


class ListEvents(Query):
    """list_events(task_id, event_types, queue_name, worker_id, after, before, limit, offset) of sql/queries/events.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        task_id: str | None,
        event_types: Sequence[str | None] | None,
        queue_name: str | None,
        worker_id: str | None,
        after: datetime | None,
        before: datetime | None,
        limit: int | None,
        offset: int | None,
    ) -> list[Record]:
        return await conn.fetch(
            self.sql, task_id, event_types, queue_name, worker_id, after, before, limit, offset
        )


class CleanupOldEvents(Query):
    """cleanup_old_events(before, batch) of sql/queries/events.sql."""

    async def __call__(
        self, conn: Connection, *, before: datetime | None, batch: int | None
    ) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, before, batch))


class Installed(Query):
    """installed(schema_name) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, schema_name: str | None) -> bool | None:
        return cast("bool | None", await conn.fetchval(self.sql, schema_name))


class AppliedMigrations(Query):
    """applied_migrations() of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection) -> list[Record]:
        return await conn.fetch(self.sql)


class LockInstallation(Query):
    """lock_installation(schema_name) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, schema_name: str | None) -> None:
        await conn.fetchval(self.sql, schema_name)


class TryLockInstallation(Query):
    """try_lock_installation(schema_name) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, schema_name: str | None) -> bool | None:
        return cast("bool | None", await conn.fetchval(self.sql, schema_name))


class UnlockInstallation(Query):
    """unlock_installation(schema_name) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, schema_name: str | None) -> bool | None:
        return cast("bool | None", await conn.fetchval(self.sql, schema_name))


class BoundLockWaits(Query):
    """bound_lock_waits(timeout) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, timeout: str | None) -> str | None:
        return cast("str | None", await conn.fetchval(self.sql, timeout))


class SchemaExists(Query):
    """schema_exists(schema_name) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, schema_name: str | None) -> bool | None:
        return cast("bool | None", await conn.fetchval(self.sql, schema_name))


class CreateSchema(Query):
    """create_schema() of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection) -> str:
        return await conn.execute(self.sql)


class UseSchema(Query):
    """use_schema() of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection) -> str:
        return await conn.execute(self.sql)


class UseSchemaForSession(Query):
    """use_schema_for_session() of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection) -> str:
        return await conn.execute(self.sql)


class ResetSearchPath(Query):
    """reset_search_path() of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection) -> str:
        return await conn.execute(self.sql)


class CreateBookkeeping(Query):
    """create_bookkeeping() of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection) -> str:
        return await conn.execute(self.sql)


class RecordMigration(Query):
    """record_migration(name, checksum) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, name: str | None, checksum: str | None) -> str:
        return await conn.execute(self.sql, name, checksum)


class GetMeta(Query):
    """get_meta(key) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, key: str | None) -> str | None:
        return cast("str | None", await conn.fetchval(self.sql, key))


class SetMeta(Query):
    """set_meta(key, value) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, key: str | None, value: str | None) -> str:
        return await conn.execute(self.sql, key, value)


class Channel(Query):
    """channel(kind) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, kind: str | None) -> str | None:
        return cast("str | None", await conn.fetchval(self.sql, kind))


class RelationSize(Query):
    """relation_size(name) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, name: str | None) -> Record | None:
        return await conn.fetchrow(self.sql, name)


class IndexValid(Query):
    """index_valid(name) of sql/queries/migrations.sql."""

    async def __call__(self, conn: Connection, *, name: str | None) -> bool | None:
        return cast("bool | None", await conn.fetchval(self.sql, name))


class DropIndexStatement(Query):
    """drop_index_statement(schema_name, index_name, concurrently) of sql/queries/migrations.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        schema_name: str | None,
        index_name: str | None,
        concurrently: bool | None,
    ) -> str | None:
        return cast(
            "str | None", await conn.fetchval(self.sql, schema_name, index_name, concurrently)
        )


class QueueGauges(Query):
    """queue_gauges() of sql/queries/monitor.sql."""

    async def __call__(self, conn: Connection) -> list[Record]:
        return await conn.fetch(self.sql)


class FinishedPerMinute(Query):
    """finished_per_minute(since) of sql/queries/monitor.sql."""

    async def __call__(self, conn: Connection, *, since: datetime | None) -> list[Record]:
        return await conn.fetch(self.sql, since)


class WithoutJit(Query):
    """without_jit() of sql/queries/monitor.sql."""

    async def __call__(self, conn: Connection) -> str:
        return await conn.execute(self.sql)


class Workers(Query):
    """workers() of sql/queries/monitor.sql."""

    async def __call__(self, conn: Connection) -> list[Record]:
        return await conn.fetch(self.sql)


class Schedules(Query):
    """schedules(limit, runs) of sql/queries/monitor.sql."""

    async def __call__(
        self, conn: Connection, *, limit: int | None, runs: int | None
    ) -> list[Record]:
        return await conn.fetch(self.sql, limit, runs)


class TaskPage(Query):
    """task_page(statuses, queue_name, func, created_after, created_before, search, scan, before_created_at, before_id, limit) of sql/queries/monitor.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        statuses: Sequence[str | None] | None,
        queue_name: str | None,
        func: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
        search: str | None,
        scan: int | None,
        before_created_at: datetime | None,
        before_id: str | None,
        limit: int | None,
    ) -> list[Record]:
        return await conn.fetch(
            self.sql,
            statuses,
            queue_name,
            func,
            created_after,
            created_before,
            search,
            scan,
            before_created_at,
            before_id,
            limit,
        )


class TaskRows(Query):
    """task_rows(ids) of sql/queries/monitor.sql."""

    async def __call__(self, conn: Connection, *, ids: Sequence[str | None] | None) -> list[Record]:
        return await conn.fetch(self.sql, ids)


class TaskDetail(Query):
    """task_detail(id) of sql/queries/monitor.sql."""

    async def __call__(self, conn: Connection, *, id: str | None) -> Record | None:
        return await conn.fetchrow(self.sql, id)


class RelatedTasks(Query):
    """related_tasks(id, limit) of sql/queries/monitor.sql."""

    async def __call__(
        self, conn: Connection, *, id: str | None, limit: int | None
    ) -> list[Record]:
        return await conn.fetch(self.sql, id, limit)


class TaskStates(Query):
    """task_states(ids) of sql/queries/monitor.sql."""

    async def __call__(self, conn: Connection, *, ids: Sequence[str | None] | None) -> list[Record]:
        return await conn.fetch(self.sql, ids)


class WorkerVersions(Query):
    """worker_versions() of sql/queries/monitor.sql."""

    async def __call__(self, conn: Connection) -> list[Record]:
        return await conn.fetch(self.sql)


class PauseQueue(Query):
    """pause_queue(name) of sql/queries/queues.sql."""

    async def __call__(self, conn: Connection, *, name: str | None) -> bool | None:
        return cast("bool | None", await conn.fetchval(self.sql, name))


class ResumeQueue(Query):
    """resume_queue(name) of sql/queries/queues.sql."""

    async def __call__(self, conn: Connection, *, name: str | None) -> bool | None:
        return cast("bool | None", await conn.fetchval(self.sql, name))


class SetQueueLimits(Query):
    """set_queue_limits(name, max_running, rate, burst) of sql/queries/queues.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        name: str | None,
        max_running: int | None,
        rate: float | None,
        burst: int | None,
    ) -> str:
        return await conn.execute(self.sql, name, max_running, rate, burst)


class QueueSettings(Query):
    """queue_settings(names) of sql/queries/queues.sql."""

    async def __call__(
        self, conn: Connection, *, names: Sequence[str | None] | None
    ) -> list[Record]:
        return await conn.fetch(self.sql, names)


class UpsertResult(Query):
    """upsert_result(task_id, status, result, error, error_type, traceback, created_at, started_at, completed_at, expires_at, worker_id, execution_time, memory_usage, metadata, result_data) of sql/queries/results.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        task_id: str | None,
        status: str | None,
        result: Any | None,
        error: str | None,
        error_type: str | None,
        traceback: str | None,
        created_at: datetime | None,
        started_at: datetime | None,
        completed_at: datetime | None,
        expires_at: datetime | None,
        worker_id: str | None,
        execution_time: float | None,
        memory_usage: int | None,
        metadata: Any | None,
        result_data: Any | None,
    ) -> str:
        return await conn.execute(
            self.sql,
            task_id,
            status,
            result,
            error,
            error_type,
            traceback,
            created_at,
            started_at,
            completed_at,
            expires_at,
            worker_id,
            execution_time,
            memory_usage,
            metadata,
            result_data,
        )


class GetResult(Query):
    """get_result(task_id) of sql/queries/results.sql."""

    async def __call__(self, conn: Connection, *, task_id: str | None) -> Record | None:
        return await conn.fetchrow(self.sql, task_id)


class ListResults(Query):
    """list_results(statuses, worker_id, created_after, created_before, limit, offset) of sql/queries/results.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        statuses: Sequence[str | None] | None,
        worker_id: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
        limit: int | None,
        offset: int | None,
    ) -> list[Record]:
        return await conn.fetch(
            self.sql, statuses, worker_id, created_after, created_before, limit, offset
        )


class DeleteResult(Query):
    """delete_result(task_id) of sql/queries/results.sql."""

    async def __call__(self, conn: Connection, *, task_id: str | None) -> str | None:
        return cast("str | None", await conn.fetchval(self.sql, task_id))


class CleanupExpiredResults(Query):
    """cleanup_expired_results(batch) of sql/queries/results.sql."""

    async def __call__(self, conn: Connection, *, batch: int | None) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, batch))


class SaveSchedule(Query):
    """save_schedule(id, schedule_type, func, args, kwargs, queue_name, cron_expression, interval_seconds, timestamp, status, created_at, last_run, next_run, max_runs, run_count, ttl_seconds, expires_at, metadata, schedule_data) of sql/queries/schedules.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        id: str | None,
        schedule_type: str | None,
        func: str | None,
        args: Any | None,
        kwargs: Any | None,
        queue_name: str | None,
        cron_expression: str | None,
        interval_seconds: float | None,
        timestamp: datetime | None,
        status: str | None,
        created_at: datetime | None,
        last_run: datetime | None,
        next_run: datetime | None,
        max_runs: int | None,
        run_count: int | None,
        ttl_seconds: float | None,
        expires_at: datetime | None,
        metadata: Any | None,
        schedule_data: Any | None,
    ) -> str:
        return await conn.execute(
            self.sql,
            id,
            schedule_type,
            func,
            args,
            kwargs,
            queue_name,
            cron_expression,
            interval_seconds,
            timestamp,
            status,
            created_at,
            last_run,
            next_run,
            max_runs,
            run_count,
            ttl_seconds,
            expires_at,
            metadata,
            schedule_data,
        )


class GetSchedule(Query):
    """get_schedule(id) of sql/queries/schedules.sql."""

    async def __call__(self, conn: Connection, *, id: str | None) -> Record | None:
        return await conn.fetchrow(self.sql, id)


class ListSchedules(Query):
    """list_schedules(statuses, schedule_type, queue_name, func, limit, offset) of sql/queries/schedules.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        statuses: Sequence[str | None] | None,
        schedule_type: str | None,
        queue_name: str | None,
        func: str | None,
        limit: int | None,
        offset: int | None,
    ) -> list[Record]:
        return await conn.fetch(self.sql, statuses, schedule_type, queue_name, func, limit, offset)


class ReadySchedules(Query):
    """ready_schedules(limit) of sql/queries/schedules.sql."""

    async def __call__(self, conn: Connection, *, limit: int | None) -> list[Record]:
        return await conn.fetch(self.sql, limit)


class DeleteSchedule(Query):
    """delete_schedule(id) of sql/queries/schedules.sql."""

    async def __call__(self, conn: Connection, *, id: str | None) -> str | None:
        return cast("str | None", await conn.fetchval(self.sql, id))


class SetScheduleStatus(Query):
    """set_schedule_status(id, status) of sql/queries/schedules.sql."""

    async def __call__(
        self, conn: Connection, *, id: str | None, status: str | None
    ) -> bool | None:
        return cast("bool | None", await conn.fetchval(self.sql, id, status))


class ClaimSchedules(Query):
    """claim_schedules(limit) of sql/queries/schedules.sql."""

    async def __call__(self, conn: Connection, *, limit: int | None) -> list[Record]:
        return await conn.fetch(self.sql, limit)


class FireSchedules(Query):
    """fire_schedules(ids, next_runs, errors) of sql/queries/schedules.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        ids: Sequence[str | None] | None,
        next_runs: Sequence[datetime | None] | None,
        errors: Sequence[str | None] | None,
    ) -> list[Record]:
        return await conn.fetch(self.sql, ids, next_runs, errors)


class NextScheduleAt(Query):
    """next_schedule_at() of sql/queries/schedules.sql."""

    async def __call__(self, conn: Connection) -> datetime | None:
        return cast("datetime | None", await conn.fetchval(self.sql))


class CleanupExpiredSchedules(Query):
    """cleanup_expired_schedules(batch) of sql/queries/schedules.sql."""

    async def __call__(self, conn: Connection, *, batch: int | None) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, batch))


class EnqueueTasks(Query):
    """enqueue_tasks(tasks) of sql/queries/tasks.sql."""

    async def __call__(self, conn: Connection, *, tasks: Any | None) -> list[Record]:
        return await conn.fetch(self.sql, tasks)


class EnqueueOne(Query):
    """enqueue_one(id, func, created_at, queue_name, priority, args, kwargs, run_at, expires_at, retry_count, max_retries, retry_delay, callbacks, metadata, task_data) of sql/queries/tasks.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        id: str | None,
        func: str | None,
        created_at: datetime | None,
        queue_name: str | None,
        priority: int | None,
        args: Any | None,
        kwargs: Any | None,
        run_at: datetime | None,
        expires_at: datetime | None,
        retry_count: int | None,
        max_retries: int | None,
        retry_delay: float | None,
        callbacks: Any | None,
        metadata: Any | None,
        task_data: Any | None,
    ) -> str | None:
        return cast(
            "str | None",
            await conn.fetchval(
                self.sql,
                id,
                func,
                created_at,
                queue_name,
                priority,
                args,
                kwargs,
                run_at,
                expires_at,
                retry_count,
                max_retries,
                retry_delay,
                callbacks,
                metadata,
                task_data,
            ),
        )


class EnqueueCalls(Query):
    """enqueue_calls(template, ids, created_at, calls) of sql/queries/tasks.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        template: Any | None,
        ids: Sequence[str | None] | None,
        created_at: Sequence[datetime | None] | None,
        calls: Any | None,
    ) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, template, ids, created_at, calls))


class DequeueTasks(Query):
    """dequeue_tasks(queues, limit, worker_id) of sql/queries/tasks.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        queues: Sequence[str | None] | None,
        limit: int | None,
        worker_id: str | None,
    ) -> list[Record]:
        return await conn.fetch(self.sql, queues, limit, worker_id)


class FinishTasks(Query):
    """finish_tasks(outcomes, worker_id) of sql/queries/tasks.sql."""

    async def __call__(
        self, conn: Connection, *, outcomes: Any | None, worker_id: str | None
    ) -> list[Record]:
        return await conn.fetch(self.sql, outcomes, worker_id)


class ReleaseTasks(Query):
    """release_tasks(ids, worker_id, reason) of sql/queries/tasks.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        ids: Sequence[str | None] | None,
        worker_id: str | None,
        reason: str | None,
    ) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, ids, worker_id, reason))


class CancelTasks(Query):
    """cancel_tasks(ids, reason) of sql/queries/tasks.sql."""

    async def __call__(
        self, conn: Connection, *, ids: Sequence[str | None] | None, reason: str | None
    ) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, ids, reason))


class AbortTask(Query):
    """abort_task(id, reason, requested_by) of sql/queries/tasks.sql."""

    async def __call__(
        self, conn: Connection, *, id: str | None, reason: str | None, requested_by: str | None
    ) -> bool | None:
        return cast("bool | None", await conn.fetchval(self.sql, id, reason, requested_by))


class RetryTasks(Query):
    """retry_tasks(ids, queue_name, func) of sql/queries/tasks.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        ids: Sequence[str | None] | None,
        queue_name: str | None,
        func: str | None,
    ) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, ids, queue_name, func))


class GetTask(Query):
    """get_task(id) of sql/queries/tasks.sql."""

    async def __call__(self, conn: Connection, *, id: str | None) -> Record | None:
        return await conn.fetchrow(self.sql, id)


class ListTasks(Query):
    """list_tasks(statuses, queue_name, func, created_after, created_before, limit, offset) of sql/queries/tasks.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        statuses: Sequence[str | None] | None,
        queue_name: str | None,
        func: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
        limit: int | None,
        offset: int | None,
    ) -> list[Record]:
        return await conn.fetch(
            self.sql, statuses, queue_name, func, created_after, created_before, limit, offset
        )


class UpdateTask(Query):
    """update_task(id, queue_name, priority, status, func, args, kwargs, run_at, expires_at, retry_count, max_retries, retry_delay, dependencies, callbacks, metadata, task_data) of sql/queries/tasks.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        id: str | None,
        queue_name: str | None,
        priority: int | None,
        status: str | None,
        func: str | None,
        args: Any | None,
        kwargs: Any | None,
        run_at: datetime | None,
        expires_at: datetime | None,
        retry_count: int | None,
        max_retries: int | None,
        retry_delay: float | None,
        dependencies: Any | None,
        callbacks: Any | None,
        metadata: Any | None,
        task_data: Any | None,
    ) -> bool | None:
        return cast(
            "bool | None",
            await conn.fetchval(
                self.sql,
                id,
                queue_name,
                priority,
                status,
                func,
                args,
                kwargs,
                run_at,
                expires_at,
                retry_count,
                max_retries,
                retry_delay,
                dependencies,
                callbacks,
                metadata,
                task_data,
            ),
        )


class DeleteTask(Query):
    """delete_task(id) of sql/queries/tasks.sql."""

    async def __call__(self, conn: Connection, *, id: str | None) -> bool | None:
        return cast("bool | None", await conn.fetchval(self.sql, id))


class CountPending(Query):
    """count_pending(queue_name) of sql/queries/tasks.sql."""

    async def __call__(self, conn: Connection, *, queue_name: str | None) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, queue_name))


class NextDueAt(Query):
    """next_due_at(queues) of sql/queries/tasks.sql."""

    async def __call__(
        self, conn: Connection, *, queues: Sequence[str | None] | None
    ) -> datetime | None:
        return cast("datetime | None", await conn.fetchval(self.sql, queues))


class CleanupExpiredTasks(Query):
    """cleanup_expired_tasks(batch) of sql/queries/tasks.sql."""

    async def __call__(self, conn: Connection, *, batch: int | None) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, batch))


class PurgeFinishedTasks(Query):
    """purge_finished_tasks(older_than, batch) of sql/queries/tasks.sql."""

    async def __call__(
        self, conn: Connection, *, older_than: timedelta | None, batch: int | None
    ) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, older_than, batch))


class RequeueStalled(Query):
    """requeue_stalled(older_than) of sql/queries/tasks.sql."""

    async def __call__(self, conn: Connection, *, older_than: timedelta | None) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, older_than))


class Heartbeat(Query):
    """heartbeat(worker_id, hostname, pid, queues, concurrency, held, stale_after, stuck_threads, version) of sql/queries/workers.sql."""

    async def __call__(
        self,
        conn: Connection,
        *,
        worker_id: str | None,
        hostname: str | None,
        pid: int | None,
        queues: Sequence[str | None] | None,
        concurrency: int | None,
        held: Sequence[str | None] | None,
        stale_after: timedelta | None,
        stuck_threads: int | None,
        version: str | None,
    ) -> list[str] | None:
        return cast(
            "list[str] | None",
            await conn.fetchval(
                self.sql,
                worker_id,
                hostname,
                pid,
                queues,
                concurrency,
                held,
                stale_after,
                stuck_threads,
                version,
            ),
        )


class HeldTasks(Query):
    """held_tasks(worker_id) of sql/queries/workers.sql."""

    async def __call__(self, conn: Connection, *, worker_id: str | None) -> list[Record]:
        return await conn.fetch(self.sql, worker_id)


class AbortRequests(Query):
    """abort_requests(worker_id) of sql/queries/workers.sql."""

    async def __call__(self, conn: Connection, *, worker_id: str | None) -> list[Record]:
        return await conn.fetch(self.sql, worker_id)


class WorkerStopped(Query):
    """worker_stopped(worker_id) of sql/queries/workers.sql."""

    async def __call__(self, conn: Connection, *, worker_id: str | None) -> int | None:
        return cast("int | None", await conn.fetchval(self.sql, worker_id))


class RescueTasks(Query):
    """rescue_tasks(caller) of sql/queries/workers.sql."""

    async def __call__(self, conn: Connection, *, caller: str | None) -> Record | None:
        return await conn.fetchrow(self.sql, caller)


class ListWorkers(Query):
    """list_workers() of sql/queries/workers.sql."""

    async def __call__(self, conn: Connection) -> list[Record]:
        return await conn.fetch(self.sql)


class CliQueries(QueryGroup):
    """The queries of sql/queries/cli.sql."""

    queue_overview: QueueOverview
    recent_outcomes: RecentOutcomes
    schedule_overview: ScheduleOverview
    server_info: ServerInfo
    privileges: Privileges
    table_privileges: TablePrivileges
    protocol_privileges: ProtocolPrivileges
    table_health: TableHealth
    index_usage: IndexUsage
    notify: Notify
    check_invariants: CheckInvariants


class EventsQueries(QueryGroup):
    """The queries of sql/queries/events.sql."""

    log_events: LogEvents
    list_events: ListEvents
    cleanup_old_events: CleanupOldEvents


class MigrationsQueries(QueryGroup):
    """The queries of sql/queries/migrations.sql."""

    installed: Installed
    applied_migrations: AppliedMigrations
    lock_installation: LockInstallation
    try_lock_installation: TryLockInstallation
    unlock_installation: UnlockInstallation
    bound_lock_waits: BoundLockWaits
    schema_exists: SchemaExists
    create_schema: CreateSchema
    use_schema: UseSchema
    use_schema_for_session: UseSchemaForSession
    reset_search_path: ResetSearchPath
    create_bookkeeping: CreateBookkeeping
    record_migration: RecordMigration
    get_meta: GetMeta
    set_meta: SetMeta
    channel: Channel
    relation_size: RelationSize
    index_valid: IndexValid
    drop_index_statement: DropIndexStatement


class MonitorQueries(QueryGroup):
    """The queries of sql/queries/monitor.sql."""

    queue_gauges: QueueGauges
    finished_per_minute: FinishedPerMinute
    without_jit: WithoutJit
    workers: Workers
    schedules: Schedules
    task_page: TaskPage
    task_rows: TaskRows
    task_detail: TaskDetail
    related_tasks: RelatedTasks
    task_states: TaskStates
    worker_versions: WorkerVersions


class QueuesQueries(QueryGroup):
    """The queries of sql/queries/queues.sql."""

    pause_queue: PauseQueue
    resume_queue: ResumeQueue
    set_queue_limits: SetQueueLimits
    queue_settings: QueueSettings


class ResultsQueries(QueryGroup):
    """The queries of sql/queries/results.sql."""

    upsert_result: UpsertResult
    get_result: GetResult
    list_results: ListResults
    delete_result: DeleteResult
    cleanup_expired_results: CleanupExpiredResults


class SchedulesQueries(QueryGroup):
    """The queries of sql/queries/schedules.sql."""

    save_schedule: SaveSchedule
    get_schedule: GetSchedule
    list_schedules: ListSchedules
    ready_schedules: ReadySchedules
    delete_schedule: DeleteSchedule
    set_schedule_status: SetScheduleStatus
    claim_schedules: ClaimSchedules
    fire_schedules: FireSchedules
    next_schedule_at: NextScheduleAt
    cleanup_expired_schedules: CleanupExpiredSchedules


class TasksQueries(QueryGroup):
    """The queries of sql/queries/tasks.sql."""

    enqueue_tasks: EnqueueTasks
    enqueue_one: EnqueueOne
    enqueue_calls: EnqueueCalls
    dequeue_tasks: DequeueTasks
    finish_tasks: FinishTasks
    release_tasks: ReleaseTasks
    cancel_tasks: CancelTasks
    abort_task: AbortTask
    retry_tasks: RetryTasks
    get_task: GetTask
    list_tasks: ListTasks
    update_task: UpdateTask
    delete_task: DeleteTask
    count_pending: CountPending
    next_due_at: NextDueAt
    cleanup_expired_tasks: CleanupExpiredTasks
    purge_finished_tasks: PurgeFinishedTasks
    requeue_stalled: RequeueStalled


class WorkersQueries(QueryGroup):
    """The queries of sql/queries/workers.sql."""

    heartbeat: Heartbeat
    held_tasks: HeldTasks
    abort_requests: AbortRequests
    worker_stopped: WorkerStopped
    rescue_tasks: RescueTasks
    list_workers: ListWorkers


class QueryFiles(QueryGroups):
    """Every file of sql/queries: ``files.tasks.get_task(conn, id=...)``."""

    cli: CliQueries
    events: EventsQueries
    migrations: MigrationsQueries
    monitor: MonitorQueries
    queues: QueuesQueries
    results: ResultsQueries
    schedules: SchedulesQueries
    tasks: TasksQueries
    workers: WorkersQueries
