"""PostgreSQLBackend: owns the pool, the LISTEN connection, the SQL files and the components."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import asyncpg

from ...models.config import PostgresConfig
from . import schema
from .connection import (
    Connection,
    Pooled,
    Spare,
    connect_listener,
    create_pool,
    translate_errors,
)
from .events import PostgresEventStorage
from .listener import CHANNEL_KINDS, Listener
from .monitor import PostgresMonitor
from .query import required
from .queue import PostgresQueue
from .results import PostgresResultStorage
from .schedules import PostgresScheduleStorage
from .sqlfiles import SQLFiles, sql_files
from .sync import LoopThread, fork_generation, run_on

log = logging.getLogger("omniq.backend")

# What a forked child inherited from its parent's backends: kept referenced, never closed,
# since its sockets are the parent's (see PostgreSQLBackend._forget_parent).
_inherited: list[object] = []


class PostgreSQLBackend:
    """OmniQ on PostgreSQL: ``task_queue``, ``result_storage``, ``event_storage``, ``schedule_storage``.

    Use ``async with backend:`` in async code and ``with backend:`` in blocking code. The
    schema is created or migrated on connect. Connecting is also done on first use.
    """

    _async_only = frozenset({"listener"})  # a Listener lives on the backend's loop

    def __init__(self, config: PostgresConfig | None = None, **overrides: Any) -> None:
        self.config = config if config is not None else PostgresConfig(**overrides)
        self.sql: SQLFiles = sql_files(self.config.schema, tuple(self.config.tables.items()))
        self.task_queue = PostgresQueue(self)
        self.result_storage = PostgresResultStorage(self)
        self.event_storage = PostgresEventStorage(self)
        self.schedule_storage = PostgresScheduleStorage(self)
        self.monitor = PostgresMonitor(self)  # read-only views for the dashboard
        self._pool: asyncpg.Pool | None = None
        self._spare = Spare()  # the connection kept between OmniQ's own operations
        self._listener: Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: LoopThread | None = None
        self._opening: asyncio.Lock | None = None
        self._generation = fork_generation()

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        return f"<PostgreSQLBackend {state} {self.config!r}>"

    # -- life cycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the pool and prepare the schema as ``config.migrate`` says; idempotent."""
        self._forget_parent()
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop and self._pool is not None:
            raise RuntimeError(
                "this backend is open on another event loop; use one backend per loop"
            )
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is not None:
                return
            pool = await create_pool(self.config)
            try:
                async with Pooled(self.config, self.config.acquire_timeout, pool) as conn:
                    await self._prepare_schema(conn)
            except BaseException:
                await pool.close()
                raise
            self._pool, self._loop = pool, loop

    async def _prepare_schema(self, conn: Connection) -> None:
        """What ``config.migrate`` says connecting does to the schema (``schema.prepare``)."""
        await schema.prepare(conn, self.sql, self.config.schema, self.config.migrate)

    def terminate(self) -> None:
        """Drop the LISTEN connection and the pool at once, without waiting for the server
        (for a process that must exit now, e.g. while the database is unreachable)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.terminate()
        pool, self._pool = self._pool, None
        self._spare.closed, self._spare = True, Spare()
        if pool is not None:
            pool.terminate()
        self._opening = None

    async def close(self) -> None:
        """Close the LISTEN connection and the pool."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        pool, self._pool = self._pool, None
        spare, self._spare = self._spare, Spare()
        spare.closed = True
        if pool is not None:
            if (kept := spare.take()) is not None:
                await pool.release(kept)
            await pool.close()
        self._opening = None

    async def __aenter__(self) -> PostgreSQLBackend:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __enter__(self) -> PostgreSQLBackend:
        try:
            run_on(self._sync_loop(), self.connect())
        except BaseException:
            self._stop_thread()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._thread is not None:
                run_on(self._thread.loop, self.close())
        finally:
            self._stop_thread()

    def close_sync(self) -> None:
        """Blocking form of :meth:`close`; also stops the loop thread kept for sync calls."""
        try:
            run_on(self._sync_loop(), self.close())
        finally:
            self._stop_thread()

    def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()
            self._loop = None

    def _sync_loop(self) -> asyncio.AbstractEventLoop:
        """The loop sync calls run on: the one the pool lives on, else a thread of our own."""
        self._forget_parent()
        if self._pool is not None and self._loop is not None and self._loop.is_running():
            return self._loop
        if self._thread is None:
            self._thread = LoopThread()
        return self._thread.loop

    # -- shared plumbing ----------------------------------------------------------------

    def acquire(self) -> Pooled:
        """``async with backend.acquire() as conn``: a pooled connection (connecting first if
        needed), with errors translated."""
        self._forget_parent()  # in a child after fork(), not the parent's kept connection
        return Pooled(
            self.config, self.config.acquire_timeout, ready=self._ready_pool, spare=self._spare
        )

    def _lend(self) -> Pooled:
        """What OmniQ's own operations use: :meth:`acquire`, keeping the connection in hand
        for the next operation (connection.Spare) instead of releasing it."""
        self._forget_parent()  # in a child after fork(), not the parent's kept connection
        return Pooled(
            self.config,
            self.config.acquire_timeout,
            ready=self._ready_pool,
            spare=self._spare,
            keep=True,
        )

    def _forget_parent(self) -> None:
        """In a child after ``fork()``: start afresh, leaving the parent's connections alone.

        The child has copies of the parent's loop (whose thread does not exist here), pool and
        sockets. Using them would hang or interleave with the parent's traffic, and closing
        them would close the parent's connections. They are dropped (kept referenced, so
        nothing closes them), and the next call opens a pool of the child's own.
        """
        if self._generation == fork_generation():
            return
        self._generation = fork_generation()
        _inherited.extend([self._pool, self._listener, self._thread, self._loop, self._spare])
        self._pool = self._listener = self._loop = self._thread = self._opening = None
        self._spare = Spare()

    async def _ready_pool(self) -> asyncpg.Pool:
        if self._generation != fork_generation():
            self._forget_parent()
        if self._pool is None:
            await self.connect()
        assert self._pool is not None
        return self._pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection inside a transaction: pass it as ``connection=`` to enqueue."""
        async with self.acquire() as conn, conn.transaction():
            yield conn

    async def listener(self) -> Listener:
        """The LISTEN connection, opened on first need."""
        if self._listener is None:
            async with self.acquire() as conn:
                channels = {
                    kind: required(await self.sql.migrations.channel(conn, kind=kind), "channel")
                    for kind in CHANNEL_KINDS
                }

            async def connect() -> asyncpg.Connection:
                return await connect_listener(self.config)

            if self._listener is None:
                self._listener = Listener(connect, channels)
        async with translate_errors(self.config):
            await self._listener.start()
        return self._listener

    async def migrate(self, dry_run: bool = False) -> list[str]:
        """Apply pending migrations and changed function files; returns their names.

        With ``dry_run`` nothing is applied: the names of what would run are returned.
        """
        pool = await create_pool(self.config) if self._pool is None else None
        try:
            async with Pooled(self.config, self.config.acquire_timeout, pool or self._pool) as conn:
                if dry_run:
                    plan = await schema.plan(conn, self.sql, self.config.schema)
                    schema.check_compatible(plan, self.sql)
                else:
                    plan = await schema.migrate(conn, self.sql, self.config.schema)
        finally:
            if pool is not None:
                await pool.close()
        return [s.name for s in plan.scripts]

    async def schema_version(self) -> int:
        """Number of the latest numbered migration applied to the schema (0: not installed)."""
        async with self.acquire() as conn:
            return (await schema.plan(conn, self.sql, self.config.schema)).version

    # -- generated by scripts/unasync from PostgreSQLBackend: do not edit --
    def connect_sync(self) -> None:
        """Blocking form of :meth:`connect` (same arguments and result)."""
        return run_on(self._sync_loop(), self.connect())

    def migrate_sync(self, dry_run: bool = False) -> list[str]:
        """Blocking form of :meth:`migrate` (same arguments and result)."""
        return run_on(self._sync_loop(), self.migrate(dry_run))

    def schema_version_sync(self) -> int:
        """Blocking form of :meth:`schema_version` (same arguments and result)."""
        return run_on(self._sync_loop(), self.schema_version())

    # -- end of generated code --
