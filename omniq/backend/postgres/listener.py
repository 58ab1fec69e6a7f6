"""The dedicated LISTEN connection: NOTIFY wake-ups for dequeue, result waits and schedulers.

One connection per backend, opened on first need, never taken from the pool. Waiters register
*before* they look for work, so a NOTIFY that lands between the look and the wait still wakes
them. When the connection dies (server restart, pg_terminate_backend, a half-open TCP link
caught by the ping below) it is re-opened in the background with backoff, and every waiter is
woken to look again, since notifications sent while deaf are lost.

A link that stays open but carries nothing (a peer gone without a FIN, a hung proxy or server,
a stalled socket) is caught by a ping: while anyone waits or subscribes, an empty query is
sent every ``ping_interval`` seconds, and a ping unanswered within ``ping_timeout`` drops the
connection, which then reconnects as above. The empty query is a protocol round trip: no
statement runs, and nothing shows in pg_stat_statements. (asyncpg takes no socket options,
so TCP keepalives are not set: the ping covers what they would catch, and more.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg

log = logging.getLogger("omniq.listener")

CHANNEL_KINDS = ("tasks", "results", "schedules", "aborts")
PING_INTERVAL = 30.0  # seconds between pings of the LISTEN connection while someone waits
PING_TIMEOUT = 5.0  # an unanswered ping after this long drops the connection


class Wakeup:
    """A flag a waiter clears before looking and waits on afterwards (one waiter at a time).

    A future of its own rather than ``asyncio.wait_for(Event.wait())``: the waiter resumes on
    the loop turn after :meth:`set`, where wait_for over an Event took two more (a task for
    the Event's wait, the timeout's callback), and the worker's wait for it or for stopping
    four more. A worker woken for each task of a trickle paid them on every task's way to
    starting.
    """

    __slots__ = ("keys", "_set", "_waiter")

    def __init__(self, keys: frozenset[str] | None) -> None:
        self.keys = keys  # None: wake on any notification of the kind
        self._set = False
        self._waiter: asyncio.Future[bool] | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout: float | None) -> bool:
        """True when woken, False on timeout."""
        if self._set:
            return True
        if timeout is not None and timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _time_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Listener:
    ping_interval = PING_INTERVAL
    ping_timeout = PING_TIMEOUT

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
        # Callbacks given each payload of a kind (None after a reconnect: some may be lost).
        self._subscribers: dict[str, set[Callable[[str | None], None]]] = {}
        self._conn: asyncpg.Connection | None = None
        self._started = asyncio.Lock()
        self._reconnecting: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._closed = False
        self._max_delay = reconnect_max_delay
        self.connected = asyncio.Event()
        self.reconnects = 0

    async def start(self) -> None:
        """Open the connection and LISTEN, once; later calls return at once."""
        async with self._started:
            if self._conn is None and self._reconnecting is None:
                await self._open()
            if self._pinger is None and not self._closed:
                self._pinger = asyncio.get_running_loop().create_task(self._ping())

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

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        kind = self._kinds.get(channel)
        if kind is None:
            return
        text = str(payload)  # NOTIFY payloads are text
        for callback in list(self._subscribers.get(kind, ())):
            callback(text)
        keys = text.split(",") if kind == "results" else (text,)
        for waiter in self._waiters[kind]:
            if waiter.keys is None or not waiter.keys.isdisjoint(keys):
                waiter.set()

    def _on_terminated(self, conn: Any) -> None:
        if self._conn is not None and conn is not self._conn:
            return  # an older connection, already replaced
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
                for callbacks in self._subscribers.values():
                    for callback in list(callbacks):
                        callback(None)
                return
        finally:
            self._reconnecting = None

    async def _ping(self) -> None:
        """While someone waits or subscribes, check now and then that the connection answers."""
        while not self._closed:
            await asyncio.sleep(self.ping_interval)
            conn = self._conn
            listening = any(self._waiters.values()) or any(self._subscribers.values())
            if conn is None or not listening:
                continue  # reconnecting already, or nobody to wake: stay silent
            try:
                await asyncio.wait_for(_empty_query(conn), self.ping_timeout)
            except Exception as exc:
                if conn is self._conn and not self._closed:
                    log.warning(
                        "LISTEN connection did not answer a ping within %gs (%s); reconnecting",
                        self.ping_timeout,
                        exc or type(exc).__name__,
                    )
                    conn.terminate()  # calls _on_terminated: reconnect, then wake every waiter

    def wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    @contextlib.contextmanager
    def watch(self, kind: str, keys: frozenset[str] | None = None) -> Iterator[Wakeup]:
        """Register a waiter for notifications of ``kind`` (with a payload among ``keys``)."""
        waiter = Wakeup(keys)
        self._waiters[kind].add(waiter)
        try:
            yield waiter
        finally:
            self._waiters[kind].discard(waiter)

    @contextlib.contextmanager
    def subscribe(self, kind: str, callback: Callable[[str | None], None]) -> Iterator[None]:
        """Call ``callback(payload)`` on the loop for each notification of ``kind``, and
        ``callback(None)`` after a reconnect (what was sent meanwhile is lost: look again)."""
        callbacks = self._subscribers.setdefault(kind, set())
        callbacks.add(callback)
        try:
            yield
        finally:
            callbacks.discard(callback)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: waiters stop waiting instead of looking again."""
        return self._closed

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the LISTEN connection (for monitoring and tests)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    def terminate(self) -> None:
        """Drop the connection at once, without a goodbye to the server (see close())."""
        self._closed = True
        for task in (self._pinger, self._reconnecting):
            if task is not None:
                task.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
        self.wake_all()

    async def close(self) -> None:
        self._closed = True
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pinger
            self._pinger = None
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reconnecting
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
        self.wake_all()


async def _empty_query(conn: asyncpg.Connection) -> None:
    """One protocol round trip that runs no statement (pg_stat_statements never sees it)."""
    try:
        await conn.execute("")
    except AttributeError:
        # asyncpg (0.29-0.32) cannot decode the command tag an empty query lacks and raises
        # here, after the server has answered: the round trip succeeded, the link is alive.
        pass
