"""The scheduler: fires due schedules into their queues, exactly once across schedulers.

It sleeps until the earliest ``next_run`` or until a NOTIFY says schedules changed; each
wake-up runs ``fire_due`` (claim with SKIP LOCKED, compute the following times with croniter
from the database's clock, enqueue and advance in one transaction). Cron expressions are read
in UTC. A schedule that cannot fire is paused with its error and logged; any other error is
logged and retried with backoff: the scheduler itself never stops until it is told to.
"""

from __future__ import annotations

import asyncio
import logging

from .backend.postgres import PostgreSQLBackend
from .models._common import utcnow

log = logging.getLogger("omniq.scheduler")

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
        backoff = 0.0
        listener = None
        while listener is None and not stopping.is_set():
            try:
                listener = await self.backend.listener()
            except Exception as exc:  # the database is away: the loop below would only fail
                backoff = await self._failed(exc, backoff, stopping)
        if listener is None:
            return self.fired
        with listener.watch("schedules") as wakeup:
            while not stopping.is_set():
                wakeup.clear()
                try:
                    await self.fire_due()
                    next_at = await storage.next_schedule_at()
                except Exception as exc:  # never dies: a bad moment must not stop every schedule
                    backoff = await self._failed(exc, backoff, stopping)
                    continue
                backoff = 0.0
                timeout = (
                    None
                    if next_at is None
                    else max(0.0, (next_at - utcnow()).total_seconds()) + 0.002
                )
                await _first(stopping.wait(), wakeup.wait(timeout))
        return self.fired

    async def _failed(self, exc: Exception, backoff: float, stopping: asyncio.Event) -> float:
        """Log a failed wake-up and wait before the next one; the next backoff."""
        self.errors += 1
        backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF)
        if isinstance(exc, ConnectionError | OSError | TimeoutError):
            log.warning("scheduler: %s; retrying in %gs", exc, backoff)
        else:
            log.error("scheduler: firing failed; retrying in %gs", backoff, exc_info=exc)
        await _first(stopping.wait(), asyncio.sleep(backoff))
        return backoff

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


async def _first(*aws: object) -> None:
    """Wait until the first of ``aws`` finishes; cancel the rest."""
    futures = [asyncio.ensure_future(a) for a in aws]  # type: ignore[arg-type]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            future.cancel()


class Scheduler(AsyncScheduler):
    """The blocking scheduler: ``Scheduler(backend).run()`` on this thread's own loop."""

    def run(self, stopping: asyncio.Event | None = None) -> int:  # type: ignore[override]
        return asyncio.run(self._run_own_backend())

    async def _run_own_backend(self) -> int:
        backend = PostgreSQLBackend(self.backend.config)
        self.backend = backend
        try:
            return await AsyncScheduler.run(self)
        finally:
            await backend.close()
