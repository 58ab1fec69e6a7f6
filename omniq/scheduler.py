"""The scheduler: fires due schedules into their queues, exactly once across schedulers.

It sleeps until the earliest ``next_run`` or until a NOTIFY says schedules changed; each
wake-up runs ``fire_due`` (claim with SKIP LOCKED, compute the following times with croniter
from the database's clock, enqueue and advance in one transaction). Cron expressions are read
in UTC. A schedule that cannot fire is paused with its error and logged; any other error is
logged and retried with backoff: the scheduler itself never stops until it is told to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .backend.postgres import PostgreSQLBackend
from .errors import Backoff, is_transient
from .models._common import utcnow

log = logging.getLogger("omniq.scheduler")

T = TypeVar("T")
MAX_BACKOFF = 30.0  # seconds between attempts while firing keeps failing


class AsyncScheduler:
    def __init__(self, backend: PostgreSQLBackend, batch_size: int = 100) -> None:
        self.backend = backend
        self.batch_size = batch_size
        self.fired = 0
        self.errors = 0  # failed wake-ups (each logged, then retried)

    async def run(self, stopping: asyncio.Event | None = None) -> int:
        """Fire schedules until ``stopping`` is set (or forever); returns tasks enqueued."""
        stopping = stopping or asyncio.Event()
        storage = self.backend.schedule_storage
        backoff = Backoff(first=1.0, cap=MAX_BACKOFF)
        listener = None
        while listener is None and not stopping.is_set():
            try:
                await self.backend.connect()  # says so when the backend is open on another loop
                listener = await self.backend.listener()
            except Exception as exc:  # the database is away: the loop below would only fail
                if not is_transient(exc):
                    raise  # a backend open on another loop, a refused schema: not a bad moment
                await self._failed(exc, backoff.next(), stopping)
        if listener is None:
            return self.fired
        with listener.watch("schedules") as wakeup:
            while not stopping.is_set():
                wakeup.clear()
                try:
                    await self.fire_due()
                    next_at = await storage.next_schedule_at()
                except Exception as exc:  # never dies: a bad moment must not stop every schedule
                    await self._failed(exc, backoff.next(), stopping)
                    continue
                backoff.reset()
                timeout = (
                    None
                    if next_at is None
                    else max(0.0, (next_at - utcnow()).total_seconds()) + 0.002
                )
                await _first(stopping.wait(), wakeup.wait(timeout))
        return self.fired

    async def _failed(self, exc: Exception, delay: float, stopping: asyncio.Event) -> None:
        """Log a failed wake-up and wait ``delay`` seconds before the next one."""
        self.errors += 1
        if is_transient(exc):
            log.warning("scheduler: %s; retrying in %gs", exc, delay)
        else:
            log.error("scheduler: firing failed; retrying in %gs", delay, exc_info=exc)
        await _first(stopping.wait(), asyncio.sleep(delay))

    async def fire_due(self) -> int:
        """Fire every due schedule now; returns tasks enqueued."""
        total = 0
        while True:
            firing = await self.backend.schedule_storage.fire_due(self.batch_size)
            total += firing.fired
            if firing.claimed < self.batch_size:
                break
        if total:
            log.info("scheduler fired %d task(s)", total)
        self.fired += total
        return total


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait until the first of ``aws`` finishes; cancel the rest."""
    futures = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            future.cancel()


class Scheduler(AsyncScheduler):
    """The blocking scheduler: ``Scheduler(backend).run(stopping)`` returns once ``stopping`` (a
    ``threading.Event``) is set, or on Ctrl-C; the tasks it enqueued.

    Like :class:`~omniq.worker.Worker`, it runs on the given backend, on the loop that serves
    the backend's ``_sync`` methods, and leaves the backend open.
    """

    def run(self, stopping: threading.Event | None = None) -> int:  # type: ignore[override]
        loop = self.backend._sync_loop()
        stop = asyncio.Event()  # the scheduler's own, set on its loop

        def stop_now() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: it stopped already
                loop.call_soon_threadsafe(stop.set)

        async def until_stopped() -> int:
            if stopping is not None:  # relay the caller's event to the loop

                def relay() -> None:
                    stopping.wait()
                    stop_now()

                threading.Thread(
                    target=relay,
                    name="omniq-scheduler-stop",
                    daemon=True,  # it waits for the caller's event, and must not keep us alive
                ).start()
            return await AsyncScheduler.run(self, stop)

        return run_blocking(
            loop,
            until_stopped,
            stop=stop_now,
            what="Scheduler.run()",
            instead="await AsyncScheduler(backend).run(stopping)",
        )


def run_blocking(
    loop: asyncio.AbstractEventLoop,
    start: Callable[[], Coroutine[Any, Any, T]],
    *,
    stop: Callable[[], None],
    what: str,
    instead: str,
) -> T:
    """Run a runner's coroutine on ``loop`` (a backend's, in another thread) and wait for it.

    Interrupted here (Ctrl-C without signal handlers), it calls ``stop()`` and waits a little
    for the runner to end there before the interruption goes on.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            f"{what} blocks until it stops, and this thread runs an event loop that it would "
            f"block: use {instead} in async code"
        )
    future = asyncio.run_coroutine_threadsafe(start(), loop)
    try:
        return future.result()
    except BaseException:
        if not future.done():
            stop()
            with contextlib.suppress(BaseException):
                future.result(timeout=STOP_WAIT)
            future.cancel()
        raise


STOP_WAIT = 10.0  # seconds an interrupted blocking runner is given to stop on its loop
