"""The dedicated LISTEN connection: NOTIFY wake-ups for dequeue, result waits and schedulers.

One connection per backend, opened on first need, never taken from the pool. Waiters register
*before* they look for work, so a NOTIFY that lands between the look and the wait still wakes
them. When the connection dies (server restart, pg_terminate_backend, half-open TCP caught by
keepalives) it is re-opened in the background with backoff, and every waiter is woken to look
again, since notifications sent while deaf are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg

log = logging.getLogger("omniq.listener")

CHANNEL_KINDS = ("tasks", "results", "schedules")


class Wakeup:
    """An event a waiter clears before looking and waits on afterwards."""

    __slots__ = ("event", "keys")

    def __init__(self, keys: frozenset[str] | None) -> None:
        self.event = asyncio.Event()
        self.keys = keys  # None: wake on any notification of the kind

    def clear(self) -> None:
        self.event.clear()

    async def wait(self, timeout: float | None) -> bool:
        """True when woken, False on timeout."""
        if timeout is not None and timeout <= 0:
            return self.event.is_set()
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        return True


class Listener:
    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        channels: dict[str, str],
        reconnect_max_delay: float = 5.0,
    ) -> None:
        self._connect = connect
        self._channels = channels  # kind -> channel name
        self._kinds = {name: kind for kind, name in channels.items()}
        self._waiters: dict[str, set[Wakeup]] = {kind: set() for kind in channels}
        self._conn: asyncpg.Connection | None = None
        self._started = asyncio.Lock()
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False
        self._max_delay = reconnect_max_delay
        self.connected = asyncio.Event()
        self.reconnects = 0

    async def start(self) -> None:
        """Open the connection and LISTEN, once; later calls return at once."""
        async with self._started:
            if self._conn is None and self._reconnecting is None:
                await self._open()

    async def _open(self) -> None:
        conn = await self._connect()
        try:
            for name in self._channels.values():
                await conn.add_listener(name, self._on_notify)
        except BaseException:
            await conn.close(timeout=1)
            raise
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn
        self.connected.set()

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        kind = self._kinds.get(channel)
        if kind is None:
            return
        keys = payload.split(",") if kind == "results" else (payload,)
        for waiter in self._waiters[kind]:
            if waiter.keys is None or not waiter.keys.isdisjoint(keys):
                waiter.event.set()

    def _on_terminated(self, _conn: Any) -> None:
        self._conn = None
        self.connected.clear()
        if not self._closed and self._reconnecting is None:
            log.warning("LISTEN connection lost; reconnecting")
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.05
        try:
            while not self._closed:
                try:
                    await self._open()
                except (
                    Exception
                ) as exc:  # server down: keep trying, each waiter has its own timeout
                    log.info("LISTEN reconnect failed (%s); retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_delay)
                    continue
                self.reconnects += 1
                log.warning("LISTEN connection re-established")
                self.wake_all()  # notifications sent while deaf are lost: everyone looks again
                return
        finally:
            self._reconnecting = None

    def wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.event.set()

    @contextlib.contextmanager
    def watch(self, kind: str, keys: frozenset[str] | None = None) -> Iterator[Wakeup]:
        """Register a waiter for notifications of ``kind`` (with a payload among ``keys``)."""
        waiter = Wakeup(keys)
        self._waiters[kind].add(waiter)
        try:
            yield waiter
        finally:
            self._waiters[kind].discard(waiter)

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the LISTEN connection (for monitoring and tests)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reconnecting
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
        self.wake_all()
