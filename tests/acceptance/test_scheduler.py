"""Schedules fired by real `omniq scheduler` / `omniq worker` processes on a fresh schema per test.

A fired task's id is '<schedule id>@<due time>', so the tasks table itself shows which due times
fired, and the primary key makes a second firing of one due time impossible to hide.
"""

from __future__ import annotations

import asyncio
import re
import signal
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from croniter import croniter

from omniq import Schedule
from omniq.identifiers import quote_identifier
from omniq.models._common import utcnow
from tests.support.jobs import read_trace
from tests.support.processes import wait_until

pytestmark = pytest.mark.timeout(90)


async def fired(db: Any, schedule_id: str) -> list[dict]:
    """The tasks a schedule fired, by due time."""
    rows = await db.rows("tasks", "metadata ->> 'schedule_id' = $1", schedule_id)
    return sorted(rows, key=lambda r: due_of(r["id"]))


def due_of(task_id: str) -> datetime:
    return datetime.fromisoformat(task_id.rsplit("@", 1)[1])


async def schedule_status(db: Any, schedule_id: str) -> str:
    return (await db.row("schedules", schedule_id))["status"]


async def wait_schedule(
    db: Any, schedule_id: str, status: str, timeout: float, process: Any
) -> None:
    async def reached() -> bool:
        return await schedule_status(db, schedule_id) == status

    await wait_until(reached, timeout, f"schedule {schedule_id} to be {status}", process)


async def psql(dsn: str, schema: str, sql: str) -> Any:
    """Run one statement the way a DBA would in psql: search_path set to OmniQ's schema."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"SET search_path TO {quote_identifier(schema)}")
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_interval_with_max_runs_and_one_shot_run_in_a_worker(
    backend, db, omniq, tmp_path
) -> None:
    path = str(tmp_path / "ticks.trace")
    worker = await omniq.worker()  # the scheduler runs inside `omniq worker` by default
    every = Schedule(
        func="tests.support.jobs.marker", args=(path, "tick"), interval_seconds=0.3, max_runs=3
    )
    once = Schedule(
        func="tests.support.jobs.marker",
        args=(path, "once"),
        timestamp=utcnow() + timedelta(seconds=0.5),
    )
    await backend.schedule_storage.save_schedule(every)
    await backend.schedule_storage.save_schedule(once)

    await wait_schedule(db, every.id, "completed", 10, worker)
    await wait_schedule(db, once.id, "completed", 10, worker)
    await asyncio.sleep(0.5)  # longer than the interval: nothing more fires
    tasks = await fired(db, every.id)
    assert [due_of(t["id"]) for t in tasks] == [
        every.created_at + timedelta(seconds=0.3 * k) for k in (1, 2, 3)
    ]
    (one,) = await fired(db, once.id)
    assert due_of(one["id"]) == once.timestamp

    async def all_done() -> bool:
        return all(
            t["status"] == "completed"
            for t in [*await fired(db, every.id), *await fired(db, once.id)]
        )

    await wait_until(all_done, 10, "the fired tasks to run", worker)
    assert sorted(what for what, _, _ in read_trace(path)) == ["once", "tick", "tick", "tick"]
    row = await db.row("schedules", every.id)
    assert row["run_count"] == 3 and row["last_run"] is not None
    assert (await db.row("schedules", once.id))["run_count"] == 1
    for task in tasks:
        assert task["queue_name"] == "default" and task["metadata"]["schedule_id"] == every.id
        assert (await db.events(task["id"]))[:2] in (
            ["scheduled", "enqueued"],
            ["enqueued", "scheduled"],
        )


async def test_cron_next_run_is_computed_in_utc(backend, db) -> None:
    # 23:59:30 at UTC+5 is 18:59:30 UTC: "0 19 * * *" means 19:00 UTC, thirty seconds later.
    created = datetime(2024, 1, 1, 23, 59, 30, tzinfo=timezone(timedelta(hours=5)))
    schedule = Schedule(
        func="tests.support.jobs.noop", cron_expression="0 19 * * *", created_at=created
    )
    assert schedule.next_run == datetime(2024, 1, 1, 19, 0, tzinfo=UTC)
    await backend.schedule_storage.save_schedule(schedule)
    row = await db.row("schedules", schedule.id)
    assert row["next_run"] == datetime(2024, 1, 1, 19, 0, tzinfo=UTC)
    assert row["schedule_type"] == "cron"

    # Long overdue: fires once (for its stale due time), then the next 19:00 UTC from now.
    assert await backend.schedule_storage.fire_due_schedules() == 1
    now = utcnow()
    row = await db.row("schedules", schedule.id)
    expected = croniter("0 19 * * *", now).get_next(datetime)
    assert row["next_run"] == expected and row["next_run"] > now
    assert row["next_run"].astimezone(UTC).hour == 19 and row["run_count"] == 1
    assert [t["id"] for t in await fired(db, schedule.id)] == [
        f"{schedule.id}@2024-01-01T19:00:00.000000Z"
    ]
    assert await backend.schedule_storage.fire_due_schedules() == 0


async def test_three_schedulers_fire_each_due_time_once(backend, db, omniq) -> None:
    schedulers = [omniq.start("scheduler") for _ in range(3)]
    for process in schedulers:
        await process.logged("scheduler started")
    interval, runs = 0.5, 6  # three seconds of due times
    schedule = Schedule(
        func="tests.support.jobs.noop", interval_seconds=interval, max_runs=runs, queue_name="ticks"
    )
    await backend.schedule_storage.save_schedule(schedule)
    await wait_schedule(db, schedule.id, "completed", runs * interval + 5, schedulers[0])
    await asyncio.sleep(2 * interval)

    tasks = await fired(db, schedule.id)
    dues = [due_of(t["id"]) for t in tasks]
    assert len(dues) == len(set(dues)) == runs  # no duplicates
    assert dues == [
        schedule.created_at + timedelta(seconds=interval * k) for k in range(1, runs + 1)
    ]  # no gaps
    scheduled = await db.rows(
        "events", "event_type = 'scheduled' AND schedule_id = $1", schedule.id
    )
    assert sorted(e["task_id"] for e in scheduled) == sorted(t["id"] for t in tasks)
    row = await db.row("schedules", schedule.id)
    assert row["run_count"] == runs
    lateness = [(t["created_at"] - due_of(t["id"])).total_seconds() for t in tasks]
    per_process = [
        sum(int(n) for n in re.findall(r"scheduler fired (\d+) task", p.output()))
        for p in schedulers
    ]
    assert sum(per_process) == runs
    print(
        f"\nthree schedulers, {runs} due times {interval} s apart: fired {per_process} each; "
        f"enqueued {min(lateness) * 1000:.0f}-{max(lateness) * 1000:.0f} ms after the due time"
    )


async def test_pause_resume_cancel_from_python_and_psql(backend, db, omniq, pg_dsn) -> None:
    schema, storage = backend.config.schema, backend.schedule_storage
    scheduler = omniq.start("scheduler")
    await scheduler.logged("scheduler started")
    schedule = Schedule(func="tests.support.jobs.noop", interval_seconds=0.2)
    await storage.save_schedule(schedule)

    async def count() -> int:
        return len(await fired(db, schedule.id))

    async def grows(n: int) -> None:
        async def more() -> bool:
            return await count() > n

        await wait_until(more, 3, f"more than {n} runs", scheduler)

    async def stays_paused(seconds: float) -> None:
        n = await count()
        await asyncio.sleep(seconds)
        assert await count() == n
        assert await schedule_status(db, schedule.id) == "paused"

    async def resumed_fires_once(resume: Any) -> None:
        """A resume fires the due time missed while paused once, then keeps the interval."""
        n, resumed_at = await count(), utcnow()
        assert await resume() is True
        await grows(n + 1)
        caught_up = [
            t
            for t in await fired(db, schedule.id)
            if t["created_at"] >= resumed_at and due_of(t["id"]) < resumed_at
        ]
        assert len(caught_up) == 1, caught_up

    await grows(1)
    sql = "SELECT omniq_{}_schedule('" + schedule.id + "')"
    assert await psql(pg_dsn, schema, sql.format("pause")) is True  # pause from psql
    await stays_paused(0.7)
    await resumed_fires_once(lambda: storage.resume_schedule(schedule.id))  # resume from Python
    assert await storage.pause_schedule(schedule.id)  # pause from Python
    await stays_paused(0.7)
    await resumed_fires_once(lambda: psql(pg_dsn, schema, sql.format("resume")))  # resume from psql

    other = Schedule(func="tests.support.jobs.noop", interval_seconds=0.4)
    await storage.save_schedule(other)
    assert await storage.cancel_schedule(other.id)  # cancel from Python
    assert await psql(pg_dsn, schema, sql.format("cancel")) is True  # cancel from psql
    n = await count()
    await asyncio.sleep(0.8)
    assert await count() == n and await fired(db, other.id) == []
    for cancelled in (schedule, other):
        assert await schedule_status(db, cancelled.id) == "cancelled"
        assert not await storage.resume_schedule(cancelled.id)  # cancelled for good
        assert await schedule_status(db, cancelled.id) == "cancelled"
    assert await psql(pg_dsn, schema, sql.format("pause")) is False


async def test_missed_window_fires_once_not_a_burst(backend, db, omniq) -> None:
    """Nothing ran for an hour of a one-minute schedule: one run for the stale due time, then the
    next due time after now, in phase with the schedule."""
    created = utcnow() - timedelta(hours=1)
    schedule = Schedule(func="tests.support.jobs.noop", interval_seconds=60, created_at=created)
    await backend.schedule_storage.save_schedule(schedule)
    scheduler = omniq.start("scheduler")
    await scheduler.logged("scheduler fired 1 task")
    await asyncio.sleep(1.0)

    (task,) = await fired(db, schedule.id)
    assert due_of(task["id"]) == created + timedelta(seconds=60)
    row = await db.row("schedules", schedule.id)
    assert row["run_count"] == 1 and row["status"] == "active"
    now = utcnow()
    assert now < row["next_run"] <= now + timedelta(seconds=60)
    assert (row["next_run"] - created) % timedelta(seconds=60) == timedelta(0)
    scheduler.send(signal.SIGTERM)
    assert await scheduler.exited(5) == 0, scheduler.output()


async def test_expiry_ends_schedules(backend, db, omniq) -> None:
    scheduler = omniq.start("scheduler")
    await scheduler.logged("scheduler started")
    # ttl 0.9 s, every 0.4 s: fires at 0.4 and 0.8; the following time is past its expiry.
    with_ttl = Schedule(func="tests.support.jobs.noop", interval_seconds=0.4, ttl_seconds=0.9)
    # Due long ago, expired a second ago: expires without firing.
    created = utcnow() - timedelta(seconds=10)
    past = Schedule(
        func="tests.support.jobs.noop",
        interval_seconds=1,
        created_at=created,
        expires_at=utcnow() - timedelta(seconds=1),
    )
    for schedule in (with_ttl, past):
        await backend.schedule_storage.save_schedule(schedule)
    await wait_schedule(db, past.id, "expired", 5, scheduler)
    await wait_schedule(db, with_ttl.id, "expired", 5, scheduler)
    await asyncio.sleep(0.5)

    assert await fired(db, past.id) == []
    assert (await db.row("schedules", past.id))["run_count"] == 0
    tasks = await fired(db, with_ttl.id)
    assert [due_of(t["id"]) for t in tasks] == [
        with_ttl.created_at + timedelta(seconds=0.4 * k) for k in (1, 2)
    ]
    assert (await db.row("schedules", with_ttl.id))["run_count"] == 2


@pytest.mark.parametrize("command", ["scheduler", "worker"])
async def test_one_bad_schedule_stops_neither_the_scheduler_nor_the_others(
    backend, db, omniq, command: str
) -> None:
    """Issue 9, defect 4: a schedule that cannot fire used to kill `omniq scheduler` with a
    traceback, and to end the scheduler inside `omniq worker` silently (the worker kept
    running; no schedule fired again). Now it is paused with its error, logged, and every
    other schedule keeps firing."""
    broken = Schedule(func="tests.support.jobs.noop", interval_seconds=3600, next_run=utcnow())
    await backend.schedule_storage.save_schedule(broken)
    await db.execute(
        "UPDATE {schedules} SET schedule_type = 'cron', cron_expression = 'at dawn',"
        " interval_seconds = NULL WHERE id = $1",
        broken.id,
    )
    process = omniq.start(command)
    await wait_schedule(db, broken.id, "paused", 20, process)
    await process.logged(f"schedule {broken.id} could not fire and was paused", 20)
    fine = Schedule(func="tests.support.jobs.noop", interval_seconds=0.3, max_runs=2)
    await backend.schedule_storage.save_schedule(fine)
    await wait_schedule(db, fine.id, "completed", 20, process)
    assert len(await fired(db, fine.id)) == 2
    assert process.alive(), process.output()
    assert "Traceback" not in process.output()
