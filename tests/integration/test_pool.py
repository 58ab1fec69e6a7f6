"""The pooled connection kept in hand between OmniQ's own operations (connection.Spare).

Each operation of OmniQ's keeps the connection it used instead of giving it back to asyncpg's
pool, and the next operation takes it without asking the pool. What must hold: it is given
back whenever keeping it could hurt (a failure, an open transaction, someone waiting for the
pool, the backend closing), and a caller of ``backend.acquire()`` can always have it.
``Pool.get_idle_size()`` (asyncpg's public API) tells whether it is kept: a kept connection
is not idle in the pool.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from omniq.errors import DuplicateTaskError
from omniq.models.task import Task


async def test_an_operation_keeps_its_connection_for_the_next(make_backend) -> None:
    backend = await make_backend(min_connections=1, max_connections=4)
    pool = backend._pool
    assert pool.get_size() == 1 and pool.get_idle_size() == 1  # connect() gives it back
    await backend.task_queue.enqueue(Task(func="m.f"))
    assert pool.get_size() == 1 and pool.get_idle_size() == 0  # kept in hand, not idle
    for _ in range(20):  # operations in turn: the one connection, the pool never grows
        await backend.task_queue.enqueue(Task(func="m.f"))
        assert await backend.task_queue.get_queue_size() > 0
    assert pool.get_size() == 1 and pool.get_idle_size() == 0
    async with backend.acquire():  # a caller's own connection: the kept one, given back after
        assert pool.get_idle_size() == 0
    assert pool.get_size() == 1 and pool.get_idle_size() == 1


async def test_a_failed_operation_gives_its_connection_back(make_backend) -> None:
    backend = await make_backend(min_connections=1, max_connections=4)
    pool = backend._pool
    task = Task(func="m.f")
    await backend.task_queue.enqueue(task)
    assert pool.get_idle_size() == 0
    with pytest.raises(DuplicateTaskError):  # the same id again: the database refuses it
        await backend.task_queue.enqueue(Task(func="m.f", id=task.id))
    assert pool.get_size() == 1 and pool.get_idle_size() == 1


async def test_an_open_transaction_is_not_kept(make_backend) -> None:
    backend = await make_backend(min_connections=1, max_connections=4)
    async with backend._lend() as conn:
        await conn.execute("BEGIN")
    assert backend._pool.get_idle_size() == 1  # asyncpg rolled it back on release
    async with backend.acquire() as conn:
        assert not conn.is_in_transaction()


async def test_a_caller_waiting_for_the_pool_gets_the_connection(make_backend) -> None:
    # One connection in all: an operation of OmniQ's has it while a caller waits for the
    # pool; when the operation ends the connection goes to the caller, not back in hand
    # (kept, the caller would wait out acquire_timeout and get PoolExhaustedError).
    backend = await make_backend(min_connections=1, max_connections=1, acquire_timeout=2.0)
    async with backend._lend():
        waiter = asyncio.create_task(backend.acquire().__aenter__())
        await asyncio.sleep(0.2)
        assert not waiter.done()  # waiting for the pool
    conn = await asyncio.wait_for(waiter, 1.0)
    assert await conn.fetchval("SELECT 1") == 1
    await backend._pool.release(conn)


async def test_the_kept_connection_serves_a_caller_of_a_full_pool(make_backend) -> None:
    backend = await make_backend(min_connections=1, max_connections=1, acquire_timeout=0.2)
    await backend.task_queue.enqueue(Task(func="m.f"))  # the only connection, kept in hand
    async with backend.acquire() as conn:  # no PoolExhaustedError: it is handed over
        assert await conn.fetchval("SELECT 1") == 1
    assert await backend.task_queue.get_queue_size() == 1


async def test_close_gives_the_kept_connection_back(make_backend) -> None:
    backend = await make_backend(min_connections=1, max_connections=2)
    await backend.task_queue.enqueue(Task(func="m.f"))
    pool = backend._pool
    assert pool.get_idle_size() == 0
    # asyncpg's Pool.close() waits for every acquired connection: a connection still kept
    # would hold it up (it warns after a minute and waits on).
    await asyncio.wait_for(backend.close(), 5.0)
    with pytest.raises(asyncpg.InterfaceError):
        await pool.acquire()
    await backend.connect()  # a new pool, nothing kept from the old one
    assert await backend.task_queue.get_queue_size() == 1
