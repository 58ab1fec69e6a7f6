"""Schedule storage: save/get/list, pause/resume/cancel, ready and firing, cleanup."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.identifiers import quote_identifier
from omniq.models.schedule import Schedule
from tests.support.db import Database


def now() -> datetime:
    return datetime.now(UTC)


def due_interval(seconds: float = 60, **kw) -> Schedule:
    """An interval schedule whose first run is already due."""
    return Schedule(
        func="m.tick",
        interval_seconds=seconds,
        created_at=now() - timedelta(seconds=seconds + 1),
        **kw,
    )


async def test_schedule_round_trip_and_replace(backend: PostgreSQLBackend, db: Database) -> None:
    schedule = Schedule(
        func="reports.daily",
        cron_expression="0 3 * * *",
        args=(1, "x"),
        kwargs={"k": [1]},
        queue_name="reports",
        max_runs=10,
        ttl_seconds=86400,
        metadata={"team": "data"},
        priority=5,
        max_retries=1,
        retry_delay=2.0,
        timeout=30.0,
        created_at=datetime(2030, 1, 1, 12),  # naive: UTC
    )
    assert await backend.schedule_storage.save_schedule(schedule) == schedule.id
    assert await backend.schedule_storage.get_schedule(schedule.id) == schedule
    row = await db.row("schedules", schedule.id)
    assert row is not None
    assert row["schedule_type"] == "cron" and row["cron_expression"] == "0 3 * * *"
    assert row["next_run"] == datetime(2030, 1, 2, 3, tzinfo=UTC)
    assert row["expires_at"] == datetime(2030, 1, 2, 12, tzinfo=UTC)
    assert row["args"] == [1, "x"] and row["kwargs"] == {"k": [1]}
    assert row["schedule_data"] == {
        "priority": 5,
        "max_retries": 1,
        "retry_delay": 2.0,
        "timeout": 30.0,
    }
    schedule.queue_name = "other"
    schedule.max_runs = 3
    await backend.schedule_storage.save_schedule(schedule)
    assert await backend.schedule_storage.get_schedule(schedule.id) == schedule
    assert await db.count("schedules") == 1
    assert await backend.schedule_storage.get_schedule("missing") is None
    with pytest.raises(TypeError):
        await backend.schedule_storage.save_schedule(
            Schedule(func="m.f", interval_seconds=5, args=(object(),))
        )
    assert await db.count("schedules") == 1


async def test_list_schedules_filters_and_pages(backend: PostgreSQLBackend) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    ss = backend.schedule_storage
    await ss.save_schedule(
        Schedule(id="c1", func="m.a", cron_expression="0 * * * *", created_at=base)
    )
    await ss.save_schedule(Schedule(id="i1", func="m.b", interval_seconds=30, created_at=base))
    await ss.save_schedule(
        Schedule(id="t1", func="m.a", timestamp=base + timedelta(days=1), queue_name="q2")
    )
    await ss.save_schedule(
        Schedule(id="i2", func="m.a", interval_seconds=7200, created_at=base, status="paused")
    )

    def ids(found: list[Schedule]) -> list[str]:
        return [s.id for s in found]

    assert ids(await ss.list_schedules()) == ["i1", "c1", "i2", "t1"]  # soonest next_run first
    assert ids(await ss.list_schedules(status="paused")) == ["i2"]
    assert ids(await ss.list_schedules(status=["active", "paused"], limit=2)) == ["i1", "c1"]
    assert ids(await ss.list_schedules(schedule_type="interval")) == ["i1", "i2"]
    assert ids(await ss.list_schedules(queue_name="q2")) == ["t1"]
    assert ids(await ss.list_schedules(func="m.a", status="active")) == ["c1", "t1"]
    assert ids(await ss.list_schedules(limit=2, offset=2)) == ["i2", "t1"]
    with pytest.raises(ValueError):
        await ss.list_schedules(limit=-1)


async def test_pause_resume_cancel_delete(backend: PostgreSQLBackend, db: Database) -> None:
    ss = backend.schedule_storage
    schedule = due_interval()
    await ss.save_schedule(schedule)
    assert await ss.pause_schedule(schedule.id) is True
    assert (await ss.get_schedule(schedule.id)).status == "paused"  # type: ignore[union-attr]
    assert await ss.get_ready_schedules() == []
    assert await ss.fire_due_schedules() == 0
    assert await ss.resume_schedule(schedule.id) is True
    assert [s.id for s in await ss.get_ready_schedules()] == [schedule.id]  # missed: due at once
    assert await ss.cancel_schedule(schedule.id) is True
    assert (await db.row("schedules", schedule.id))["status"] == "cancelled"  # type: ignore[index]
    assert await ss.resume_schedule(schedule.id) is False  # cancelled is final
    assert await ss.pause_schedule("missing") is False
    assert await ss.delete_schedule(schedule.id) is True
    assert await ss.delete_schedule(schedule.id) is False
    assert await db.count("schedules") == 0


async def test_get_ready_schedules_reads_without_firing(
    backend: PostgreSQLBackend, db: Database
) -> None:
    ss = backend.schedule_storage
    ready = due_interval()
    future = Schedule(func="m.f", interval_seconds=3600)
    await ss.save_schedule(ready)
    await ss.save_schedule(future)
    got = await ss.get_ready_schedules()
    assert [s.id for s in got] == [ready.id]
    assert await ss.get_ready_schedules(limit=0) == []
    assert (await db.row("schedules", ready.id))["run_count"] == 0  # type: ignore[index]
    assert await db.count("tasks") == 0
    assert await ss.next_schedule_at() == ready.next_run


async def test_fire_due_schedules_enqueues_once_and_advances(
    backend: PostgreSQLBackend, db: Database
) -> None:
    ss = backend.schedule_storage
    schedule = due_interval(60, args=(1,), kwargs={"k": 2}, queue_name="sched", priority=4)
    await ss.save_schedule(schedule)
    assert await ss.fire_due_schedules() == 1
    assert await ss.fire_due_schedules() == 0  # advanced: not due again yet
    tasks = await db.rows("tasks")
    assert len(tasks) == 1
    task = tasks[0]
    assert task["id"].startswith(schedule.id + "@")
    assert task["func"] == "m.tick" and task["args"] == [1] and task["kwargs"] == {"k": 2}
    assert task["queue_name"] == "sched" and task["priority"] == 4
    assert task["metadata"]["schedule_id"] == schedule.id
    fired = await ss.get_schedule(schedule.id)
    assert fired is not None and fired.run_count == 1 and fired.last_run is not None
    assert fired.next_run is not None and now() < fired.next_run <= now() + timedelta(seconds=60)
    assert fired.status == "active"
    assert (
        await db.count("events", "event_type = 'scheduled' AND schedule_id = $1", schedule.id) == 1
    )
    assert await backend.task_queue.get_queue_size("sched") == 1


async def test_fire_completes_one_shot_and_max_runs_and_expires(
    backend: PostgreSQLBackend, db: Database
) -> None:
    ss = backend.schedule_storage
    once = Schedule(func="m.once", timestamp=now() - timedelta(seconds=1))
    limited = due_interval(30, max_runs=1)
    expired = due_interval(30, expires_at=now() - timedelta(seconds=1))
    for s in (once, limited, expired):
        await ss.save_schedule(s)
    assert await ss.fire_due_schedules() == 2
    assert (await ss.get_schedule(once.id)).status == "completed"  # type: ignore[union-attr]
    assert (await ss.get_schedule(limited.id)).status == "completed"  # type: ignore[union-attr]
    assert (await ss.get_schedule(expired.id)).status == "expired"  # type: ignore[union-attr]
    assert await db.count("tasks") == 2
    assert await db.count("tasks", "metadata->>'schedule_id' = $1", expired.id) == 0
    assert await ss.cleanup_expired_schedules() == 1
    assert await ss.get_schedule(expired.id) is None
    assert await ss.cleanup_expired_schedules() == 0


async def test_concurrent_firing_fires_each_due_time_once(
    backend: PostgreSQLBackend, make_backend, db: Database
) -> None:
    others = [
        await make_backend(dsn=backend.config.dsn, schema=backend.config.schema) for _ in range(3)
    ]
    schedules = [due_interval(3600) for _ in range(20)]
    for s in schedules:
        await backend.schedule_storage.save_schedule(s)
    fired = await asyncio.gather(
        backend.schedule_storage.fire_due_schedules(limit=5),
        *(b.schedule_storage.fire_due_schedules(limit=5) for b in others),
        backend.schedule_storage.fire_due_schedules(limit=5),
    )
    total = sum(fired)
    while (more := await backend.schedule_storage.fire_due_schedules(limit=5)) > 0:
        total += more
    assert total == 20
    assert await db.count("tasks") == 20
    assert await db.count("schedules", "run_count = 1") == 20


# -- issue 9, defect 4: one bad schedule never jams itself or the others ----------------------


def fire_id(schedule: Schedule) -> str:
    assert schedule.next_run is not None
    return f"{schedule.id}@{schedule.next_run.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


async def test_a_fire_id_taken_already_does_not_jam_the_schedule(
    backend: PostgreSQLBackend, db: Database
) -> None:
    """A repeated due time, or a row that took the fired task's id first, used to raise a
    duplicate key: every schedule of the batch failed and next_run never moved again."""
    ss = backend.schedule_storage
    taken, other = due_interval(60), due_interval(60)
    for schedule in (taken, other):
        await ss.save_schedule(schedule)
    await db.execute(
        "INSERT INTO {tasks} (id, queue_name, func, args, kwargs, created_at, task_data)"
        " VALUES ($1, 'default', 'm.squat', '[]', '{{}}', now(), '{{}}')",
        fire_id(taken),
    )
    assert await ss.fire_due_schedules() == 1  # `other` fired; `taken`'s due time was there
    for schedule in (taken, other):
        after = await ss.get_schedule(schedule.id)
        assert after is not None and after.status == "active" and after.run_count == 1
        assert after.next_run is not None and after.next_run > now()
    assert (await db.row("tasks", fire_id(taken)))["func"] == "m.squat"  # type: ignore[index]
    assert await ss.fire_due_schedules() == 0


async def test_a_schedule_that_cannot_fire_is_paused_and_the_others_fire(
    backend: PostgreSQLBackend, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A row no next time can be computed for (a cron expression written by hand) used to
    raise in Python and fail the whole batch: no schedule fired again."""
    ss = backend.schedule_storage
    broken, fine = due_interval(60), due_interval(60)
    for schedule in (broken, fine):
        await ss.save_schedule(schedule)
    await db.execute(
        "UPDATE {schedules} SET schedule_type = 'cron', cron_expression = 'every full moon',"
        " interval_seconds = NULL WHERE id = $1",
        broken.id,
    )
    assert await ss.fire_due_schedules() == 1
    paused = await ss.get_schedule(broken.id)
    assert paused is not None and paused.status == "paused" and paused.run_count == 0
    assert "cannot compute its next run" in paused.schedule_data["last_error"]
    assert f"schedule {broken.id} could not fire and was paused" in caplog.text
    assert (await ss.get_schedule(fine.id)).run_count == 1  # type: ignore[union-attr]
    assert await ss.resume_schedule(broken.id)  # resumed: the error is forgotten
    assert "last_error" not in (await ss.get_schedule(broken.id)).schedule_data  # type: ignore[union-attr]


async def test_the_database_refuses_a_next_run_not_later_than_the_due_time(
    backend: PostgreSQLBackend, db: Database
) -> None:
    ss = backend.schedule_storage
    schedule = due_interval(60)
    await ss.save_schedule(schedule)
    sql = f"SELECT * FROM {quote_identifier(db.schema)}.omniq_fire_schedules_v1($1, $2)"  # noqa: S608
    async with db.conn.transaction():
        rows = await db.conn.fetch(sql, [schedule.id], [schedule.next_run])
    assert [(r["schedule_id"], r["task_id"]) for r in rows] == [(schedule.id, None)]
    assert "not later than the due time" in rows[0]["error"]
    assert (await ss.get_schedule(schedule.id)).status == "paused"  # type: ignore[union-attr]
    assert await db.count("tasks") == 0


async def test_next_run_comes_from_the_database_clock(
    backend: PostgreSQLBackend, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the scheduler host's clock two hours behind the database's, the following cron
    time used to be computed from the host's clock: two hours in the past."""
    import omniq.backend.postgres.schedules as storage_module
    import omniq.models.schedule as schedule_module

    behind = lambda: datetime.now(UTC) - timedelta(hours=2)  # noqa: E731
    ss = backend.schedule_storage
    schedule = Schedule(func="m.tick", cron_expression="*/5 * * * *",
                        next_run=now() - timedelta(seconds=1))  # fmt: skip
    await ss.save_schedule(schedule)
    monkeypatch.setattr(storage_module, "utcnow", behind, raising=False)
    monkeypatch.setattr(schedule_module, "utcnow", behind)
    assert await ss.fire_due_schedules() == 1
    after = await ss.get_schedule(schedule.id)
    assert after is not None and after.next_run is not None
    assert now() < after.next_run <= now() + timedelta(minutes=5)


async def test_cleanup_expired_schedules_by_ttl(backend: PostgreSQLBackend, db: Database) -> None:
    ss = backend.schedule_storage
    old = now() - timedelta(hours=2)
    await ss.save_schedule(
        Schedule(func="m.f", interval_seconds=9999, created_at=old, ttl_seconds=60)
    )
    paused = Schedule(
        func="m.f", interval_seconds=9999, created_at=old, ttl_seconds=60, status="paused"
    )
    await ss.save_schedule(paused)
    await ss.save_schedule(Schedule(func="m.f", interval_seconds=60, ttl_seconds=3600))
    assert await ss.cleanup_expired_schedules() == 2
    assert await db.count("schedules") == 1


def test_schedule_sync_methods(sync_backend: PostgreSQLBackend) -> None:
    ss = sync_backend.schedule_storage
    schedule = due_interval(60)
    assert ss.save_schedule_sync(schedule) == schedule.id
    assert ss.get_schedule_sync(schedule.id) == schedule
    assert [s.id for s in ss.get_ready_schedules_sync()] == [schedule.id]
    assert [s.id for s in ss.list_schedules_sync(status="active")] == [schedule.id]
    assert ss.next_schedule_at_sync() == schedule.next_run
    assert ss.pause_schedule_sync(schedule.id) is True
    assert ss.resume_schedule_sync(schedule.id) is True
    assert ss.fire_due_schedules_sync() == 1
    assert sync_backend.task_queue.get_queue_size_sync("default") == 1
    assert ss.cancel_schedule_sync(schedule.id) is True
    gone = Schedule(func="m.f", interval_seconds=5, expires_at=now() - timedelta(seconds=1))
    ss.save_schedule_sync(gone)
    assert ss.cleanup_expired_schedules_sync() == 1
    assert ss.delete_schedule_sync(schedule.id) is True
    assert ss.list_schedules_sync() == []
