"""The worker loop: take tasks while slots are free, run them, sleep on LISTEN when idle.

One fetch loop per worker takes up to ``concurrency + prefetch - held`` tasks per dequeue
(prefetch: as set, or adapted to how fast tasks run, :mod:`omniq.worker.prefetch`).
``async def`` tasks run on the loop, plain functions in a thread pool. Outcomes go to the
:class:`~omniq.worker.outcomes.OutcomeRecorder`, which writes them in batches. Heartbeats
come from a thread of their own (:mod:`omniq.worker.liveness`), so a task blocking the loop
does not make its worker look dead.

Whatever a task does, it ends in one recorded outcome: ``SystemExit``, ``KeyboardInterrupt``
and any other ``BaseException`` it raises are its failure, not the worker's; only signals the
worker itself receives stop it. A thread cannot be interrupted: a sync task past its timeout
is failed, and its thread keeps its slot until the function returns ("stuck"), so timeouts
of the tasks behind it count from their own start.

Delivery is at least once: a task whose outcome was not yet recorded when its worker died is
run again after the rescue (see README, "Crashes and at-least-once").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..backend.postgres import PostgreSQLBackend
from ..backend.postgres.listener import Wakeup
from ..backend.postgres.protocol import Registration, WorkerProtocol
from ..context import TaskContext, enter
from ..errors import Backoff, is_transient
from ..models._common import utcnow
from ..models.task import Task, check_queue_name
from ..observability import tracing
from ..observability.logs import task_fields
from ..scheduler import AsyncScheduler, run_blocking
from .abort import Aborts, stopped
from .imports import resolve
from .liveness import FORCED_EXIT_AFTER, Liveness
from .outcomes import OutcomeRecorder, WorkerStats, checked_result, ended, failure
from .prefetch import HOLD_LIMIT, AdaptivePrefetch

if TYPE_CHECKING:
    from ..observability.metrics import WorkerMetrics

log = logging.getLogger("omniq.worker")

RESCUE_CHECK_GAP = 1.0  # seconds: the least time between rescue checks prompted by new work


@dataclass
class _Running:
    task: Task
    future: asyncio.Task[None] = field(init=False)
    in_thread: bool = False
    lost: bool = False
    thread_kept: bool = False  # its thread outlived the run: the slot is freed when it returns
    context: TaskContext | None = None  # what omniq.current_task() returns inside it
    began: bool = False  # its asyncio task runs (a cancel reaches our handlers, not before)
    taken_at: float = field(default_factory=time.monotonic)  # when the dequeue handed it over
    slot_at: float | None = None  # when it got one of the concurrency slots (None: waiting)
    aborted: bool = False  # someone asked to abort it: it ends cancelled, whatever it does


@dataclass
class _Stuck:
    """A thread still running a task function the worker gave up (timeout, forced, lost)."""

    task_id: str
    func: str
    fields: dict[str, Any]  # the task's log fields
    since: float = field(default_factory=time.monotonic)


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
        stall_warning: float = 1.0,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        if isinstance(queues, str):
            queues = [queues]
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if prefetch is not None and prefetch < 0:
            raise ValueError(f"prefetch must be 0 or more, got {prefetch}")
        if not heartbeat_interval > 0:
            raise ValueError(
                f"heartbeat_interval must be positive seconds, got {heartbeat_interval!r}"
            )
        if worker_timeout <= heartbeat_interval:
            raise ValueError("worker_timeout must be longer than heartbeat_interval")
        if default_timeout is not None and not default_timeout > 0:
            raise ValueError(f"default_timeout must be positive seconds, got {default_timeout!r}")
        if not stall_warning > 0:
            raise ValueError(f"stall_warning must be positive seconds, got {stall_warning!r}")
        self.backend = backend
        self.protocol = WorkerProtocol(backend)  # how this worker talks to the database
        self.queues = [check_queue_name(q) for q in queues]
        self.concurrency = concurrency
        # Tasks held beyond those running: bigger dequeue batches, fewer round trips. They are
        # returned to pending untouched if the worker stops before starting them. None: as
        # many as hide a dequeue's round trip, from concurrency up (omniq.worker.prefetch).
        self.prefetch = prefetch
        self._adaptive = AdaptivePrefetch(concurrency)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.default_timeout = default_timeout
        self.heartbeat_interval = heartbeat_interval
        self.worker_timeout = worker_timeout
        self.shutdown_grace = shutdown_grace
        self.flush_interval = flush_interval
        self.flush_size = flush_size
        self.run_scheduler = run_scheduler
        self.install_signal_handlers = install_signal_handlers
        self.stall_warning = stall_warning  # log when a task blocks the loop this long
        self.stats = WorkerStats()
        # Prometheus counters and histogram (omniq.observability.metrics), when wanted.
        self.metrics = metrics
        self._running: dict[str, _Running] = {}
        self._aborts = Aborts(self.worker_id, self.protocol, self._stop_aborted)
        self._outcomes: OutcomeRecorder | None = None
        self._slot_free: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._stopping: asyncio.Event | None = None
        self._wakeup: Wakeup | None = None  # the fetch loop's LISTEN wake-up, set on stop too
        self._forced = False
        self._reply_lost = False  # a dequeue failed: it may have taken tasks we never received
        self._next_rescue: float | None = (
            0.0  # loop time of the next rescue check; None: nobody holds tasks
        )
        self._rescued_at = -math.inf  # loop time of the last rescue check
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._threads_lock = threading.Lock()
        self._threads_running = 0  # task functions running on pool threads right now
        self._stuck: dict[str, _Stuck] = {}  # threads still running given-up task functions
        self._liveness: Liveness | None = None
        self._signals_received = 0

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
            if self._outcomes is not None:
                self._outcomes.abandon()  # a write retrying against a lost server gives up
            for running in self._running.values():
                running.future.cancel()
        else:
            log.info("stopping: no new tasks; running ones have %gs to finish", self.shutdown_grace)
        self._stopping.set()
        if self._wakeup is not None:
            self._wakeup.set()

    # -- main loop ------------------------------------------------------------------------

    async def run(self, burst: bool = False) -> WorkerStats:
        self._loop = loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._outcomes = outcomes = OutcomeRecorder(
            self.protocol,
            self.worker_id,
            self.stats,
            self.flush_interval,
            self.flush_size,
            self.metrics,
        )
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="omniq-task")
        await self.backend.connect()
        registration = Registration(
            self.worker_id,
            socket.gethostname(),
            os.getpid(),
            self.queues,
            self.concurrency,
            timedelta(seconds=self.worker_timeout),
            __version__,
        )
        await self.protocol.heartbeat(registration)  # register
        self._liveness = liveness = Liveness(
            self.protocol,
            registration,
            loop,
            interval=self.heartbeat_interval,
            stall_warning=self.stall_warning,
            held=self._held_ids,
            stuck=lambda: len(self._stuck),
            on_lost=lambda ids: _call_soon(loop, self._abandon_lost, ids),
            describe=self._describe,
        )
        liveness.start()
        log.info(
            "worker %s on queues %s, concurrency %d",
            self.worker_id,
            ",".join(self.queues),
            self.concurrency,
        )
        helpers: list[asyncio.Task[Any]] = [
            asyncio.create_task(outcomes.run(), name="omniq-flusher"),
            asyncio.create_task(self._rescues(), name="omniq-rescues"),
        ]
        if self.prefetch is None:
            helpers.append(asyncio.create_task(self._surplus_watch(), name="omniq-surplus"))
        if self.run_scheduler and not burst:
            helpers.append(
                asyncio.create_task(
                    AsyncScheduler(self.backend).run(self._stopping), name="omniq-scheduler"
                )
            )
        elif self.run_scheduler:
            await self.backend.schedule_storage.fire_due_schedules()
        try:
            with self._signals(loop):
                try:
                    await self._fetch_loop(burst)
                    await self._drain()
                finally:
                    await outcomes.settle()  # a write under way finishes before the flusher stops
                    for helper in helpers:
                        helper.cancel()
                    await asyncio.gather(*helpers, return_exceptions=True)
                    await self._shutdown()
        finally:
            liveness.stop(timeout=1.0)
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
        backoff = Backoff()
        with contextlib.ExitStack() as stack:
            wakeup = (
                stack.enter_context(listener.watch("tasks", frozenset(self.queues)))
                if listener
                else None
            )
            if listener:  # abort requests for this worker's tasks (burst workers hear none)
                stack.enter_context(listener.subscribe("aborts", self._aborts.on_notice))
            self._wakeup = wakeup
            stack.callback(setattr, self, "_wakeup", None)
            while not self._stopping.is_set():
                free = self._free_slots()
                if free <= 0:
                    self._slot_free.clear()
                    await _first(self._slot_free.wait(), self._stopping.wait())
                    continue
                if wakeup is not None:
                    wakeup.clear()  # before looking: a NOTIFY from now on is not missed
                try:
                    if self._reply_lost:
                        await self._release_unknown_tasks()
                    asked = time.perf_counter()
                    tasks = await self.protocol.take(
                        self.queues, free, self.worker_id, start=self._start
                    )
                    self._adaptive.dequeued(time.perf_counter() - asked)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    # Server restarting, statement timeout, pool exhausted: keep the worker,
                    # try again with backoff. The dequeue may have committed without us
                    # getting the reply: such tasks are released before the next one.
                    self._reply_lost = True
                    delay = backoff.next()
                    log.warning("taking tasks failed (%s); retrying in %.1fs", exc, delay)
                    await _first(asyncio.sleep(delay), self._stopping.wait())
                    continue
                backoff.reset()
                if tasks:
                    self.stats.batches += 1
                    if len(tasks) < free:
                        # The queue ran dry: the tasks just taken begin before the next look
                        # (likely empty) is built and sent, not after. At a trickle that
                        # started each task 0.18 ms sooner; a full batch goes on at once,
                        # its next dequeue overlapping the tasks.
                        await asyncio.sleep(0)
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
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("looking for delayed tasks failed (%s); looking again", exc)
                    await _first(asyncio.sleep(backoff.next()), self._stopping.wait())
                    continue
                deadlines = [loop.time() + (due - utcnow()).total_seconds()] if due else []
                if self._next_rescue is not None:
                    deadlines.append(self._next_rescue)
                timeout = max(0.0, min(deadlines) - loop.time()) + 0.002 if deadlines else None
                await wakeup.wait(timeout)  # stopping sets it too (_request_stop)
                if self._next_rescue is None and wakeup.is_set():
                    # Work appeared: someone may hold tasks now. At most one such check a
                    # second, or a worker woken for each task of a trickle checks after each
                    # one (omniq_rescue_tasks_v1 costs the server more than the task's enqueue).
                    self._next_rescue = max(loop.time(), self._rescued_at + RESCUE_CHECK_GAP)

    def _free_slots(self) -> int:
        """How many tasks to take now. Threads stuck in given-up tasks hold their slots; when
        every thread is stuck, nothing is taken (a task taken now could not start)."""
        stuck = len(self._stuck)
        if stuck >= self.concurrency:
            return 0
        prefetch = self._adaptive.value if self.prefetch is None else self.prefetch
        return self.concurrency + prefetch - len(self._running) - stuck

    async def _release_unknown_tasks(self) -> None:
        """Release tasks the database says this worker holds but it never received.

        A dequeue whose reply was lost (connection dropped or statement cancelled right after
        the commit) leaves tasks marked running under this worker's id. While the worker
        heartbeats nobody would rescue them, so they go back to pending here, untouched and
        without counting a retry: they never started. One indexed query finds them.
        """
        assert self._outcomes is not None
        await self._outcomes.flush()  # outcomes recorded first: a finished task is not "unknown"
        async with self._outcomes.paused() as unwritten:
            held = await self.protocol.held_tasks(self.worker_id)
            known = set(self._running) | unwritten
            unknown = [task_id for task_id in held if task_id not in known]
            if unknown:
                released = await self.protocol.release(
                    unknown, self.worker_id, "the reply of the dequeue that took it was lost"
                )
                log.warning("released %d task(s) taken by a dequeue whose reply was lost", released)
        self._reply_lost = False

    async def _rescue_if_due(self) -> None:
        """Rescue tasks of silent workers when the database said one could be stale by now."""
        loop = asyncio.get_running_loop()
        if self._next_rescue is None or loop.time() < self._next_rescue:
            return
        self._rescued_at = loop.time()
        try:
            self._next_rescue = await self._rescue()
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("rescue check failed: %s", exc)
            self._next_rescue = loop.time() + self.heartbeat_interval

    async def _rescue(self) -> float | None:
        rescue = await self.protocol.rescue(self.worker_id)
        if rescue.rescued:
            log.warning("rescued %d task(s) from workers that stopped heartbeating", rescue.rescued)
            if self.metrics is not None:
                self.metrics.tasks_rescued(rescue.rescued)
        if rescue.next_check_at is None:
            return None
        loop = asyncio.get_running_loop()
        return loop.time() + max(0.5, (rescue.next_check_at - utcnow()).total_seconds())

    def _start(self, task: Task) -> None:
        self.stats.started += 1
        earlier = self._running.get(task.id)
        if earlier is not None:  # taken from this worker (it seemed dead), and now back here
            log.warning(
                "task %s came back (attempt %d) while its attempt %d still runs here; "
                "abandoning that one",
                task.id,
                task.attempts,
                earlier.task.attempts,
                extra=task_fields(task),
            )
            earlier.lost = True
            earlier.future.cancel()
        running = _Running(task)
        running.context = TaskContext(
            task.id, task.attempts, task.retry_count, self.worker_id, task.queue_name, task.func
        )
        running.future = asyncio.create_task(self._execute(running), name=f"omniq-task-{task.id}")
        self._running[task.id] = running
        running.future.add_done_callback(lambda _f: self._finished(running))
        if self._aborts.requested(task):  # the abort notice came before the task
            self._stop_aborted(task.id, task.attempts)

    def _stop_aborted(self, task_id: str, attempt: int) -> bool:
        """Stop that attempt of the task on an abort request, if it runs here: an async task is
        cancelled, a thread task's should_abort() becomes True. False: not running here."""
        running = self._running.get(task_id)
        if running is None or running.task.attempts != attempt or running.lost:
            return False
        if not running.aborted:
            running.aborted = True
            log.info(
                "aborting %s %s: an abort was requested",
                task_id,
                running.task.func,
                extra=task_fields(running.task),
            )
            assert running.context is not None
            running.context.request_abort()
            if running.began and not running.in_thread:
                running.future.cancel()  # else: it sees the request when it starts, or can't
        return True

    def _finished(self, running: _Running) -> None:
        task_id = running.task.id
        if self._running.get(task_id) is running:  # not the entry of a later attempt
            del self._running[task_id]
        if not self._running and self._outcomes is not None:
            self._outcomes.flush_soon()
        assert self._slot_free is not None
        self._slot_free.set()

    # -- running one task -----------------------------------------------------------------

    async def _execute(self, running: _Running) -> None:
        assert self._slots is not None and self._stopping is not None
        task = running.task
        running.began = True
        try:
            await self._slots.acquire()
            running.slot_at = time.monotonic()
        except asyncio.CancelledError:
            if not running.aborted or self._forced or running.lost:
                raise
            _uncancel()  # aborted while it waited for a slot: it never starts
            assert self._outcomes is not None
            self._outcomes.add(ended(task, utcnow(), time.perf_counter(), "aborted"))
            return
        try:
            if self._stopping.is_set():
                return  # prefetched but not started: released untouched at shutdown
            began = time.perf_counter()
            await self._execute_now(running)
            self._adaptive.task_ran(time.perf_counter() - began)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug of the worker's own: still an outcome
            log.exception(
                "running task %s (%s) failed inside the worker",
                task.id,
                task.func,
                extra=task_fields(task),
            )
            assert self._outcomes is not None
            self._outcomes.add(
                ended(task, utcnow(), time.perf_counter(), "failure", **failure(exc))
            )
        finally:
            if not running.thread_kept:
                self._slots.release()

    async def _execute_now(self, running: _Running) -> None:
        """Run the task and queue exactly one outcome, whatever the function does (or none
        when the worker gave the task up: forced stop, or taken away by a rescue)."""
        assert self._outcomes is not None and running.context is not None
        task = running.task
        started_at = utcnow()
        t0 = time.perf_counter()
        enter(running.context)
        if running.aborted:  # the request came before it started
            self._outcomes.add(ended(task, started_at, t0, "aborted"))
            return
        if task.expires_at is not None and task.expires_at <= started_at:
            expired = {"error": "task expired before it started", "error_type": "TaskExpired"}
            self._outcomes.add(ended(task, started_at, t0, "expired", **expired))
            return
        if self.metrics is not None:
            self.metrics.task_started(task.queue_name, task.func)
        try:
            with tracing.processing(task):  # a consumer span, child of the producer's
                value = await self._call(running)
            outcome = ended(task, started_at, t0, "success", result=checked_result(value, task))
            if running.aborted:  # it returned after the request (or swallowed the cancel)
                _uncancel()
                outcome = ended(task, started_at, t0, "aborted", **stopped(None))
        except asyncio.CancelledError as exc:
            if self._forced or running.lost:
                return  # released at shutdown, or already taken away by a rescue
            current = asyncio.current_task()
            if running.aborted:  # cancelled on the abort request
                _uncancel()
                outcome = ended(task, started_at, t0, "aborted", **stopped(exc))
                self._outcomes.add(outcome)
                return
            if current is not None and current.cancelling():
                raise  # the worker's own task was cancelled (the loop is closing)
            # the task function raised CancelledError itself
            outcome = ended(task, started_at, t0, "failure", **failure(exc))
        except BaseException as exc:  # SystemExit, KeyboardInterrupt...: the task's failure
            if running.aborted:
                outcome = ended(task, started_at, t0, "aborted", **stopped(exc))
            else:
                outcome = ended(task, started_at, t0, "failure", **failure(exc))
        self._outcomes.add(outcome)

    async def _call(self, running: _Running) -> Any:
        task = running.task
        fn = resolve(task.func)
        timeout = task.timeout or self.default_timeout
        if inspect.iscoroutinefunction(fn):
            value = await self._await(fn(*task.args, **task.kwargs), timeout, "cancelled")
        else:
            value = await self._call_in_thread(running, fn, timeout)
        if inspect.isawaitable(value):
            value = await self._await(value, timeout, "cancelled")
        return value

    async def _await(self, awaitable: Any, timeout: float | None, where: str) -> Any:
        """Await in this very task (no task of its own: a SystemExit raised inside stays here
        instead of leaving the event loop); a timeout is a TimeoutError saying so."""
        if timeout is None:
            return await awaitable
        try:
            async with asyncio.timeout(timeout) as scope:
                return await awaitable
        except TimeoutError:
            if not scope.expired():
                raise  # the task's own TimeoutError
        raise TimeoutError(f"task exceeded its timeout of {timeout:g}s ({where})")

    async def _call_in_thread(
        self, running: _Running, fn: Callable[..., Any], timeout: float | None
    ) -> Any:
        """Run a plain function on a pool thread. Its timeout counts from the moment it starts
        there; if the run is given up (timeout, forced stop, rescue) while the function still
        runs, the thread keeps the task's slot until the function returns."""
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        task = running.task
        running.in_thread = True
        started: asyncio.Future[float] | None = loop.create_future() if timeout else None
        # in the caller's context (contextvars): the task's trace span is current in the thread
        call = functools.partial(contextvars.copy_context().run, fn, *task.args, **task.kwargs)
        thread_future = self._executor.submit(self._in_thread, call, loop, started)
        try:
            if started is None:
                return await asyncio.wrap_future(thread_future)
            try:
                async with asyncio.timeout(None) as scope:
                    began = await started
                    assert timeout is not None  # started is only made with a timeout
                    scope.reschedule(began + timeout)  # loop.time() is time.monotonic()
                    return await asyncio.wrap_future(thread_future)
            except TimeoutError:
                if not scope.expired():
                    raise  # the function's own TimeoutError
            raise TimeoutError(
                f"task exceeded its timeout of {timeout:g}s "
                "(its thread keeps running until the function returns)"
            )
        except _RaisedInThread as carried:
            raise carried.exc from None  # raised here, in this frame: every except sees it
        finally:
            if not thread_future.done() and not thread_future.cancel():
                self._keep_thread(running, thread_future)

    def _in_thread(
        self,
        call: Callable[[], Any],
        loop: asyncio.AbstractEventLoop,
        started: asyncio.Future[float] | None,
    ) -> Any:
        """Run a plain task function on a pool thread, counted: see :attr:`threads_busy`."""
        with self._threads_lock:
            self._threads_running += 1
        try:
            if started is not None:
                _call_soon(loop, _resolve, started, time.monotonic())
            return call()
        except BaseException as exc:
            # Carried, not raised: asyncio delivers a future's exception by throwing it into
            # the awaiting coroutine, and a thrown GeneratorExit closes the coroutines below
            # the await point instead of reaching their except clauses.
            raise _RaisedInThread(exc) from None
        finally:
            with self._threads_lock:
                self._threads_running -= 1

    def _keep_thread(
        self, running: _Running, thread_future: concurrent.futures.Future[Any]
    ) -> None:
        """The run was given up but its function still runs: the thread keeps the slot."""
        loop = asyncio.get_running_loop()
        task = running.task
        running.thread_kept = True
        key = f"{task.id}#{task.attempts}"
        self._stuck[key] = _Stuck(task.id, task.func, task_fields(task))
        log.warning(
            "task %s (%s) was given up but its function still runs in its thread, which keeps "
            "its slot until it returns: %d of %d threads stuck",
            task.id,
            task.func,
            len(self._stuck),
            self.concurrency,
            extra=task_fields(task),
        )
        if len(self._stuck) >= self.concurrency:
            log.warning(
                "all %d threads are stuck in tasks that were given up; this worker takes no "
                "new tasks until one of them returns",
                self.concurrency,
            )
        if self._liveness is not None:
            self._liveness.poke()  # omniq status shows the count
        thread_future.add_done_callback(lambda _f: _call_soon(loop, self._thread_returned, key))

    def _thread_returned(self, key: str) -> None:
        stuck = self._stuck.pop(key, None)
        assert self._slots is not None and self._slot_free is not None
        self._slots.release()
        self._slot_free.set()
        if stuck is not None:
            log.info(
                "the thread of given-up task %s (%s) returned after %.1fs; %d thread(s) still stuck",
                stuck.task_id,
                stuck.func,
                time.monotonic() - stuck.since,
                len(self._stuck),
                extra=stuck.fields,
            )
        if self._liveness is not None:
            self._liveness.poke()

    # -- liveness -------------------------------------------------------------------------

    def _held_ids(self) -> list[str]:
        """The ids of the tasks held now, running or with an outcome not yet recorded (read
        by the heartbeat thread)."""
        unwritten = self._outcomes.unwritten_ids() if self._outcomes is not None else []
        while True:
            try:
                return list(dict.fromkeys([*self._running, *unwritten]))
            except RuntimeError:  # changed while copied: copy again
                continue

    def _abandon_lost(self, lost: list[str]) -> None:
        """Drop tasks a rescue took from this worker (it was silent too long)."""
        for task_id in lost:
            running = self._running.get(task_id)
            if running is not None:
                log.warning(
                    "task %s was taken from this worker; abandoning it",
                    task_id,
                    extra=task_fields(running.task),
                )
                running.lost = True
                running.future.cancel()

    def _describe(self, current: asyncio.Task[Any] | None) -> str:
        """What an asyncio task of this worker is, for the loop-stall warning."""
        if current is None:
            return "the worker's own code"
        name = current.get_name()
        running = self._running.get(name.removeprefix("omniq-task-"))
        if running is not None:
            return f"task {running.task.id} ({running.task.func})"
        return f"asyncio task {name!r}"

    async def _rescues(self) -> None:
        """While holding tasks, check now and then for tasks of dead workers to rescue (an
        idle worker checks from its fetch loop, at the times the database gives)."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if self._running:
                await self._rescue_if_due()

    async def _surplus_watch(self) -> None:
        """With the adaptive prefetch: give back tasks held beyond ``concurrency`` once no task
        has started for HOLD_LIMIT (omniq.worker.prefetch)."""
        while True:
            await asyncio.sleep(HOLD_LIMIT / 2)
            if len(self._running) > 2 * self.concurrency:  # else at most concurrency wait
                await self._release_surplus()

    async def _release_surplus(self) -> None:
        waiting = [r for r in self._running.values() if r.slot_at is None and not r.lost]
        if len(waiting) <= self.concurrency:
            return
        # Since the last start, or since the first task waiting was taken if that is later
        # (slots held by stuck threads are not in _running: no start counts as long ago).
        starts = [r.slot_at for r in self._running.values() if r.slot_at is not None]
        last_start = max(starts, default=0.0)
        blocked = time.monotonic() - max(last_start, waiting[0].taken_at)
        if blocked < HOLD_LIMIT:
            return
        surplus = waiting[self.concurrency :]
        self._adaptive.slowed(blocked)
        for running in surplus:  # they never start here: cancelled while waiting for a slot
            running.lost = True
            running.future.cancel()
        ids = [r.task.id for r in surplus]
        try:
            released = await self.protocol.release(
                ids, self.worker_id, "held for a slot while the tasks ahead ran slow"
            )
        except Exception as exc:  # the fetch loop releases what the database still has
            log.warning("giving back %d held task(s) failed (%s)", len(ids), exc)
            self._reply_lost = True
            return
        self.stats.released += released
        log.info(
            "gave back %d task(s): no task started for %.1fs; holding %d from now on",
            released,
            blocked,
            self.concurrency,
        )

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
            # Forced: the server may be gone; do not wait long for it (rescue covers this).
            limit = FORCED_EXIT_AFTER / 2 if self._forced else None
            released = await asyncio.wait_for(self.protocol.worker_stopped(self.worker_id), limit)
            self.stats.released += released
            if released:
                log.info("returned %d unfinished task(s) to pending", released)
        except Exception as exc:  # the rescue will bring them back once our heartbeat is stale
            log.warning(
                "could not deregister (%s); held tasks will be rescued after %gs",
                exc or type(exc).__name__,
                self.worker_timeout,
            )
        assert self._executor is not None
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._stuck:
            log.warning(
                "%d thread(s) still run given-up task functions: %s",
                len(self._stuck),
                ", ".join(f"{s.task_id} ({s.func})" for s in self._stuck.values()),
            )
        log.info(
            "worker %s stopped: %d succeeded, %d failed, %d retried, %d expired",
            self.worker_id,
            self.stats.succeeded,
            self.stats.failed,
            self.stats.retried,
            self.stats.expired,
        )

    @contextlib.contextmanager
    def _signals(self, loop: asyncio.AbstractEventLoop) -> Any:
        """SIGINT/SIGTERM stop the worker running on ``loop`` (a second one: at once). Plain
        signal handlers, not the loop's: they run even while a task blocks the loop, and after
        a second signal the liveness thread ends the process if the worker has not stopped in
        time. Only the main thread receives signals: elsewhere this does nothing."""
        if (
            not self.install_signal_handlers
            or threading.current_thread() is not threading.main_thread()
        ):
            yield
            return

        def on_signal(_signum: int, _frame: Any) -> None:
            self._signals_received += 1
            if self._signals_received >= 2 and self._liveness is not None:
                self._liveness.exit_deadline = time.monotonic() + FORCED_EXIT_AFTER
            _call_soon(loop, self._request_stop, False)

        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def threads_busy(self) -> bool:
        """True while a task function still runs in a thread (it cannot be interrupted).

        Also after its task was given up (timeout, forced stop): the thread runs on until the
        function returns, so a process that must exit now has to use ``os._exit``.
        """
        with self._threads_lock:
            return self._threads_running > 0

    @property
    def stuck_threads(self) -> int:
        """Threads still running task functions this worker gave up."""
        return len(self._stuck)


class Worker(AsyncWorker):
    """The blocking worker: ``Worker(backend, ...).run(burst=False)`` returns when it stops.

    It runs on the given backend, on the loop that serves the backend's ``_sync`` methods (the
    backend's own thread after ``with backend:`` or on first use; the caller's loop after
    ``async with backend:`` in another thread), and leaves the backend open. Called from the
    main thread, SIGINT and SIGTERM stop it as they stop ``AsyncWorker``.
    """

    def run(self, burst: bool = False) -> WorkerStats:  # type: ignore[override]
        loop = self.backend._sync_loop()
        with self._signals(loop):
            return run_blocking(
                loop,
                lambda: AsyncWorker.run(self, burst),
                stop=lambda: self.stop(force=True),
                what="Worker.run()",
                instead="await AsyncWorker(backend, ...).run()",
            )


class _RaisedInThread(Exception):
    """Carries whatever a task function raised in its thread back to the event loop."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """``loop.call_soon_threadsafe``, quietly doing nothing once the loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _uncancel() -> None:
    """The current asyncio task handled the cancellation (an abort's): it goes on, so it is no
    longer being cancelled (asyncio.timeout and TaskGroup count on that)."""
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        current.uncancel()


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


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
