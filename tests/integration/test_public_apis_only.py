"""OmniQ uses other libraries through their public APIs only (issue 11): no aiosql
``driver_adapter.var_sorted``, no asyncpg ``conn._transport``, no ``loop._selector`` swap after
``fork()``, no error classification by the words of a message. What each did is still done;
the tests here (and the ones named below) show it."""

from __future__ import annotations

import asyncio
import os
import re
import warnings
from pathlib import Path

import asyncpg
import pytest

import omniq.backend.postgres.backend as backend_module
from omniq.backend.postgres import PostgreSQLBackend, create_postgres_backend
from omniq.backend.postgres.connection import Pooled
from omniq.errors import DatabaseConnectionError
from omniq.models.config import PostgresConfig
from omniq.models.task import Task
from tests.integration.test_sync import _in_child
from tests.support.db import drop_schemas, run_in_thread, unique_schema

PACKAGE = Path(backend_module.__file__).resolve().parents[2]  # omniq/
PRIVATE = {
    "aiosql's parameter order": re.compile(r"\bvar_sorted\b"),
    "asyncpg's transport": re.compile(r"""\._transport\b|["']_transport["']"""),
    "asyncio's selector": re.compile(r"""\._selector\b|["']_selector["']"""),
    # driver errors are told apart by type (embedded.py reads createdb's output: a tool, no types)
    "a driver error's words": re.compile(r"""["'][a-z ]+["']\s+(not\s+)?in\s+str\(exc"""),
}
NOT_DRIVER = {"embedded.py"}


def test_no_private_attribute_of_another_library() -> None:
    """The parameter order comes from the -- name: header (test_typed_queries), the LISTEN
    link is checked by the listener's ping (test_faults: ..._with_only_a_subscriber), the
    loop thread's selector is fork-aware (below), and errors are told apart by type."""
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 40, PACKAGE
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {what}"
        for path in paths
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for what, pattern in PRIVATE.items()
        if pattern.search(line) and not (what.startswith("a driver") and path.name in NOT_DRIVER)
    ]
    assert found == []


def test_a_child_dropping_the_inherited_pool_leaves_the_parent_hearing_its_sockets(
    pg_dsn: str,
) -> None:
    """After fork() the child's copy of the loop thread's epoll instance is the parent's. A
    child that drops the connections it inherited (backend.terminate() on its way out, or
    asyncpg aborting them when they are collected) unregisters their sockets from the loop's
    selector. That selector is empty in the child (ForkAwareSelector), so the parent's loop
    keeps hearing its sockets; with a plain loop the parent's next query never returned."""
    schema = unique_schema()
    config = {"min_connections": 2, "max_connections": 2, "command_timeout": 20}
    with create_postgres_backend(dsn=pg_dsn, schema=schema, **config) as backend:
        queue = backend.task_queue
        queue.enqueue_many_sync([Task(func="m.f", queue_name="fork") for _ in range(3)])

        def child() -> str:
            warnings.simplefilter("ignore")  # as a program would: asyncpg warns, then aborts
            backend.terminate()  # the inherited pool and listener: the parent's sockets
            return "dropped"

        status, said = _in_child(child)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, said)
        assert said == "dropped"
        for _ in range(4):  # each of the parent's two connections answers, more than once
            assert queue.get_queue_size_sync("fork") == 3
    run_in_thread(lambda: drop_schemas(pg_dsn, schema))


async def test_a_closed_connection_of_the_callers_is_a_lost_connection(
    backend: PostgreSQLBackend, pg_dsn: str
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    await conn.close()
    with pytest.raises(DatabaseConnectionError, match="failed or was lost"):
        await backend.task_queue.enqueue(Task(func="m.f"), connection=conn)


async def test_a_busy_connection_of_the_callers_is_not_a_lost_connection(
    backend: PostgreSQLBackend, pg_dsn: str
) -> None:
    """Using the caller's connection while it runs another statement is the caller's mistake
    (asyncpg: "another operation is in progress"), not a lost connection to retry. It was
    told apart from one by the absence of the word "pool" in the message, and so counted lost."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        sleeping = asyncio.ensure_future(conn.execute("SELECT pg_sleep(0.5)"))
        await asyncio.sleep(0.05)
        with pytest.raises(asyncpg.InterfaceError, match="another operation is in progress"):
            await backend.task_queue.enqueue(Task(func="m.f"), connection=conn)
        await sleeping
    finally:
        await conn.close()


async def test_a_closed_pool_is_not_a_lost_connection(pg_dsn: str) -> None:
    """asyncpg says so with a plain InterfaceError, as for a closed connection: the pool's
    public state tells them apart."""
    config = PostgresConfig(dsn=pg_dsn, min_connections=1, max_connections=1)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    await pool.close()
    with pytest.raises(asyncpg.InterfaceError, match="pool is closed"):
        async with Pooled(config, 5.0, pool):
            pass
