"""Transactional enqueue: a task written in the caller's transaction exists, and wakes
workers, only once that transaction commits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.errors import DuplicateTaskError
from omniq.models.task import Task
from tests.support.db import Database, unique_schema
from tests.support.waits import LONG, soon


@pytest.fixture
async def caller(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The application's own asyncpg connection (no OmniQ codecs, default search_path)."""
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def test_enqueue_is_invisible_and_silent_until_commit(
    backend: PostgreSQLBackend, caller: asyncpg.Connection, db: Database
) -> None:
    waiter = asyncio.ensure_future(backend.task_queue.dequeue(["default"], timeout=LONG))
    await asyncio.sleep(0.15)
    listener = await backend.listener()
    task = Task(func="orders.confirm", args=(42,))
    transaction = caller.transaction()
    await transaction.start()
    with listener.watch("tasks") as notified:  # sees every NOTIFY of this installation
        notified.clear()
        try:
            assert await backend.task_queue.enqueue(task, connection=caller) == task.id
            # Visible inside the caller's transaction ...
            inside = f"SELECT count(*) FROM {db.table('tasks')}"  # noqa: S608
            assert await caller.fetchval(inside) == 1
            # ... but nowhere else, and no NOTIFY went out.
            assert await notified.wait(0.5) is False
            assert not waiter.done()
            assert await backend.task_queue.get_task(task.id) is None
            assert await db.count("tasks") == 0
            assert await db.count("events") == 0
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
        assert await soon(notified.wait(LONG)) is True
    got = await soon(waiter)  # woken by the commit's NOTIFY, not by its timeout
    assert got is not None and got.id == task.id and got.args == (42,)
    assert await db.events(task.id) == ["enqueued", "dequeued"]


async def test_enqueue_many_rolled_back_leaves_nothing(
    backend: PostgreSQLBackend, caller: asyncpg.Connection, db: Database
) -> None:
    waiter = asyncio.ensure_future(backend.task_queue.dequeue(["default"], timeout=1.0))
    await asyncio.sleep(0.15)
    tasks = [Task(func="m.f", args=(i,)) for i in range(5)]
    listener = await backend.listener()
    with listener.watch("tasks") as notified:
        notified.clear()
        with pytest.raises(RuntimeError, match="application failed"):
            async with caller.transaction():
                await backend.task_queue.enqueue_many(tasks, connection=caller)
                raise RuntimeError("application failed")
        assert await notified.wait(0.3) is False  # a rolled-back NOTIFY is never sent
    assert await waiter is None  # never woken with work, timed out
    assert await db.count("tasks") == 0
    assert await db.count("events") == 0
    assert await backend.task_queue.get_queue_size() == 0
    # The same ids can be used afterwards: nothing of the rolled-back batch remains.
    assert await backend.task_queue.enqueue_many(tasks) == [t.id for t in tasks]


async def test_enqueue_joins_the_callers_other_writes(
    backend: PostgreSQLBackend, caller: asyncpg.Connection, db: Database
) -> None:
    schema = db.table("tasks").split(".")[0]
    await caller.execute(f"CREATE TABLE {schema}.orders (id int PRIMARY KEY)")
    async with caller.transaction():
        await caller.execute(f"INSERT INTO {schema}.orders VALUES (1)")  # noqa: S608
        await backend.task_queue.enqueue(Task(func="orders.ship", id="ship-1"), connection=caller)
    assert await db.count("tasks") == 1
    with pytest.raises(DuplicateTaskError):
        async with caller.transaction():
            await caller.execute(f"INSERT INTO {schema}.orders VALUES (2)")  # noqa: S608
            await backend.task_queue.enqueue(
                Task(func="orders.ship", id="ship-1"), connection=caller
            )
    # The failed enqueue aborted the caller's transaction: order 2 is gone as well.
    assert await caller.fetchval(f"SELECT count(*) FROM {schema}.orders") == 1  # noqa: S608
    assert await db.count("tasks") == 1


async def test_backend_transaction_helper(backend: PostgreSQLBackend, db: Database) -> None:
    with pytest.raises(ZeroDivisionError):
        async with backend.transaction() as conn:
            await backend.task_queue.enqueue(Task(func="m.f"), connection=conn)
            1 / 0  # noqa: B018
    assert await db.count("tasks") == 0
    async with backend.transaction() as conn:
        await backend.task_queue.enqueue(Task(func="m.f"), connection=conn)
        await backend.task_queue.enqueue_many([Task(func="m.g")], connection=conn)
    assert await db.count("tasks") == 2


async def test_callers_search_path_does_not_matter(
    backend: PostgreSQLBackend, caller: asyncpg.Connection, db: Database
) -> None:
    """The caller's session may point search_path at a schema with its own "tasks" table."""
    decoy = unique_schema("decoy")
    await caller.execute(f"CREATE SCHEMA {decoy}; CREATE TABLE {decoy}.tasks (id text)")
    try:
        await caller.execute(f"SET search_path TO {decoy}")
        async with caller.transaction():
            await backend.task_queue.enqueue(Task(func="m.f", id="placed"), connection=caller)
        assert await caller.fetchval(f"SELECT count(*) FROM {decoy}.tasks") == 0  # noqa: S608
        assert await db.count("tasks") == 1
        assert (await backend.task_queue.dequeue(["default"])).id == "placed"  # type: ignore[union-attr]
    finally:
        await caller.execute(f"RESET search_path; DROP SCHEMA {decoy} CASCADE")
