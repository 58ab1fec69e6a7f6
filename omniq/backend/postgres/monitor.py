"""The read model for people (``backend.monitor``): what the dashboard, /metrics, ``omniq
status`` and ``omniq doctor`` show.

The dashboard's reads are named queries of sql/queries/monitor.sql, and none of them scans task
history: live tasks come from their partial indexes, finished ones a page at a time in index
order, and recent throughput from one hour of results. The command line's come from
sql/queries/cli.sql. The answers are plain data (dataclasses holding dicts), ready for
templates or JSON.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ...models._common import as_utc, utcnow
from ...models.enums import TaskStatus
from .base import Component
from .connection import connect_listener
from .query import required
from .sync import run_on

ALL_STATUSES = tuple(TaskStatus)
LIVE_STATES = ("ready", "later", "waiting", "running", "failed")
ATTEMPT_START = frozenset({"dequeued", "executing"})
ATTEMPT_END = {  # event type -> how the attempt ended
    "completed": "completed",
    "failed": "failed",
    "retry": "failed, retried",
    "rescued": "worker lost",
    "requeued": "released",
    "expired": "expired",
    "cancelled": "cancelled",
}
SCAN = 5_000  # tasks a page narrowed by queue, func or search reads per status, at most
MAIN_TABLES = ("tasks", "results", "events", "schedules")  # their names are configurable
# OmniQ's own tables besides those four, under these fixed names (created by its migrations).
BOOKKEEPING_TABLES = ("omniq_workers", "omniq_migrations", "omniq_meta")


@dataclass
class QueueStats:
    """One queue: live counts, the oldest ready task's due time, recent outcomes."""

    queue: str
    ready: int = 0
    later: int = 0
    waiting: int = 0
    running: int = 0
    failed: int = 0
    paused: int = 0  # 1: paused (omniq queue pause, or max_running 0): no worker takes its tasks
    oldest_ready_at: datetime | None = None  # when the longest-waiting ready task became due
    next_later_at: datetime | None = None
    done_recently: int = 0
    failed_recently: int = 0

    def oldest_ready_seconds(self, now: datetime) -> float | None:
        if self.oldest_ready_at is None:
            return None
        return max(0.0, (now - self.oldest_ready_at).total_seconds())


@dataclass
class Gauges:
    """The queue-wide gauges (one query): per queue counts, workers alive and stale."""

    at: datetime
    queues: dict[str, QueueStats]
    workers_alive: int = 0
    workers_stale: int = 0


@dataclass
class Overview:
    """Everything the overview screen shows, read at ``at``."""

    at: datetime
    window: timedelta
    queues: list[QueueStats]
    minutes: list[dict[str, Any]]  # {minute, completed, failed}, oldest first, one per minute
    workers: list[dict[str, Any]]
    schedules: list[dict[str, Any]]
    workers_alive: int = 0
    workers_stale: int = 0


@dataclass
class TaskPage:
    """One page of the task list and the cursor of the next (None: this is the last)."""

    rows: list[dict[str, Any]]
    next_before: tuple[datetime, str] | None
    scanned: int | None = None  # a narrowed page's bound: tasks read per status, at most
    reached: datetime | None = None  # the bound stopped the read here (next_before goes on)


@dataclass
class TaskDetail:
    """One task (or only its result, when the task row was purged) and what it is linked to."""

    id: str
    stored: bool
    task: dict[str, Any]
    result: dict[str, Any] | None
    events: list[dict[str, Any]]  # oldest first
    attempts: list[dict[str, Any]]
    parents: list[dict[str, Any]] = field(default_factory=list)
    children: list[dict[str, Any]] = field(default_factory=list)
    callbacks: list[dict[str, Any]] = field(default_factory=list)


class AsyncPostgresMonitor(Component):
    """Read-only views of the queue for people. Every method has a blocking ``_sync`` twin."""

    async def gauges(self) -> Gauges:
        """Per-queue live counts and workers alive: the overview's numbers and /metrics."""
        async with self._conn() as conn:
            rows = await self._sql.monitor.queue_gauges(conn)
        gauges = Gauges(at=utcnow(), queues={})
        for row in rows:
            if row["kind"] == "workers":
                setattr(gauges, f"workers_{row['state']}", row["tasks"])
                continue
            stats = gauges.queues.setdefault(row["queue_name"], QueueStats(row["queue_name"]))
            setattr(stats, row["state"], row["tasks"])
            if row["state"] == "ready":
                stats.oldest_ready_at = row["oldest_due"]
            elif row["state"] == "later":
                stats.next_later_at = row["oldest_due"]
        return gauges

    async def throughput(self, since: datetime) -> list[dict[str, Any]]:
        """Tasks finished since ``since``: rows of minute, queue_name, status, tasks."""
        async with self._conn() as conn, conn.transaction():
            await self._sql.monitor.without_jit(conn)
            rows = await self._sql.monitor.finished_per_minute(conn, since=as_utc(since))
        return [dict(row) for row in rows]

    async def workers(self) -> list[dict[str, Any]]:
        """Registered workers with heartbeat, staleness, the tasks they hold and the OmniQ
        version they run (None: an earlier release's worker, which does not say)."""
        async with self._conn() as conn:
            rows = [dict(row) for row in await self._sql.monitor.workers(conn)]
            known = await self._sql.monitor.worker_versions(conn)
        versions = {r["id"]: r["version"] for r in known}
        for row in rows:
            row["version"] = versions.get(row["id"])
        return rows

    async def schedules(self, limit: int = 100, runs: int = 5) -> list[dict[str, Any]]:
        """Schedules, soonest first, each with its last ``runs`` fired tasks."""
        async with self._conn() as conn:
            rows = await self._sql.monitor.schedules(conn, limit=limit, runs=runs)
        return [_schedule(dict(row)) for row in rows]

    async def overview(
        self,
        window: timedelta = timedelta(hours=1),
        schedules: int = 5,
        finished: Sequence[dict[str, Any]] | None = None,
    ) -> Overview:
        """Queues, a per-minute chart of the last ``window``, workers and schedules due next.

        ``finished``: rows of :meth:`throughput` for the window that the caller kept (the
        dashboard re-reads only the last minutes); read here when None.
        """
        since = utcnow() - window
        gauges = await self.gauges()
        if finished is None:
            finished = await self.throughput(since)
        workers = await self.workers()
        due = await self.schedules(limit=schedules, runs=1)
        queues = dict(gauges.queues)
        for name in {q for w in workers for q in w["queues"] or ()} - queues.keys():
            queues[name] = QueueStats(name)  # a queue a worker serves, with nothing in it now
        per_minute: dict[datetime, dict[str, Any]] = {}
        for row in finished:
            outcome = "completed" if row["status"] == "success" else "failed"
            bucket = per_minute.setdefault(row["minute"], {"completed": 0, "failed": 0})
            bucket[outcome] += row["tasks"]
            if row["queue_name"] is None:
                continue  # the task was purged since: in the chart, in no queue
            stats = queues.setdefault(row["queue_name"], QueueStats(row["queue_name"]))
            if outcome == "completed":
                stats.done_recently += row["tasks"]
            else:
                stats.failed_recently += row["tasks"]
        return Overview(
            at=gauges.at,
            window=window,
            queues=[queues[name] for name in sorted(queues)],
            minutes=_minutes(per_minute, since, gauges.at),
            workers=workers,
            schedules=[s for s in due if s["status"] == "active"],
            workers_alive=gauges.workers_alive,
            workers_stale=gauges.workers_stale,
        )

    async def task_page(
        self,
        *,
        status: str | Sequence[str] | None = None,
        queue_name: str | None = None,
        func: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        search: str | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> TaskPage:
        """Tasks newest first, after the cursor ``before`` (created_at, id) of the last page.

        ``search`` matches a piece of the func, or of the error of a task that ended badly,
        in any case. A page narrowed by queue, func or search reads at most ``SCAN`` tasks per
        status; when that bound stops it before ``limit`` matches, the page holds what it
        found and ``next_before`` carries on from where it stopped (``reached``).
        """
        statuses = _statuses(status)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError(f"limit must be a whole number from 1 to 1000, got {limit!r}")
        search = search.strip() if search else None
        narrowed = bool(queue_name or func or search)
        scan = max(SCAN, limit + 1) if narrowed else limit + 1
        before_at, before_id = before if before is not None else (None, None)
        sql = self._sql.monitor
        async with self._conn() as conn:
            found = await sql.task_page(
                conn,
                statuses=statuses,
                queue_name=queue_name or None,
                func=func or None,
                created_after=as_utc(created_after),
                created_before=as_utc(created_before),
                search=search,
                scan=scan,
                before_created_at=as_utc(before_at),
                before_id=before_id,
                limit=limit + 1,
            )
            # A status that hit its bound was read only down to its boundary row: show the
            # matches from the newest boundary up, and continue from there.
            bounds = [(r["created_at"], r["id"]) for r in found if r["boundary"]]
            cut = max(bounds) if bounds else None
            keys = sorted(((r["created_at"], r["id"]) for r in found if r["matched"]), reverse=True)
            keys = [k for k in keys if cut is None or k >= cut]
            shown = keys[:limit]
            next_before = shown[-1] if len(keys) > limit else cut
            rows = await sql.task_rows(conn, ids=[i for _, i in shown]) if shown else []
        by_id = {row["id"]: dict(row) for row in rows}
        page = [by_id[i] for _, i in shown if i in by_id]  # one deleted in between is left out
        reached = cut[0] if cut is not None and len(keys) <= limit else None
        return TaskPage(page, next_before, scan if narrowed else None, reached)

    async def task_detail(
        self, task_id: str, events: int = 500, related: int = 100
    ) -> TaskDetail | None:
        """A task, its result, its latest ``events`` events, attempts, parents, children and
        callback tasks; None when neither the task nor its result is stored."""
        sql = self._sql.monitor
        async with self._conn() as conn:
            row = await sql.task_detail(conn, id=task_id)
            if row is None:
                return None
            history = await self._sql.events.list_events(  # stored and derived events
                conn,
                task_id=task_id,
                event_types=None,
                queue_name=None,
                worker_id=None,
                after=None,
                before=None,
                limit=events,
                offset=0,
            )
            links = await sql.related_tasks(conn, id=task_id, limit=related)
        result_keys = ("result", "error", "error_type", "traceback", "completed_at")
        result = None
        if row["result_status"] is not None:
            result = {k: row[k] for k in result_keys}
            result.update(
                status=row["result_status"],
                created_at=row["result_created_at"],
                started_at=row["result_started_at"],
                expires_at=row["result_expires_at"],
                worker_id=row["result_worker_id"],
                execution_time=row["execution_time"],
            )
        task = {k: v for k, v in row.items() if not k.startswith("result") and k not in result_keys}
        timeline = [dict(e) for e in reversed(history)]
        related_rows = [dict(r) for r in links]
        return TaskDetail(
            id=task_id,
            stored=row["stored"],
            task=task,
            result=result,
            events=timeline,
            attempts=attempts(timeline, result),
            parents=[r for r in related_rows if r["relation"] == "parent"],
            children=[r for r in related_rows if r["relation"] == "child"],
            callbacks=[r for r in related_rows if r["relation"] == "callback"],
        )

    async def task_states(self, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """id -> {status, attempts, worker_id, started_at, finished_at} of the stored ones."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        async with self._conn() as conn:
            rows = await self._sql.monitor.task_states(conn, ids=ids)
        return {row["id"]: dict(row) for row in rows}

    # -- omniq status ------------------------------------------------------------------------

    async def queue_counts(self) -> list[dict[str, Any]]:
        """Per queue: tasks in each state and the age of the oldest ready task (reads every
        task once: for a command run now and then, not for a screen refreshed every second)."""
        async with self._conn() as conn:
            return [dict(row) for row in await self._sql.cli.queue_overview(conn)]

    async def recent_outcomes(self, since: datetime) -> dict[str, dict[str, int]]:
        """queue -> {completed, failed}: the tasks that ended since ``since`` (from the event log)."""
        async with self._conn() as conn:
            rows = await self._sql.cli.recent_outcomes(conn, since=as_utc(since))
        return {r["queue_name"]: {"completed": r["completed"], "failed": r["failed"]} for r in rows}

    async def schedule_counts(self) -> dict[str, Any]:
        """Schedules active, paused and due now, and the earliest next run."""
        async with self._conn() as conn:
            return dict(required(await self._sql.cli.schedule_overview(conn), "schedule_overview"))

    # -- omniq doctor --------------------------------------------------------------------------

    @property
    def tables(self) -> dict[str, str]:
        """The installation's tables: kind -> name, the four configured ones and OmniQ's own."""
        names = {kind: self._sql.names[kind] for kind in MAIN_TABLES}
        return names | {name: name for name in BOOKKEEPING_TABLES}

    async def server(self) -> dict[str, Any]:
        """The server: version (text and major number), database, user, whether superuser,
        whether autovacuum runs."""
        async with self._conn() as conn:
            info = dict(required(await self._sql.cli.server_info(conn), "server_info"))
            info["major"] = conn.get_server_version().major
        return info

    async def privileges(self) -> dict[str, Any]:
        """What the user may do: create_database, schema_exists, usage_schema, create_schema;
        with USAGE on the schema also ``tables`` (name -> may read and write, for each of the
        installation's tables that exists), and ``worker``/``producer``: may call the functions
        the least-privilege roles of sql/roles.sql act through."""
        schema = self._backend.config.schema
        sql = self._sql.cli
        async with self._conn() as conn:
            found = dict(required(await sql.privileges(conn, schema_name=schema), "privileges"))
            if found["usage_schema"]:
                tables = list(self.tables.values())
                rows = await sql.table_privileges(conn, schema_name=schema, tables=tables)
                found["tables"] = {r["name"]: r["read_write"] for r in rows}
                protocol = await sql.protocol_privileges(conn, schema_name=schema)
                found.update(required(protocol, "protocol_privileges"))
        return found

    async def table_health(self) -> list[dict[str, Any]]:
        """Rows, dead rows, size, vacuums and scans of the four main tables."""
        return await self._of_main_tables(self._sql.cli.table_health)

    async def index_usage(self) -> list[dict[str, Any]]:
        """Scans and size of every index of the four main tables."""
        return await self._of_main_tables(self._sql.cli.index_usage)

    async def _of_main_tables(self, query: Any) -> list[dict[str, Any]]:
        names = [self._sql.names[kind] for kind in MAIN_TABLES]
        async with self._conn() as conn:
            rows = await query(conn, schema_name=self._backend.config.schema, tables=names)
        return [dict(row) for row in rows]

    async def check_invariants(
        self, window: timedelta = timedelta(hours=1), limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Every violated invariant (sql/README.md, omniq_check_invariants): invariant, task_id,
        schedule_id, detail; finished tasks looked at: those of the last ``window``, at most
        ``limit`` per way of finding them."""
        async with self._conn() as conn:
            rows = await self._sql.cli.check_invariants(conn, window=window, limit=limit)
        return [dict(row) for row in rows]

    async def listen_round_trip(self, timeout: float = 5.0) -> float | None:
        """Seconds a NOTIFY on a scratch channel takes to reach a new listening connection,
        opened as workers open theirs (``listen_dsn``); None when it has not arrived within
        ``timeout`` (PgBouncer in transaction mode, for one, delivers none)."""
        channel = f"omniq_doctor_{uuid.uuid4().hex[:12]}"
        listener = await connect_listener(self._backend.config)
        heard: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        def on_notify(*_: Any) -> None:
            if not heard.done():
                heard.set_result(time.monotonic())

        try:
            await listener.add_listener(channel, on_notify)
            sent = time.monotonic()
            async with self._conn() as conn:
                await self._sql.cli.notify(conn, channel=channel, payload="ping")
            try:
                return await asyncio.wait_for(heard, timeout) - sent
            except TimeoutError:
                return None
        finally:
            await listener.close()


class PostgresMonitor(AsyncPostgresMonitor):
    """The read model with its blocking methods: ``overview_sync``, ``task_page_sync``, ..."""

    # -- generated by scripts/unasync from AsyncPostgresMonitor: do not edit --
    def gauges_sync(self) -> Gauges:
        """Blocking form of :meth:`gauges` (same arguments and result)."""
        return run_on(self._sync_loop(), self.gauges())

    def throughput_sync(self, since: datetime) -> list[dict[str, Any]]:
        """Blocking form of :meth:`throughput` (same arguments and result)."""
        return run_on(self._sync_loop(), self.throughput(since))

    def workers_sync(self) -> list[dict[str, Any]]:
        """Blocking form of :meth:`workers` (same arguments and result)."""
        return run_on(self._sync_loop(), self.workers())

    def schedules_sync(self, limit: int = 100, runs: int = 5) -> list[dict[str, Any]]:
        """Blocking form of :meth:`schedules` (same arguments and result)."""
        return run_on(self._sync_loop(), self.schedules(limit, runs))

    def overview_sync(
        self,
        window: timedelta = timedelta(hours=1),
        schedules: int = 5,
        finished: Sequence[dict[str, Any]] | None = None,
    ) -> Overview:
        """Blocking form of :meth:`overview` (same arguments and result)."""
        return run_on(self._sync_loop(), self.overview(window, schedules, finished))

    def task_page_sync(
        self,
        *,
        status: str | Sequence[str] | None = None,
        queue_name: str | None = None,
        func: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        search: str | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> TaskPage:
        """Blocking form of :meth:`task_page` (same arguments and result)."""
        return run_on(
            self._sync_loop(),
            self.task_page(
                status=status,
                queue_name=queue_name,
                func=func,
                created_after=created_after,
                created_before=created_before,
                search=search,
                before=before,
                limit=limit,
            ),
        )

    def task_detail_sync(
        self, task_id: str, events: int = 500, related: int = 100
    ) -> TaskDetail | None:
        """Blocking form of :meth:`task_detail` (same arguments and result)."""
        return run_on(self._sync_loop(), self.task_detail(task_id, events, related))

    def task_states_sync(self, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Blocking form of :meth:`task_states` (same arguments and result)."""
        return run_on(self._sync_loop(), self.task_states(task_ids))

    def queue_counts_sync(self) -> list[dict[str, Any]]:
        """Blocking form of :meth:`queue_counts` (same arguments and result)."""
        return run_on(self._sync_loop(), self.queue_counts())

    def recent_outcomes_sync(self, since: datetime) -> dict[str, dict[str, int]]:
        """Blocking form of :meth:`recent_outcomes` (same arguments and result)."""
        return run_on(self._sync_loop(), self.recent_outcomes(since))

    def schedule_counts_sync(self) -> dict[str, Any]:
        """Blocking form of :meth:`schedule_counts` (same arguments and result)."""
        return run_on(self._sync_loop(), self.schedule_counts())

    def server_sync(self) -> dict[str, Any]:
        """Blocking form of :meth:`server` (same arguments and result)."""
        return run_on(self._sync_loop(), self.server())

    def privileges_sync(self) -> dict[str, Any]:
        """Blocking form of :meth:`privileges` (same arguments and result)."""
        return run_on(self._sync_loop(), self.privileges())

    def table_health_sync(self) -> list[dict[str, Any]]:
        """Blocking form of :meth:`table_health` (same arguments and result)."""
        return run_on(self._sync_loop(), self.table_health())

    def index_usage_sync(self) -> list[dict[str, Any]]:
        """Blocking form of :meth:`index_usage` (same arguments and result)."""
        return run_on(self._sync_loop(), self.index_usage())

    def check_invariants_sync(
        self, window: timedelta = timedelta(hours=1), limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Blocking form of :meth:`check_invariants` (same arguments and result)."""
        return run_on(self._sync_loop(), self.check_invariants(window, limit))

    def listen_round_trip_sync(self, timeout: float = 5.0) -> float | None:
        """Blocking form of :meth:`listen_round_trip` (same arguments and result)."""
        return run_on(self._sync_loop(), self.listen_round_trip(timeout))

    # -- end of generated code --


def _statuses(status: str | Sequence[str] | None) -> list[str]:
    if status is None or status == [] or status == ():
        return list(ALL_STATUSES)
    wanted = [str(status)] if isinstance(status, str) else [str(s) for s in status]
    unknown = [s for s in wanted if s not in ALL_STATUSES]
    if unknown:
        raise ValueError(
            f"unknown task status {', '.join(map(repr, unknown))}: use {', '.join(ALL_STATUSES)}"
        )
    return wanted


def _minutes(
    per_minute: dict[datetime, dict[str, Any]], since: datetime, now: datetime
) -> list[dict[str, Any]]:
    """One entry per minute from ``since`` to ``now``, zeros where nothing finished."""
    minute = since.replace(second=0, microsecond=0)
    out = []
    while minute <= now:
        counts = per_minute.get(minute, {"completed": 0, "failed": 0})
        out.append({"minute": minute, **counts})
        minute += timedelta(minutes=1)
    return out


def _schedule(row: dict[str, Any]) -> dict[str, Any]:
    row["runs"] = [
        {"id": i, "status": s, "created_at": t}
        for i, s, t in zip(
            row.pop("run_ids"), row.pop("run_statuses"), row.pop("run_times"), strict=True
        )
    ]
    return row


def _run(number: int, worker_id: str | None, started_at: Any) -> dict[str, Any]:
    return {
        "number": number,
        "worker_id": worker_id,
        "started_at": started_at,
        "ended_at": None,
        "outcome": "running",
        "error_type": None,
        "error": None,
        "traceback": None,
        "execution_time": None,
    }


def attempts(events: list[dict[str, Any]], result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The runs of a task read from its events (oldest first): who ran it, when, how it ended.

    An attempt opens at ``dequeued`` (or ``executing``) and closes at the event that ended it.
    An end a worker reported (a rescue or a release names the worker) without a start before
    it is a run whose start is unknown: since issue 12 a task's latest start is on its row and
    its failures' are stored, but the start of a rescued or released run is not.
    The last one takes the result's traceback when its event carries none.
    """
    runs: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for event in events:
        kind = event["event_type"]
        if current is None and kind in ATTEMPT_END and event["worker_id"]:
            current = _run(len(runs) + 1, event["worker_id"], None)
            runs.append(current)
        if kind in ATTEMPT_START:
            if current is None:
                current = _run(len(runs) + 1, event["worker_id"], event["timestamp"])
                runs.append(current)
            elif kind == "executing":
                current["started_at"] = event["timestamp"]  # dequeued earlier, ran from here
            current["worker_id"] = event["worker_id"] or current["worker_id"]
        elif kind in ATTEMPT_END and current is not None:
            current.update(
                ended_at=event["timestamp"],
                outcome=ATTEMPT_END[kind],
                error_type=event["error_type"],
                error=event["error_message"],
                traceback=event["traceback"],
                execution_time=event["execution_time"],
            )
            current = None
    if runs and result is not None and runs[-1]["outcome"] == "failed":
        last = runs[-1]
        last["traceback"] = last["traceback"] or result.get("traceback")
        last["error"] = last["error"] or result.get("error")
        last["error_type"] = last["error_type"] or result.get("error_type")
    return runs
