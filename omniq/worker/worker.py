"""The worker loop: take tasks while slots are free, run them, sleep on LISTEN when idle.

One fetch loop per worker takes up to ``concurrency + prefetch - held`` tasks per dequeue.
``async def`` tasks run on the loop, plain functions in a thread pool. Outcomes go to the
:class:`~omniq.worker.outcomes.OutcomeRecorder`, which writes them in batches.

Delivery is at least once: a task whose outcome was not yet recorded when its worker died is
run again after the rescue (see README, "Crashes and at-least-once").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..backend.postgres import PostgreSQLBackend
from ..models._common import utcnow
from ..models.task import Task
from ..scheduler import AsyncScheduler
from .imports import resolve
from .outcomes import OutcomeRecorder, WorkerStats, checked_result, storable, user_traceback

log = logging.getLogger("omniq.worker")


@dataclass
class _Running:
    task: Task
    future: asyncio.Task[None]
    in_thread: bool = False
    lost: bool = False


class AsyncWorker:
    """Runs tasks from ``queues`` (first queue first) with up to ``concurrency`` at once.

    ``await worker.run()`` runs until :meth:`stop` or SIGINT/SIGTERM; ``run(burst=True)``
    returns once no task is ready and none is running.
    """

    def __init__(
        self,
        backend: PostgreSQLBackend,
        queues: Sequence[str] = ("default",),
        concurrency: int = 10,
        worker_id: str | None = None,
        *,
        prefetch: int | None = None,
        default_timeout: float | None = None,
        heartbeat_interval: float = 5.0,
        worker_timeout: float = 30.0,
        shutdown_grace: float = 30.0,
        flush_interval: float = 0.05,
        flush_size: int = 200,
        run_scheduler: bool = True,
        install_signal_handlers: bool = True,
    ) -> None:
        if isinstance(queues, str):
            queues = [queues]
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if prefetch is not None and prefetch < 0:
            raise ValueError(f"prefetch must be 0 or more, got {prefetch}")
        if worker_timeout <= heartbeat_interval:
            raise ValueError("worker_timeout must be longer than heartbeat_interval")
        self.backend = backend
        self.queues = list(queues)
        self.concurrency = concurrency
        # Tasks held beyond those running: bigger dequeue batches, fewer round trips. They are
        # returned to pending untouched if the worker stops before starting them.
        self.prefetch = concurrency if prefetch is None else prefetch
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.default_timeout = default_timeout
        self.heartbeat_interval = heartbeat_interval
        self.worker_timeout = worker_timeout
        self.shutdown_grace = shutdown_grace
        self.flush_interval = flush_interval
        self.flush_size = flush_size
        self.run_scheduler = run_scheduler
        self.install_signal_handlers = install_signal_handlers
        self.stats = WorkerStats()
        self._running: dict[str, _Running] = {}
        self._outcomes: OutcomeRecorder | None = None
        self._slot_free: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._stopping: asyncio.Event | None = None
        self._forced = False
        self._reply_lost = False  # a dequeue failed: it may have taken tasks we never received
        self._next_rescue: float | None = (
            0.0  # loop time of the next rescue check; None: nobody holds tasks
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._threads_lock = threading.Lock()
        self._threads_running = 0  # task functions running on pool threads right now

    def _sync_loop(self) -> asyncio.AbstractEventLoop:
        return self.backend._sync_loop()

    # -- control --------------------------------------------------------------------------

    def stop(self, force: bool = False) -> None:
        """Stop fetching; running tasks get ``shutdown_grace`` seconds (none when ``force``).

        Safe to call from any thread or a signal handler.
        """
        loop = self._loop
        if loop is None or self._stopping is None:
            return
        if threading.current_thread() is threading.main_thread() and _in_loop(loop):
            self._request_stop(force)
        else:
            loop.call_soon_threadsafe(self._request_stop, force)

    def _request_stop(self, force: bool) -> None:
        assert self._stopping is not None
        if self._stopping.is_set() or force:
            if not self._forced:
                log.warning("stopping now: unfinished tasks go back to pending")
            self._forced = True
            for running in self._running.values():
                running.future.cancel()
        else:
            log.info("stopping: no new tasks; running ones have %gs to finish", self.shutdown_grace)
        self._stopping.set()

    # -- main loop ------------------------------------------------------------------------

    async def run(self, burst: bool = False) -> WorkerStats:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._outcomes = outcomes = OutcomeRecorder(
            self.backend.task_queue,
            self.worker_id,
            self.stats,
            self.flush_interval,
            self.flush_size,
        )
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="omniq-task")
        await self.backend.connect()
        await self._beat()
        log.info(
            "worker %s on queues %s, concurrency %d",
            self.worker_id,
            ",".join(self.queues),
            self.concurrency,
        )
        helpers = [
            asyncio.create_task(outcomes.run(), name="omniq-flusher"),
            asyncio.create_task(self._heartbeats(), name="omniq-heartbeat"),
        ]
        if self.run_scheduler and not burst:
            helpers.append(
                asyncio.create_task(
                    AsyncScheduler(self.backend).run(self._stopping), name="omniq-scheduler"
                )
            )
        elif self.run_scheduler:
            await self.backend.schedule_storage.fire_due_schedules()
        with self._signals():
            try:
                await self._fetch_loop(burst)
                await self._drain()
            finally:
                await outcomes.settle()  # a write under way finishes before the flusher stops
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                await self._shutdown()
        return self.stats

    async def _fetch_loop(self, burst: bool) -> None:
        """Take tasks while slots are free; when none is ready, sleep on LISTEN.

        While idle the worker sends nothing. It wakes for a NOTIFY on its queues, for the
        earliest delayed task falling due, or when another worker's held task could have
        gone stale (to rescue it); those times come from the database, not from a timer.
        """
        assert self._stopping is not None and self._slot_free is not None
        queue = self.backend.task_queue
        loop = asyncio.get_running_loop()
        listener = None if burst else await self.backend.listener()
        retry_delay = 0.1
        with contextlib.ExitStack() as stack:
            wakeup = (
                stack.enter_context(listener.watch("tasks", frozenset(self.queues)))
                if listener
                else None
            )
            while not self._stopping.is_set():
                free = self.concurrency + self.prefetch - len(self._running)
                if free <= 0:
                    self._slot_free.clear()
                    await _first(self._slot_free.wait(), self._stopping.wait())
                    continue
                if wakeup is not None:
                    wakeup.clear()  # before looking: a NOTIFY from now on is not missed
                try:
                    if self._reply_lost:
                        await self._release_unknown_tasks()
                    tasks = await queue.dequeue_many(self.queues, free, worker_id=self.worker_id)
                except (ConnectionError, OSError, TimeoutError) as exc:
                    # Server restarting, statement timeout, pool exhausted: keep the worker,
                    # try again with backoff. The dequeue may have committed without us
                    # getting the reply: such tasks are released before the next one.
                    self._reply_lost = True
                    log.warning("taking tasks failed (%s); retrying in %.1fs", exc, retry_delay)
                    await _first(asyncio.sleep(retry_delay), self._stopping.wait())
                    retry_delay = min(retry_delay * 2, 5.0)
                    continue
                retry_delay = 0.1
                for task in tasks:
                    self._start(task)
                if tasks:
                    continue
                if wakeup is None:  # burst: done once nothing is ready and nothing runs
                    if not self._running:
                        assert self._outcomes is not None
                        if self._outcomes.idle:
                            return
                        await self._outcomes.flush()  # unwritten outcomes may release dependents
                        continue
                    self._slot_free.clear()
                    await _first(self._slot_free.wait(), self._stopping.wait())
                    continue
                await self._rescue_if_due()
                try:
                    due = await queue.next_due_at(self.queues)
                except (ConnectionError, OSError, TimeoutError) as exc:
                    log.warning("looking for delayed tasks failed (%s); looking again", exc)
                    await _first(asyncio.sleep(retry_delay), self._stopping.wait())
                    retry_delay = min(retry_delay * 2, 5.0)
                    continue
                deadlines = [loop.time() + (due - utcnow()).total_seconds()] if due else []
                if self._next_rescue is not None:
                    deadlines.append(self._next_rescue)
                timeout = max(0.0, min(deadlines) - loop.time()) + 0.002 if deadlines else None
                await _first(wakeup.wait(timeout), self._stopping.wait())
                if self._next_rescue is None and wakeup.event.is_set():
                    self._next_rescue = loop.time()  # work appeared: someone may hold tasks now

    async def _release_unknown_tasks(self) -> None:
        """Release tasks the database says this worker holds but it never received.

        A dequeue whose reply was lost (connection dropped or statement cancelled right after
        the commit) leaves tasks marked running under this worker's id. While the worker
        heartbeats nobody would rescue them, so they go back to pending here, untouched and
        without counting a retry: they never started.
        """
        queue = self.backend.task_queue
        assert self._outcomes is not None
        await self._outcomes.flush()  # outcomes recorded first: a finished task is not "unknown"
        async with self._outcomes.paused() as unwritten:
            held: list[str] = []
            page, offset = 10_000, 0
            while True:
                running = await queue.list_tasks(status="running", limit=page, offset=offset)
                held += [t.id for t in running if t.worker_id == self.worker_id]
                if len(running) < page:
                    break
                offset += page
            known = set(self._running) | unwritten
            unknown = [task_id for task_id in held if task_id not in known]
            if unknown:
                released = await queue.release_tasks(
                    unknown, self.worker_id, "the reply of the dequeue that took it was lost"
                )
                log.warning("released %d task(s) taken by a dequeue whose reply was lost", released)
        self._reply_lost = False

    async def _rescue_if_due(self) -> None:
        """Rescue tasks of silent workers when the database said one could be stale by now."""
        loop = asyncio.get_running_loop()
        if self._next_rescue is None or loop.time() < self._next_rescue:
            return
        try:
            self._next_rescue = await self._rescue()
        except (ConnectionError, OSError, TimeoutError) as exc:
            log.warning("rescue check failed: %s", exc)
            self._next_rescue = loop.time() + self.heartbeat_interval

    async def _rescue(self) -> float | None:
        rescued, check_at = await self.backend.task_queue.rescue_tasks(self.worker_id)
        if rescued:
            log.warning("rescued %d task(s) from workers that stopped heartbeating", rescued)
        if check_at is None:
            return None
        loop = asyncio.get_running_loop()
        return loop.time() + max(0.5, (check_at - utcnow()).total_seconds())

    async def _beat(self) -> list[str]:
        """Register or refresh this worker; returns held task ids it lost to a rescue."""
        return await self.backend.task_queue.heartbeat(
            self.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
            held=list(self._running),
            stale_after=timedelta(seconds=self.worker_timeout),
        )

    def _start(self, task: Task) -> None:
        self.stats.started += 1
        future = asyncio.create_task(self._execute(task), name=f"omniq-task-{task.id}")
        self._running[task.id] = _Running(task, future)
        future.add_done_callback(lambda _f, task_id=task.id: self._finished(task_id))

    def _finished(self, task_id: str) -> None:
        self._running.pop(task_id, None)
        assert self._slot_free is not None
        self._slot_free.set()

    # -- running one task -----------------------------------------------------------------

    async def _execute(self, task: Task) -> None:
        assert self._slots is not None and self._stopping is not None
        async with self._slots:
            if self._stopping.is_set():
                return  # prefetched but not started: released untouched at shutdown
            await self._execute_now(task)

    async def _execute_now(self, task: Task) -> None:
        assert self._outcomes is not None
        started_at = utcnow()
        t0 = time.perf_counter()
        outcome: dict[str, Any] = {
            "id": task.id,
            "attempt": task.attempts,
            "started_at": started_at,
        }
        if task.expires_at is not None and task.expires_at <= started_at:
            outcome.update(
                outcome="expired", error="task expired before it started", error_type="TaskExpired"
            )
            self._outcomes.add(task, outcome, t0)
            return
        try:
            value = await self._call(task)
            outcome.update(outcome="success", result=checked_result(value, task))
        except asyncio.CancelledError:
            if self._forced or (task.id in self._running and self._running[task.id].lost):
                return  # released at shutdown, or already taken away by a rescue
            raise
        except Exception as exc:
            outcome.update(
                outcome="failure",
                error=storable(str(exc) or repr(exc)),
                error_type=type(exc).__name__,
                traceback=storable(user_traceback(exc)),
            )
        self._outcomes.add(task, outcome, t0)

    async def _call(self, task: Task) -> Any:
        fn = resolve(task.func)
        timeout = task.timeout or self.default_timeout
        if inspect.iscoroutinefunction(fn):
            call = fn(*task.args, **task.kwargs)
        else:
            assert self._executor is not None
            self._running[task.id].in_thread = True
            call = asyncio.get_running_loop().run_in_executor(
                self._executor, self._in_thread, functools.partial(fn, *task.args, **task.kwargs)
            )
        try:
            value = await asyncio.wait_for(call, timeout)
        except TimeoutError:
            where = (
                "its thread keeps running until the function returns"
                if self._running[task.id].in_thread
                else "cancelled"
            )
            raise TimeoutError(f"task exceeded its timeout of {timeout:g}s ({where})") from None
        if inspect.isawaitable(value):
            value = await asyncio.wait_for(value, timeout)
        return value

    def _in_thread(self, call: Callable[[], Any]) -> Any:
        """Run a plain task function on a pool thread, counted: see :attr:`threads_busy`."""
        with self._threads_lock:
            self._threads_running += 1
        try:
            return call()
        finally:
            with self._threads_lock:
                self._threads_running -= 1

    # -- liveness -------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Heartbeat while holding tasks (an idle worker sends nothing); drop tasks taken away."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if not self._running:
                continue
            await self._rescue_if_due()
            try:
                lost = await self._beat()
            except (ConnectionError, OSError, TimeoutError) as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            for task_id in lost:
                running = self._running.get(task_id)
                if running is not None:
                    log.warning("task %s was taken from this worker; abandoning it", task_id)
                    running.lost = True
                    running.future.cancel()

    # -- shutdown -------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Give running tasks the grace period, then cancel what is left."""
        if self._running and not self._forced:
            futures = [r.future for r in self._running.values()]
            _, pending = await asyncio.wait(futures, timeout=self.shutdown_grace)
            if pending:
                log.warning(
                    "%d task(s) did not finish within %gs; returning them to pending",
                    len(pending),
                    self.shutdown_grace,
                )
                self._forced = True
                for future in pending:
                    future.cancel()
        if self._running:
            await asyncio.wait([r.future for r in self._running.values()], timeout=1.0)

    async def _shutdown(self) -> None:
        assert self._outcomes is not None
        with contextlib.suppress(Exception):
            await self._outcomes.flush()
        try:
            released = await self.backend.task_queue.worker_stopped(self.worker_id)
            self.stats.released += released
            if released:
                log.info("returned %d unfinished task(s) to pending", released)
        except Exception as exc:  # the rescue will bring them back once our heartbeat is stale
            log.warning(
                "could not deregister (%s); held tasks will be rescued after %gs",
                exc,
                self.worker_timeout,
            )
        assert self._executor is not None
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info(
            "worker %s stopped: %d succeeded, %d failed, %d retried, %d expired",
            self.worker_id,
            self.stats.succeeded,
            self.stats.failed,
            self.stats.retried,
            self.stats.expired,
        )

    @contextlib.contextmanager
    def _signals(self) -> Any:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._request_stop, False)
                    installed.append(sig)
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    @property
    def threads_busy(self) -> bool:
        """True while a task function still runs in a thread (it cannot be interrupted).

        Also after its task was given up (timeout, forced stop): the thread runs on until the
        function returns, so a process that must exit now has to use ``os._exit``.
        """
        with self._threads_lock:
            return self._threads_running > 0


class Worker(AsyncWorker):
    """The blocking worker: ``Worker(backend, ...).run(burst=False)`` runs on this thread's own loop."""

    def run(self, burst: bool = False) -> WorkerStats:  # type: ignore[override]
        return asyncio.run(self._run_own_backend(burst))

    async def _run_own_backend(self, burst: bool) -> WorkerStats:
        # asyncpg pools belong to one loop: this worker's loop gets a backend of its own.
        backend = PostgreSQLBackend(self.backend.config)
        self.backend = backend
        try:
            return await AsyncWorker.run(self, burst)
        finally:
            await backend.close()


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def _first(*aws: Any) -> None:
    """Wait until the first of ``aws`` finishes; cancel the rest."""
    futures = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            future.cancel()
