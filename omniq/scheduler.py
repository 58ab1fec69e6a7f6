"""The scheduler: fires due schedules into their queues, exactly once across schedulers.

It sleeps until the earliest ``next_run`` or until a NOTIFY says schedules changed; each
wake-up runs ``fire_due_schedules`` (claim with SKIP LOCKED, compute the following times with
croniter, enqueue and advance in one transaction). Cron expressions are read in UTC.
"""

from __future__ import annotations

import asyncio
import logging

from .backend.postgres import PostgreSQLBackend
from .models._common import utcnow

log = logging.getLogger("omniq.scheduler")


class AsyncScheduler:
    def __init__(self, backend: PostgreSQLBackend, batch_size: int = 100) -> None:
        self.backend = backend
        self.batch_size = batch_size
        self.fired = 0

    async def run(self, stopping: asyncio.Event | None = None) -> int:
        """Fire schedules until ``stopping`` is set (or forever); returns tasks enqueued."""
        stopping = stopping or asyncio.Event()
        storage = self.backend.schedule_storage
        listener = await self.backend.listener()
        with listener.watch("schedules") as wakeup:
            while not stopping.is_set():
                wakeup.clear()
                try:
                    await self.fire_due()
                    next_at = await storage.next_schedule_at()
                except (ConnectionError, OSError, TimeoutError) as exc:
                    log.warning("scheduler: %s; retrying in 1s", exc)
                    next_at = None
                    await asyncio.sleep(1.0)
                    continue
                timeout = (
                    None
                    if next_at is None
                    else max(0.0, (next_at - utcnow()).total_seconds()) + 0.002
                )
                stop = asyncio.ensure_future(stopping.wait())
                wake = asyncio.ensure_future(wakeup.wait(timeout))
                await asyncio.wait({stop, wake}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                wake.cancel()
        return self.fired

    async def fire_due(self) -> int:
        """Fire every due schedule now; returns tasks enqueued."""
        total = 0
        while True:
            fired = await self.backend.schedule_storage.fire_due_schedules(self.batch_size)
            total += fired
            if fired < self.batch_size:
                break
        if total:
            log.info("scheduler fired %d task(s)", total)
        self.fired += total
        return total


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
