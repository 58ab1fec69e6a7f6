"""Result storage (including ``wait``) and the event log, async and ``_sync``."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import WorkerProtocol
from omniq.errors import TaskNotFoundError
from omniq.models.event import TaskEvent
from omniq.models.result import TaskResult
from omniq.models.task import Task
from tests.support.db import Database
from tests.support.outcomes import outcome
from tests.support.waits import LONG, soon


def now() -> datetime:
    return datetime.now(UTC)


def naive_utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- results ---------------------------------------------------------------------------


async def test_result_round_trip_and_replace(backend: PostgreSQLBackend, db: Database) -> None:
    result = TaskResult(
        task_id="t1",
        status="success",
        result={"rows": [1, 2, {"x": None}], "text": "ü✓"},
        created_at=datetime(2030, 1, 1, 0, 0, 0, 1),  # naive: UTC
        started_at=datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC),
        completed_at=datetime(2030, 1, 1, 0, 0, 2, tzinfo=UTC),
        expires_at=datetime(2030, 1, 2, tzinfo=UTC),
        worker_id="w1",
        execution_time=1.5,
        memory_usage=2**40,
        metadata={"m": 1},
        result_data={"d": [True]},
    )
    await backend.result_storage.set(result)
    assert await backend.result_storage.get("t1") == result
    row = await db.row("results", "t1")
    assert row is not None and row["status"] == "success" and row["memory_usage"] == 2**40
    assert row["created_at"] == datetime(2030, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    assert row["result"] == {"rows": [1, 2, {"x": None}], "text": "ü✓"}
    replaced = TaskResult(task_id="t1", status="failure", error="boom", error_type="E")
    await backend.result_storage.set(replaced)
    assert await backend.result_storage.get("t1") == replaced
    assert await db.count("results") == 1
    assert await backend.result_storage.get("nope") is None


async def test_result_that_json_cannot_carry_is_refused(
    backend: PostgreSQLBackend, db: Database
) -> None:
    for bad in (object(), {1, 2}, float("nan"), "a\x00b", 2**65, datetime(2030, 1, 1)):
        with pytest.raises(TypeError):
            await backend.result_storage.set(TaskResult(task_id="t", result=bad))
    assert await db.count("results") == 0


async def test_list_results_filters_and_pages(backend: PostgreSQLBackend) -> None:
    base = datetime(2030, 3, 1)  # naive: UTC
    statuses = ["success", "failure", "success", "cancelled", "success", "expired"]
    for i, status in enumerate(statuses):
        await backend.result_storage.set(
            TaskResult(
                task_id=f"r{i}",
                status=status,
                worker_id="wa" if i < 3 else "wb",
                created_at=base + timedelta(hours=i),
            )
        )
    rs = backend.result_storage

    def ids(found: list[TaskResult]) -> list[str]:
        return [r.task_id for r in found]

    assert ids(await rs.list_results()) == ["r5", "r4", "r3", "r2", "r1", "r0"]
    assert ids(await rs.list_results(status="success", limit=10)) == ["r4", "r2", "r0"]
    assert ids(await rs.list_results(status=["failure", "expired"])) == ["r5", "r1"]
    assert ids(await rs.list_results(worker_id="wa")) == ["r2", "r1", "r0"]
    assert ids(await rs.list_results(created_after=base + timedelta(hours=4))) == ["r5", "r4"]
    before = base.replace(tzinfo=UTC) + timedelta(hours=1)
    assert ids(await rs.list_results(created_before=before)) == ["r0"]
    assert ids(await rs.list_results(status="success", worker_id="wb")) == ["r4"]
    assert ids(await rs.list_results(limit=2, offset=1)) == ["r4", "r3"]
    assert await rs.list_results(offset=6) == []
    with pytest.raises(ValueError):
        await rs.list_results(limit=-5)


async def test_delete_and_cleanup_expired_results(backend: PostgreSQLBackend, db: Database) -> None:
    rs = backend.result_storage
    await rs.set(TaskResult(task_id="gone1", expires_at=naive_utc_now() - timedelta(seconds=5)))
    await rs.set(TaskResult(task_id="gone2", expires_at=now() - timedelta(days=1)))
    await rs.set(TaskResult(task_id="later", expires_at=now() + timedelta(days=1)))
    await rs.set(TaskResult(task_id="forever"))
    assert await rs.cleanup_expired_results() == 2
    assert sorted(r["task_id"] for r in await db.rows("results")) == ["forever", "later"]
    assert await rs.cleanup_expired_results() == 0
    assert await rs.delete("later") is True
    assert await rs.delete("later") is False
    assert await db.count("results") == 1


async def test_wait_returns_as_soon_as_a_final_result_is_stored(
    backend: PostgreSQLBackend, make_backend
) -> None:
    other = await make_backend(dsn=backend.config.dsn, schema=backend.config.schema)
    rs = backend.result_storage

    async def store_later() -> None:
        await asyncio.sleep(0.3)
        await other.result_storage.set(TaskResult(task_id="w1", status="running"))
        await asyncio.sleep(0.3)
        await other.result_storage.set(TaskResult(task_id="w1", status="success", result=7))

    await backend.task_queue.enqueue(Task(func="m.f", id="w1"))  # wait() needs a task or a result
    writer = asyncio.ensure_future(store_later())
    # Woken by NOTIFY: it returns long before its own timeout (which would return it too).
    result = await soon(rs.wait("w1", timeout=LONG))
    await writer
    assert result is not None and result.status == "success" and result.result == 7
    # Already final: returns at once, even with a zero timeout.
    assert (await rs.wait("w1", timeout=0)) == result


async def test_wait_times_out_with_none(backend: PostgreSQLBackend) -> None:
    await backend.result_storage.set(TaskResult(task_id="slow", status="running"))
    started = time.perf_counter()
    assert await backend.result_storage.wait("slow", timeout=0.3) is None
    assert time.perf_counter() - started >= 0.3
    with pytest.raises(TaskNotFoundError):  # nothing to wait for: says so at once
        await backend.result_storage.wait("never-stored", timeout=10)


async def test_wait_is_woken_by_a_finished_task(
    backend: PostgreSQLBackend, protocol: WorkerProtocol
) -> None:
    task = Task(func="m.f")
    await backend.task_queue.enqueue(task)
    waiter = asyncio.ensure_future(backend.result_storage.wait(task.id, timeout=LONG))
    got = await backend.task_queue.dequeue(["default"])
    assert got is not None
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await protocol.finish([outcome(got, "success", "done")], None)
    result = await soon(waiter)  # woken by the finish's NOTIFY
    assert result is not None and result.result == "done" and result.status == "success"


def test_result_sync_methods(sync_backend: PostgreSQLBackend) -> None:
    rs = sync_backend.result_storage
    result = TaskResult(task_id="s1", status="success", result=[1], worker_id="w")
    rs.set_sync(result)
    assert rs.get_sync("s1") == result
    assert [r.task_id for r in rs.list_results_sync(status="success", limit=10)] == ["s1"]
    assert rs.wait_sync("s1", timeout=1) == result
    with pytest.raises(TaskNotFoundError):
        rs.wait_sync("missing", timeout=0.1)
    rs.set_sync(TaskResult(task_id="s2", expires_at=now() - timedelta(seconds=1)))
    assert rs.cleanup_expired_results_sync() == 1
    assert rs.delete_sync("s1") is True
    assert rs.list_results_sync() == []


# -- events ----------------------------------------------------------------------------


async def test_event_round_trip(backend: PostgreSQLBackend, db: Database) -> None:
    event = TaskEvent(
        task_id="t1",
        event_type="failed",
        timestamp=datetime(2030, 1, 1, 12),  # naive: UTC
        message="it broke",
        details={"attempt": 2},
        worker_id="w1",
        queue_name="q",
        schedule_id="s",
        error_type="ValueError",
        error_message="bad value",
        traceback="Traceback ...",
        execution_time=0.5,
        memory_usage=1024,
        metadata={"k": "v"},
        event_data={"raw": [1]},
    )
    await backend.event_storage.log_event(event)
    assert await backend.event_storage.get_events(task_id="t1") == [event]
    row = await db.row("events", event.id)
    assert row is not None and row["timestamp"] == datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert row["details"] == {"attempt": 2} and row["event_type"] == "failed"


async def test_log_events_batch_and_bad_input(backend: PostgreSQLBackend, db: Database) -> None:
    events = [TaskEvent(task_id=f"t{i}", event_type="enqueued") for i in range(25)]
    await backend.event_storage.log_events(events)
    await backend.event_storage.log_events([])
    assert await db.count("events") == 25
    with pytest.raises(TypeError):
        await backend.event_storage.log_events(
            [TaskEvent(task_id="ok", event_type="enqueued"),
             TaskEvent(task_id="bad", event_type="enqueued", details={"x": {1, 2}})]
        )  # fmt: skip
    assert await db.count("events") == 25


async def test_get_events_filters_and_pages(backend: PostgreSQLBackend) -> None:
    base = datetime(2030, 5, 1, tzinfo=UTC)
    kinds = ["enqueued", "dequeued", "completed", "enqueued", "failed", "retry"]
    await backend.event_storage.log_events(
        TaskEvent(
            id=f"e{i}",
            task_id="ta" if i < 3 else "tb",
            event_type=kind,
            queue_name="q1" if i % 2 else "q2",
            worker_id="w" if kind != "enqueued" else None,
            timestamp=base + timedelta(minutes=i),
        )
        for i, kind in enumerate(kinds)
    )
    es = backend.event_storage

    def ids(found: list[TaskEvent]) -> list[str]:
        return [e.id for e in found]

    assert ids(await es.get_events()) == ["e5", "e4", "e3", "e2", "e1", "e0"]
    assert ids(await es.get_events(task_id="ta", limit=10)) == ["e2", "e1", "e0"]
    assert ids(await es.get_events(event_type="enqueued")) == ["e3", "e0"]
    assert ids(await es.get_events(event_type=["failed", "retry"])) == ["e5", "e4"]
    assert ids(await es.get_events(queue_name="q1")) == ["e5", "e3", "e1"]
    assert ids(await es.get_events(worker_id="w", task_id="tb")) == ["e5", "e4"]
    assert ids(await es.get_events(after=datetime(2030, 5, 1, 0, 4))) == ["e5", "e4"]
    assert ids(await es.get_events(before=base + timedelta(minutes=1))) == ["e0"]
    assert ids(await es.get_events(limit=100, offset=0)) == ids(await es.get_events())
    assert ids(await es.get_events(limit=2, offset=2)) == ["e3", "e2"]
    with pytest.raises(ValueError):
        await es.get_events(offset=-1)


async def test_cleanup_old_events(backend: PostgreSQLBackend, db: Database) -> None:
    old = now() - timedelta(days=40)
    await backend.event_storage.log_events(
        [TaskEvent(task_id="t", event_type="enqueued", timestamp=old) for _ in range(4)]
        + [TaskEvent(task_id="t", event_type="completed")]
    )
    cutoff = naive_utc_now() - timedelta(days=30)  # the specification's datetime.utcnow() form
    assert await backend.event_storage.cleanup_old_events(cutoff) == 4
    assert await db.count("events") == 1
    assert await backend.event_storage.cleanup_old_events(cutoff) == 0


def test_event_sync_methods(sync_backend: PostgreSQLBackend) -> None:
    es = sync_backend.event_storage
    event = TaskEvent(task_id="t1", event_type="enqueued")
    es.log_event_sync(event)
    es.log_events_sync([TaskEvent(task_id="t2", event_type="completed")])
    assert es.get_events_sync(task_id="t1", limit=10) == [event]
    assert len(es.get_events_sync()) == 2
    assert es.cleanup_old_events_sync(now() + timedelta(seconds=1)) == 2
    assert es.get_events_sync() == []
