"""The LISTEN path: blocking dequeue wakes on NOTIFY, stays silent while idle, survives a
killed LISTEN connection, and wakes itself for delayed tasks.

Timings are measured and reported, but asserted only against generous bounds (< 2 s): the
point is "woken by NOTIFY, not by the timeout", never a speed benchmark.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import WorkerProtocol
from omniq.models.config import PostgresConfig
from omniq.models.task import Task
from tests.support.db import drop_schemas, unique_schema
from tests.support.outcomes import outcome
from tests.support.waits import LONG, soon


def now() -> datetime:
    return datetime.now(UTC)


async def same_schema(make_backend, backend: PostgreSQLBackend, **kw: Any) -> PostgreSQLBackend:
    """A second backend (own pool, own LISTEN connection) on the same installation."""
    return await make_backend(dsn=backend.config.dsn, schema=backend.config.schema, **kw)


async def waiting(coro) -> asyncio.Future:
    """Start a blocking call and give it time to LISTEN, look, and start waiting."""
    future = asyncio.ensure_future(coro)
    await asyncio.sleep(0.15)
    assert not future.done(), "returned before anything was enqueued"
    return future


async def test_blocking_dequeue_wakes_on_enqueue_from_another_connection(
    backend: PostgreSQLBackend, make_backend, record_property
) -> None:
    producer = await same_schema(make_backend, backend)
    latencies = []
    for i in range(7):
        waiter = await waiting(backend.task_queue.dequeue(["default"], timeout=LONG))
        task = Task(func="m.f", args=(i,))
        started = time.perf_counter()
        await producer.task_queue.enqueue(task)
        got = await soon(waiter)
        latencies.append(time.perf_counter() - started)
        assert got is not None and got.id == task.id and got.status == "running"
    median_ms = statistics.median(latencies) * 1000
    record_property("wakeup_median_ms", round(median_ms, 2))
    print(f"\nenqueue -> blocking dequeue returned: median {median_ms:.2f} ms, "
          f"all {[round(x * 1000, 2) for x in latencies]} ms")  # fmt: skip


async def test_blocking_dequeue_times_out_with_none(backend: PostgreSQLBackend) -> None:
    started = time.perf_counter()
    assert await soon(backend.task_queue.dequeue(["default"], timeout=0.5)) is None
    assert time.perf_counter() - started >= 0.45  # not before its timeout
    assert await backend.task_queue.dequeue_many(["default"], 3, timeout=0.1) == []


async def test_blocking_dequeue_returns_ready_task_at_once(backend: PostgreSQLBackend) -> None:
    task = Task(func="m.f")
    await backend.task_queue.enqueue(task)
    got = await soon(backend.task_queue.dequeue(["default"], timeout=LONG))
    assert got is not None and got.id == task.id


async def test_waiter_ignores_other_queues(backend: PostgreSQLBackend, make_backend) -> None:
    producer = await same_schema(make_backend, backend)
    waiter = await waiting(backend.task_queue.dequeue(["a"], timeout=0.8))
    await producer.task_queue.enqueue(Task(func="m.f", queue_name="b"))
    assert await waiter is None
    assert await backend.task_queue.get_queue_size("b") == 1


async def test_an_enqueue_notifies_each_queue_that_got_pending_tasks_once_at_commit(
    backend: PostgreSQLBackend, raw: Any
) -> None:
    """omniq_insert_tasks sends the wake-ups (migration 0017): one per queue with pending
    tasks, however many rows, none for a queue that got only waiting tasks, at commit only;
    omniq_enqueue_one_v1 (enqueue() of one plain task, migration 0018) sends its queue's."""
    listening = await raw()
    heard: list[str] = []
    channel = await listening.fetchval("SELECT omniq_channel('tasks')")
    await listening.add_listener(channel, lambda *a: heard.append(a[3]))
    parent = Task(func="m.f", queue_name="a")
    batch = [parent, *(Task(func="m.f", queue_name="a") for _ in range(50))]
    batch += [Task(func="m.f", queue_name="b", run_at=now() + timedelta(minutes=5))]  # delayed
    batch += [Task(func="m.f", queue_name="c", dependencies=[parent])]  # waiting
    producer = await raw()
    async with producer.transaction():
        await backend.task_queue.enqueue_many(batch, connection=producer)
        await backend.task_queue.enqueue(Task(func="m.f", queue_name="d"), connection=producer)
        await backend.task_queue.enqueue(Task(func="m.f", queue_name="a"), connection=producer)
        await listening.execute("SELECT 1")  # a round trip: anything sent so far arrives
        await asyncio.sleep(0)
        assert heard == []  # nothing before the commit
    await listening.execute("SELECT 1")
    await asyncio.sleep(0)
    assert sorted(heard) == ["a", "b", "d"]  # PostgreSQL folds the second 'a' into the first


async def test_many_waiters_each_get_one_task(backend: PostgreSQLBackend, make_backend) -> None:
    producer = await same_schema(make_backend, backend)
    consumer = await same_schema(make_backend, backend)
    waiters = [
        asyncio.ensure_future(b.task_queue.dequeue(["default"], timeout=LONG))
        for b in (backend, backend, consumer, consumer)
    ]
    await asyncio.sleep(0.2)
    tasks = [Task(func="m.f") for _ in range(4)]
    await producer.task_queue.enqueue_many(tasks)
    got = await soon(asyncio.gather(*waiters))
    assert sorted(t.id for t in got) == sorted(t.id for t in tasks)


async def test_wakes_for_a_delayed_task_when_it_falls_due(
    backend: PostgreSQLBackend, make_backend
) -> None:
    producer = await same_schema(make_backend, backend)
    # Enqueued before the wait starts: the waiter sleeps until run_at, not until the timeout.
    early = Task(func="m.f", run_at=now() + timedelta(seconds=0.6))
    await producer.task_queue.enqueue(early)
    started = time.perf_counter()
    got = await soon(backend.task_queue.dequeue(["default"], timeout=LONG))
    assert got is not None and got.id == early.id
    assert time.perf_counter() - started >= 0.4  # not before run_at
    # Enqueued during the wait: its NOTIFY arrives early, the waiter then sleeps until run_at.
    waiter = await waiting(backend.task_queue.dequeue(["default"], timeout=LONG))
    late = Task(func="m.f", run_at=now() + timedelta(seconds=0.6))
    started = time.perf_counter()
    await producer.task_queue.enqueue(late)
    got = await soon(waiter)
    assert got is not None and got.id == late.id
    assert time.perf_counter() - started >= 0.4  # not before run_at


async def test_listener_is_a_dedicated_connection(
    backend: PostgreSQLBackend, admin: asyncpg.Connection
) -> None:
    listener = await backend.listener()
    assert listener is await backend.listener()  # one per backend
    pid = listener.backend_pid
    assert pid is not None
    name = await admin.fetchval("SELECT application_name FROM pg_stat_activity WHERE pid = $1", pid)
    assert name == "omniq-listener"
    async with backend.acquire() as conn:
        assert conn.get_server_pid() != pid


async def _has_pg_stat_statements(admin: asyncpg.Connection) -> bool:
    try:
        await admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await admin.fetchval("SELECT count(*) FROM pg_stat_statements")
    except asyncpg.PostgresError:
        return False
    return True


async def _statements(admin: asyncpg.Connection, schema: str) -> int:
    """Statements run so far that name this installation's schema: every OmniQ query does,
    since each is schema-qualified; other tests' and the monitoring's statements don't."""
    return await admin.fetchval(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND strpos(query, $1) > 0",
        f'"{schema}"',
    )


async def _activity(admin: asyncpg.Connection, app: str) -> dict[int, tuple]:
    rows = await admin.fetch(
        "SELECT pid, application_name, state, query_start, state_change, xact_start "
        "FROM pg_stat_activity WHERE application_name IN ($1, $1 || '-listener')",
        app,
    )
    return {r["pid"]: tuple(r.values())[1:] for r in rows}


async def test_idle_wait_sends_no_statements(
    make_backend, admin: asyncpg.Connection, record_property
) -> None:
    app = f"idle-{uuid.uuid4().hex[:8]}"
    b = await make_backend(application_name=app, min_connections=2, max_connections=4)
    use_pss = await _has_pg_stat_statements(admin)
    waiter = await waiting(b.task_queue.dequeue(["default"], timeout=10))
    await asyncio.sleep(0.2)
    before = await _activity(admin, app)
    assert len(before) >= 2, before  # the pool's connections and the LISTEN connection
    assert {row[0] for row in before.values()} == {app, app + "-listener"}
    count_before = await _statements(admin, b.config.schema) if use_pss else 0
    await asyncio.sleep(3)
    after = await _activity(admin, app)
    count_after = await _statements(admin, b.config.schema) if use_pss else 0
    assert not waiter.done()
    record_property("idle_statements_3s", count_after - count_before)
    print(f"\nstatements during a 3 s idle wait: {count_after - count_before} "
          f"(pg_stat_statements: {'yes' if use_pss else 'unavailable'})")  # fmt: skip
    assert after == before  # no connection started a statement or transaction
    assert all(row[1] == "idle" for row in after.values()), after
    if use_pss:
        assert count_after == count_before
    # The counters do see the waiter when something happens.
    await b.task_queue.enqueue(Task(func="m.f"))
    assert await asyncio.wait_for(waiter, 5) is not None
    if use_pss:
        assert await _statements(admin, b.config.schema) > count_after
    assert await _activity(admin, app) != before


async def test_listener_reconnects_after_pg_terminate_backend(
    backend: PostgreSQLBackend, make_backend, admin: asyncpg.Connection
) -> None:
    producer = await same_schema(make_backend, backend)
    listener = await backend.listener()
    old_pid = listener.backend_pid
    waiter = await waiting(backend.task_queue.dequeue(["default"], timeout=LONG))
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid) is True
    for _ in range(200):
        if listener.backend_pid not in (None, old_pid):
            break
        await asyncio.sleep(0.025)
    new_pid = listener.backend_pid
    assert new_pid not in (None, old_pid)
    assert listener.reconnects == 1
    assert (
        await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", old_pid) == 0
    )
    await asyncio.sleep(0.2)
    assert not waiter.done()  # woken to look again, found nothing, waits on
    task = Task(func="m.f")
    await producer.task_queue.enqueue(task)
    got = await soon(waiter)  # woken through the new connection
    assert got is not None and got.id == task.id
    # A later wait uses the new connection as well.
    waiter = await waiting(backend.task_queue.dequeue(["default"], timeout=LONG))
    await producer.task_queue.enqueue(Task(func="m.g"))
    assert (await soon(waiter)).func == "m.g"  # type: ignore[union-attr]


async def test_task_enqueued_while_listener_is_down_is_found(
    backend: PostgreSQLBackend, make_backend, admin: asyncpg.Connection
) -> None:
    producer = await same_schema(make_backend, backend)
    listener = await backend.listener()
    waiter = await waiting(backend.task_queue.dequeue(["default"], timeout=LONG))
    task = Task(func="m.f")
    await admin.fetchval("SELECT pg_terminate_backend($1)", listener.backend_pid)
    await producer.task_queue.enqueue(task)  # its NOTIFY may well be lost
    got = await soon(waiter)  # the reconnected listener looks again
    assert got is not None and got.id == task.id


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_blocking_dequeue_sync_variant(
    sync: bool, backend: PostgreSQLBackend, make_backend
) -> None:
    producer = await same_schema(make_backend, backend)
    if sync:
        # Called from a worker thread while this loop (the backend's own) keeps running.
        call = asyncio.to_thread(backend.task_queue.dequeue_sync, ["default"], LONG)
    else:
        call = backend.task_queue.dequeue(["default"], LONG)
    waiter = await waiting(call)
    task = Task(func="m.f")
    await producer.task_queue.enqueue(task)
    got = await soon(waiter)
    assert got is not None and got.id == task.id


async def test_close_releases_blocked_waiters_without_reopening(pg_dsn: str) -> None:
    schema = unique_schema()
    backend = PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=schema))
    await backend.connect()
    try:
        dequeuing = await waiting(backend.task_queue.dequeue(["default"], timeout=LONG))
        parked = await backend.task_queue.enqueue(Task(func="m.f", queue_name="parked"))
        result_wait = await waiting(backend.result_storage.wait(parked, timeout=LONG))
        await backend.close()
        assert await soon(dequeuing) is None  # released by the close, not by the timeout
        assert await soon(result_wait) is None
        await asyncio.sleep(0.1)
        assert "closed" in repr(backend)  # the waiters did not open a new pool
    finally:
        await backend.close()
        await drop_schemas(pg_dsn, schema)


# -- result_storage.wait when there is nothing to wait for (issue 10, defect 7) ----------------


async def test_wait_for_an_unknown_task_fails_at_once(backend: PostgreSQLBackend) -> None:
    with pytest.raises(LookupError) as info:  # it used to wait forever
        await soon(backend.result_storage.wait("no-such-task"))
    assert type(info.value).__name__ == "TaskNotFoundError"
    assert "no task and no result with id 'no-such-task'" in str(info.value)


async def test_wait_for_a_finished_task_whose_result_was_cleaned_up_returns_none_at_once(
    backend: PostgreSQLBackend,
) -> None:
    """The result of a finished task was deleted (result_ttl and cleanup, or delete): waiting
    for it returns None at once instead of waiting for a result that never comes. An expired
    result stays readable until the cleanup deletes it."""
    queue, results = backend.task_queue, backend.result_storage
    task = Task(func="m.f", result_ttl=0.01)
    await queue.enqueue(task)
    (taken,) = await queue.dequeue_many(["default"], 1, worker_id="w")
    await WorkerProtocol(backend).finish([outcome(taken, "success", 7)], "w")
    await asyncio.sleep(0.05)  # past its result_ttl
    kept = await results.get(task.id)
    assert kept is not None and kept.result == 7 and kept.expires_at <= now()
    assert (await results.wait(task.id, timeout=1)).result == 7  # visible until cleaned up

    assert await results.cleanup_expired_results() >= 1
    assert await results.get(task.id) is None
    assert await soon(results.wait(task.id)) is None  # no timeout: it would wait forever
