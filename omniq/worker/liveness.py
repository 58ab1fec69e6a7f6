"""Heartbeats from a thread of their own, and a watch on the worker's event loop.

A task that blocks the event loop (``time.sleep`` in an ``async def``) must not make its worker
look dead: another worker would rescue the task and run it a second time while the first run
goes on. So heartbeats do not depend on the loop: this thread sends them on a connection of
its own (asyncpg on a private event loop). It also pings the worker's loop, and when a ping
stays unanswered for ``stall_warning`` seconds it logs which task blocks the loop, and where.
It is the worker's last resort too: after a second stop signal it ends the process if the
worker has not stopped in time (a blocked loop cannot run signal handlers' follow-ups).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from ..backend.postgres.protocol import Registration, WorkerProtocol
from ..errors import is_transient

log = logging.getLogger("omniq.worker")


class Liveness(threading.Thread):
    """The worker's heartbeat and loop-watch thread; ``start()`` it, ``stop()`` it at the end.

    ``held()`` and ``stuck()`` are read from this thread (plain reads of the worker's state);
    ``on_lost(ids)`` is called from this thread with the held ids a rescue took away, and
    ``describe(asyncio_task)`` names what runs on the loop, for the stall warning.
    """

    def __init__(
        self,
        protocol: WorkerProtocol,
        registration: Registration,
        loop: asyncio.AbstractEventLoop,
        *,
        interval: float,
        stall_warning: float,
        held: Callable[[], list[str]],
        stuck: Callable[[], int],
        on_lost: Callable[[list[str]], None],
        describe: Callable[[asyncio.Task[Any] | None], str],
    ) -> None:
        super().__init__(name="omniq-liveness", daemon=True)
        self._protocol, self._registration = protocol, registration
        self._worker_loop = loop
        self._loop_thread = threading.get_ident()  # created on the loop's thread
        self._interval = interval
        self._stall_warning = stall_warning
        self._held, self._stuck, self._on_lost, self._describe = held, stuck, on_lost, describe
        self._stopped = threading.Event()
        self._poked = threading.Event()
        self._conn: asyncpg.Connection | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._reported_stuck = 0
        self._pings_sent = self._pings_answered = 0
        self._ping_sent_at = 0.0
        self._stall_reported: str | None = None  # what blocked the loop, once warned about
        self._next_stall_warning = stall_warning
        self.exit_deadline: float | None = None  # set after a second stop signal
        self.beats = 0

    # -- control, from the worker's loop --------------------------------------------------

    def poke(self) -> None:
        """Beat soon (the stuck-thread count changed)."""
        self._poked.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._poked.set()
        if self.is_alive():
            self.join(timeout)

    def pong(self, number: int) -> None:
        """The loop answering ping ``number`` (runs on the worker's loop)."""
        self._pings_answered = number

    # -- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        self._own_loop = loop = asyncio.new_event_loop()
        tick = min(self._interval, self._stall_warning / 2)
        next_beat = time.monotonic() + self._interval
        try:
            while not self._stopped.is_set():
                self._poked.wait(tick)
                now = time.monotonic()
                self._check_exit(now)
                self._watch_loop(now)
                stuck = self._stuck()
                due = now >= next_beat or self._poked.is_set()
                self._poked.clear()
                if due and not self._stopped.is_set():
                    held = self._held()
                    if held or stuck != self._reported_stuck:
                        loop.run_until_complete(self._beat(held, stuck))
                    next_beat = now + self._interval
        finally:
            if self._conn is not None:
                loop.run_until_complete(self._drop_connection())
            loop.close()

    async def _beat(self, held: list[str], stuck: int) -> None:
        timeout = max(1.0, min(self._registration.stale_after.total_seconds() / 2, 10.0))
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._protocol.connect("heartbeat")
            lost = await asyncio.wait_for(
                self._protocol.heartbeat(self._registration, held, stuck, connection=self._conn),
                timeout,
            )
        except Exception as exc:  # keep beating: the next beat reconnects
            log.log(
                logging.WARNING if is_transient(exc) else logging.ERROR,
                "heartbeat failed (%s); trying again in %gs",
                _text(exc),
                self._interval,
                exc_info=None if is_transient(exc) else exc,
            )
            await self._drop_connection()
            return
        self.beats += 1
        self._reported_stuck = stuck
        if lost:
            self._on_lost(list(lost))

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    # -- watching the worker's loop --------------------------------------------------------

    def _watch_loop(self, now: float) -> None:
        if self._pings_answered >= self._pings_sent:  # the loop answered the last ping
            if self._stall_reported is not None:
                log.warning(
                    "event loop free again after about %.1fs; it was blocked by %s",
                    now - self._ping_sent_at,
                    self._stall_reported,
                )
                self._stall_reported = None
                self._next_stall_warning = self._stall_warning
            self._pings_sent += 1
            self._ping_sent_at = now
            try:
                self._worker_loop.call_soon_threadsafe(self.pong, self._pings_sent)
            except RuntimeError:  # the loop is closed: the worker is ending
                self._stopped.set()
            return
        blocked = now - self._ping_sent_at
        if blocked < self._next_stall_warning:
            return
        self._stall_reported = self.culprit()
        log.warning(
            "event loop blocked for %.1fs by %s; other tasks on the loop wait, heartbeats go "
            "on from their own thread. Blocking calls in async def tasks belong in a thread "
            "(asyncio.to_thread) or in a plain def task.",
            blocked,
            self._stall_reported,
        )
        self._next_stall_warning = blocked * 2  # warn again at 2x, 4x, ... as it goes on

    def culprit(self) -> str:
        """The asyncio task running on the worker's loop now, and the line it is at."""
        try:
            what = self._describe(asyncio.current_task(self._worker_loop))
            frame = sys._current_frames().get(self._loop_thread)
            if frame is None:
                return what
            code = frame.f_code
            return f"{what} at {code.co_filename}:{frame.f_lineno} in {code.co_name}"
        except Exception as exc:  # naming the culprit must never break the watch
            return f"an unknown task ({_text(exc)})"

    # -- the last resort after a second signal ---------------------------------------------

    def _check_exit(self, now: float) -> None:
        deadline = self.exit_deadline
        if deadline is None or now < deadline:
            return
        log.error(
            "the worker did not stop within %gs of the second signal (the loop is busy with %s); "
            "exiting now. Tasks whose outcome was not recorded go back to pending when the "
            "rescue finds this worker silent.",
            FORCED_EXIT_AFTER,
            self.culprit(),
        )
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(130)


FORCED_EXIT_AFTER = 5.0  # seconds a worker may take to stop after the second signal


def _text(exc: BaseException) -> str:
    try:
        return str(exc) or type(exc).__name__
    except Exception:
        return type(exc).__name__
