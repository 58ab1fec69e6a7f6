"""Live updates: one LISTEN connection per dashboard process, pushed to every browser over SSE.

The hub waits on the backend's listener (``tasks``: a queue got ready tasks; ``results``: tasks
finished; ``schedules``: a schedule changed). After the first notification of a burst it waits
``debounce`` seconds for the rest, then reads once for everyone: the queue gauges, the
fragments of the screens being watched, and the states of the tasks the browsers show. Each
browser gets what concerns it. No browser ever causes a query of its own.

Heartbeats and delayed tasks falling due send no NOTIFY, so while a browser is connected the
hub also refreshes every ``tick`` seconds. With no browser connected it sends nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..backend.postgres import PostgreSQLBackend
from ..backend.postgres.listener import Wakeup

log = logging.getLogger("omniq.dashboard")

VIEWS = frozenset({"overview", "workers", "schedules"})  # screens whose fragments are pushed
MAX_WATCHED = 200  # task ids one browser may follow


@dataclass(eq=False)
class Subscriber:
    """One browser's event stream: the screens it shows and the task ids on them."""

    views: frozenset[str]
    watch: frozenset[str]
    outbox: dict[str, Any] = field(default_factory=dict)  # event name -> latest data
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, event: str, data: Any) -> None:
        self.outbox[event] = data  # a slow browser gets the latest state, not a backlog
        self.ready.set()


Render = Callable[[str], Awaitable[dict[str, str]]]  # view -> {element id: html}


class Hub:
    def __init__(
        self,
        backend: PostgreSQLBackend,
        render: Render,
        *,
        debounce: float = 0.25,
        min_interval: float = 1.0,
        tick: float = 10.0,
        ping: float = 15.0,
    ) -> None:
        self.backend = backend
        self.render = render
        self.debounce = debounce
        self.min_interval = min_interval
        self.tick = tick
        self.ping = ping
        self.subscribers: set[Subscriber] = set()
        self.refreshes = 0  # how many shared reads were made (for tests and logs)
        self._kick = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._queue_watches: dict[str, tuple[contextlib.AbstractContextManager[Wakeup], Wakeup]]
        self._queue_watches = {}
        self._counts: dict[str, Any] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="omniq-dashboard-hub")

    async def close(self) -> None:
        self.end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def end_streams(self) -> None:
        """End every event stream now (the server is stopping)."""
        self._closed = True
        for sub in self.subscribers:
            sub.ready.set()

    # -- the browsers' side --------------------------------------------------------------

    async def stream(self, views: set[str], watch: set[str]) -> AsyncIterator[str]:
        """Server-Sent Events for one browser, until it goes away or the server stops."""
        sub = Subscriber(frozenset(views & VIEWS), frozenset(list(watch)[:MAX_WATCHED]))
        self.subscribers.add(sub)
        self._kick.set()  # the hub may have been idle: from now on it ticks
        try:
            yield "retry: 2000\n\n"
            if self._counts is not None:
                sub.put("counts", self._counts)
            while not self._closed:
                try:
                    await asyncio.wait_for(sub.ready.wait(), self.ping)
                except TimeoutError:
                    yield ": ping\n\n"  # keeps proxies from closing an idle stream
                    continue
                sub.ready.clear()
                box, sub.outbox = sub.outbox, {}
                for event, data in box.items():
                    yield f"event: {event}\ndata: {orjson.dumps(data).decode()}\n\n"
        finally:
            self.subscribers.discard(sub)

    # -- the database side ---------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.5
        while not self._closed:
            try:
                listener = await self.backend.listener()
                with (
                    listener.watch("tasks") as tasks,
                    listener.watch("results") as results,
                    listener.watch("schedules") as schedules,
                ):
                    delay = 0.5
                    await self._loop(listener, tasks, results, schedules)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: the next look will tell
                log.warning(
                    "dashboard live updates paused (%s); retrying in %.1fs",
                    exc,
                    delay,
                    exc_info=log.isEnabledFor(logging.DEBUG),  # the traceback with --debug
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                self._unwatch_queues()

    async def _loop(self, listener: Any, *wakeups: Wakeup) -> None:
        tasks = wakeups[0]
        while not self._closed:
            timeout = self.tick if self.subscribers else None
            await _first(self._kick, wakeups, timeout)
            self._kick.clear()
            if not self.subscribers:
                for w in wakeups:
                    w.clear()
                continue
            started = time.monotonic()
            await asyncio.sleep(self.debounce)  # let the rest of the burst arrive
            arrived = [q for q, (_cm, w) in self._queue_watches.items() if w.is_set()]
            if tasks.is_set() and not arrived:
                arrived = ["*"]  # a queue the hub did not know yet
            for w in (*wakeups, *(w for _cm, w in self._queue_watches.values())):
                w.clear()
            await self.refresh(arrived)
            self._watch_queues(listener)
            await asyncio.sleep(max(0.0, self.min_interval - (time.monotonic() - started)))

    async def refresh(self, arrived: list[str] | None = None) -> None:
        """One shared read, pushed to every subscriber that it concerns."""
        subs = list(self.subscribers)
        monitor = self.backend.monitor
        gauges = await monitor.gauges()
        counts = {
            "queues": {
                name: {k: getattr(q, k) for k in ("ready", "later", "waiting", "running", "failed")}
                for name, q in gauges.queues.items()
            },
            "workers": {"alive": gauges.workers_alive, "stale": gauges.workers_stale},
        }
        self._counts = counts
        fragments = {}
        for view in sorted(set().union(*(s.views for s in subs))):
            fragments[view] = await self.render(view)
        watched = set().union(*(s.watch for s in subs))
        states = await monitor.task_states(watched) if watched else {}
        self.refreshes += 1
        for sub in subs:
            sub.put("counts", counts)
            for view in sub.views:
                sub.put("fragments", {**sub.outbox.get("fragments", {}), **fragments[view]})
            if sub.watch:
                sub.put("tasks", {i: _state(states.get(i)) for i in sub.watch})
            if arrived:
                sub.put("arrived", arrived)

    def _watch_queues(self, listener: Any) -> None:
        """One wake-up per known queue, so a push can say which queues got tasks."""
        known = set(self._counts["queues"]) if self._counts else set()
        for name in set(self._queue_watches) - known:
            cm, _w = self._queue_watches.pop(name)
            cm.__exit__(None, None, None)
        for name in known - set(self._queue_watches):
            cm = listener.watch("tasks", frozenset({name}))
            self._queue_watches[name] = (cm, cm.__enter__())

    def _unwatch_queues(self) -> None:
        for cm, _w in self._queue_watches.values():
            cm.__exit__(None, None, None)
        self._queue_watches.clear()


def _state(row: dict[str, Any] | None) -> str:
    return row["status"] if row is not None else "gone"


async def _first(kick: asyncio.Event, wakeups: tuple[Wakeup, ...], timeout: float | None) -> None:
    """Return when the kick or any wake-up is set, or after ``timeout``."""
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(kick.wait())]
    waits += [asyncio.ensure_future(w.wait(None)) for w in wakeups]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
