"""Recording outcomes: batched writes through the worker protocol (omniq_finish_tasks),
counted and logged.

Outcomes wait in memory at most ``flush_interval`` seconds (or until ``flush_size`` of them
have gathered, or the worker has no task left running), then one round trip records them
all. No outcome is dropped silently:

- a transient error (connection lost, failover, timeout, deadlock) keeps the outcomes and
  writes them again, with backoff, until it works or the worker is forced to stop;
- any other error splits the batch, and an outcome the database still refuses is recorded
  as a failure saying why (``OutcomeNotRecorded``); if even that is refused, its task is
  released to pending; if that fails too, it is all tried again later;
- a worker forced to stop (second signal) gives up the writes and says so; its tasks stay
  running under its id until the rescue returns them to pending, as after a crash.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from ..backend.postgres.protocol import Outcome, OutcomeKind, WorkerProtocol
from ..errors import Backoff, is_transient
from ..models._common import dump_json, utcnow
from ..models.task import Task
from ..observability.logs import fields

if TYPE_CHECKING:
    from ..observability.metrics import WorkerMetrics

log = logging.getLogger("omniq.worker")


@dataclass
class WorkerStats:
    """Counts since the worker started."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    expired: int = 0
    lost: int = 0  # outcomes refused because the task had been rescued or cancelled meanwhile
    released: int = 0
    unrecorded: int = 0  # outcomes given up at a forced stop: rescue returns their tasks
    aborted: int = 0  # ended cancelled on an abort request
    batches: int = 0  # dequeues that took tasks (started / batches: how many each took)


NOT_RECORDED = "not recorded"  # the status _write reports for outcomes it gave up on


@dataclass
class _Batch:
    outcomes: list[Outcome] = field(default_factory=list)


def ended(task: Task, started_at: datetime, t0: float, kind: OutcomeKind, **fields: Any) -> Outcome:
    """The outcome of the attempt of ``task`` that started at ``started_at`` (``t0``: its
    ``time.perf_counter()`` then) and ends now: ``result`` or the fields of :func:`failure`."""
    return Outcome(
        task_id=task.id,
        attempt=task.attempts,
        kind=kind,
        func=task.func,
        queue=task.queue_name,
        started_at=started_at,
        finished_at=utcnow(),
        execution_time=time.perf_counter() - t0,
        **fields,
    )


class OutcomeRecorder:
    """Collects outcomes and writes them in batches; runs its flusher with :meth:`run`."""

    def __init__(
        self,
        protocol: WorkerProtocol,
        worker_id: str,
        stats: WorkerStats,
        flush_interval: float,
        flush_size: int,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._protocol = protocol
        self._metrics = metrics
        self._worker_id = worker_id
        self._stats = stats
        self._flush_interval = flush_interval
        self._flush_size = flush_size
        self._batch = _Batch()
        self._writing: list[Outcome] = []  # the outcomes of the write under way
        self._lock = asyncio.Lock()
        self._due = asyncio.Event()
        self._abandoned = asyncio.Event()

    def unwritten_ids(self) -> list[str]:
        """Ids of the outcomes not yet recorded: their tasks are still held (read by the
        heartbeat thread; a plain copy, since the loop may append meanwhile)."""
        return [o.task_id for o in [*self._writing, *self._batch.outcomes]]

    @property
    def idle(self) -> bool:
        """Nothing waiting to be written and no write under way."""
        return not self._batch.outcomes and not self._lock.locked()

    def add(self, outcome: Outcome) -> None:
        """Queue one outcome for the next batch write."""
        outcomes = self._batch.outcomes
        outcomes.append(outcome)
        if len(outcomes) >= self._flush_size or outcome.kind == "aborted":  # someone waits
            self._due.set()
        elif len(outcomes) == 1:
            asyncio.get_running_loop().call_later(self._flush_interval, self._due.set)

    def flush_soon(self) -> None:
        """Write what is waiting now rather than after ``flush_interval``: the worker's last
        running task has ended, so nothing else is about to join the batch. At a trickle the
        write (a durable commit) then lands between tasks, not on the next one's way to start,
        and results show up sooner; a busy worker still batches."""
        if self._batch.outcomes:
            self._due.set()

    async def run(self) -> None:
        """The flusher: write whenever a batch is due, until cancelled."""
        while True:
            await self._due.wait()
            self._due.clear()
            await self.flush()

    async def settle(self) -> None:
        """Wait for a write under way, so cancelling the flusher loses nothing."""
        async with self._lock:
            pass

    def abandon(self) -> None:
        """Stop retrying writes (a forced stop): what is unwritten is logged and left to rescue."""
        self._abandoned.set()

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[set[str]]:
        """Hold off writes; yields the ids of the outcomes still waiting to be written."""
        async with self._lock:
            yield {o.task_id for o in self._batch.outcomes}

    async def flush(self) -> None:
        """Write the pending outcomes (see the module's docstring for what errors do)."""
        async with self._lock:
            outcomes, self._batch = self._batch.outcomes, _Batch()
            if outcomes:
                self._writing = outcomes
                try:
                    statuses = await self._write(outcomes)
                finally:
                    self._writing = []
                for outcome in outcomes:
                    self._count(outcome, statuses.get(outcome.task_id))

    async def _write(self, outcomes: list[Outcome]) -> dict[str, str]:
        """Record ``outcomes``; id -> new task status (absent: refused, the task was not ours)."""
        backoff = Backoff()
        while not self._abandoned.is_set():
            try:
                return await self._protocol.finish(outcomes, self._worker_id)
            except Exception as exc:
                if is_transient(exc):
                    delay = backoff.next()
                    log.warning(
                        "recording %d outcome(s) failed (%s); retrying in %.1fs",
                        len(outcomes),
                        _text(exc),
                        delay,
                    )
                    await self._pause(delay)
                    continue
                if len(outcomes) == 1:
                    return await self._write_refused(outcomes[0], exc)
                log.warning(
                    "recording a batch of %d outcomes failed (%s); recording them one by one",
                    len(outcomes),
                    _text(exc),
                )
                statuses: dict[str, str] = {}
                for outcome in outcomes:
                    statuses.update(await self._write([outcome]))
                return statuses
        return dict.fromkeys((o.task_id for o in outcomes), NOT_RECORDED)

    async def _write_refused(self, outcome: Outcome, error: Exception) -> dict[str, str]:
        """One outcome the database refuses for a reason other than a lost connection."""
        task_id = outcome.task_id
        replacement = dataclasses.replace(
            outcome,
            kind="failure",
            result=None,
            error=storable(
                f"the task ran, but its outcome ({outcome.kind}) could not be recorded: "
                f"{_text(error)}"
            ),
            error_type="OutcomeNotRecorded",
            traceback=None,
        )
        backoff = Backoff(first=0.5)
        while not self._abandoned.is_set():
            log.error(
                "recording the outcome of %s (%s) failed: %s; recording it as a failure instead",
                task_id,
                outcome.func,
                _text(error),
                extra=fields_of(outcome),
            )
            try:
                return await self._protocol.finish([replacement], self._worker_id)
            except Exception as exc:
                if is_transient(exc):
                    error = exc
                    await self._pause(backoff.next())
                    continue
                log.error(
                    "recording that failure failed too (%s); releasing %s",
                    _text(exc),
                    task_id,
                    extra=fields_of(outcome),
                )
                try:
                    released = await self._protocol.release(
                        [task_id],
                        self._worker_id,
                        f"its outcome could not be recorded: {_text(exc)}",
                    )
                    self._stats.released += released
                    return {task_id: "released"} if released else {}
                except Exception as again:  # keep it and try it all again later
                    error = again
                await self._pause(backoff.next())
        return {task_id: NOT_RECORDED}

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._abandoned.wait(), seconds)

    def _count(self, outcome: Outcome, status: str | None) -> None:
        """Tally an outcome by the status the database gave the task, and log it for people."""
        task_id, func = outcome.task_id, outcome.func
        extra = fields_of(outcome)
        if status is None:
            self._stats.lost += 1
            log.warning(
                "outcome of %s (attempt %s) refused: the task is no longer held by this worker "
                "in that attempt (rescued or cancelled meanwhile, or recorded already by a "
                "write whose reply was lost)",
                task_id,
                outcome.attempt,
                extra=extra,
            )
            return
        if status == NOT_RECORDED:
            self._stats.unrecorded += 1
            log.warning(
                "outcome of %s %s not recorded: the worker was forced to stop first; the task "
                "stays running under this worker's id until the rescue returns it to pending",
                task_id,
                func,
                extra=extra,
            )
            return
        if status == "released":
            log.warning(
                "released  %s %s: its outcome could not be recorded; it runs again",
                task_id,
                func,
                extra=extra,
            )
            return
        if self._metrics is not None:
            self._metrics.task_ended(outcome.queue, func, status, outcome.execution_time)
        if status == "completed":
            self._stats.succeeded += 1
            log.info(
                "done     %s %s in %.1f ms",
                task_id,
                func,
                (outcome.execution_time or 0) * 1000,
                extra=extra,
            )
            return
        if status == "pending":
            self._stats.retried += 1
        elif status == "expired":
            self._stats.expired += 1
        elif status == "cancelled":
            self._stats.aborted += 1
        else:
            self._stats.failed += 1
        word = {"pending": "retry", "failed": "failed", "expired": "expired"}.get(status, status)
        log.info("%-8s %s %s: %s", word, task_id, func, outcome.error, extra=extra)


def fields_of(outcome: Outcome) -> dict[str, Any]:
    """The structured log fields of a line about ``outcome``'s task."""
    return fields(outcome.task_id, outcome.func, outcome.queue, outcome.attempt)


def failure(exc: BaseException) -> dict[str, str]:
    """The outcome fields (error, error_type, traceback) of a run that raised ``exc``, whatever
    ``exc`` is.

    Total: an exception whose ``__str__`` or ``__repr__`` raises (even a BaseException), a
    ``SystemExit`` or ``KeyboardInterrupt`` from the task, a traceback that cannot be
    formatted: each still gives a failure with its type and as much text as can be had.
    """
    error_type = _safely(lambda: type(exc).__name__, "BaseException")
    message = _safely(lambda: _message(exc), "") or f"<a {error_type} whose text cannot be read>"
    trace = _safely(lambda: user_traceback(exc), "")
    if not trace:
        frames = _safely(lambda: "".join(traceback.format_tb(exc.__traceback__)), "")
        trace = f"Traceback (most recent call last):\n{frames}{error_type}: {message}\n"
    return {
        "error": storable(message),
        "error_type": storable(error_type),
        "traceback": storable(trace),
    }


def _message(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"the task called sys.exit({exc.code!r}) (a task cannot stop its worker)"
    if isinstance(exc, KeyboardInterrupt):
        return "the task raised KeyboardInterrupt (only a signal to the worker stops it)"
    try:
        text = str(exc)
    except BaseException:  # a hostile __str__: the repr, if that works
        shown = _safely(lambda: repr(exc), "")
        return f"{shown} (its __str__ raised an exception)" if shown else ""
    return text if isinstance(text, str) and text else _safely(lambda: repr(exc), "")


def _safely(make: Any, default: str) -> str:
    try:
        value = make()
        return value if isinstance(value, str) else default
    except BaseException:  # describing a hostile exception must not fail
        return default


def _text(exc: BaseException) -> str:
    """An error for a log line, even if its ``__str__`` raises."""
    return _safely(lambda: str(exc) or type(exc).__name__, type(exc).__name__)


def storable(text: str) -> str:
    """Error text PostgreSQL can store: NUL (which TEXT and JSONB refuse) and lone surrogates
    (not UTF-8) are written as escapes, so an odd exception message cannot keep an outcome
    from being recorded."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text


def checked_result(value: Any, task: Task) -> orjson.Fragment:
    """The return value as JSON, checked once: a TypeError fails the task with a clear error,
    and the batch write embeds the text as it is instead of serialising the value again."""
    return orjson.Fragment(dump_json(value, f"the return value of {task.func}"))


_PLUMBING = (
    os.path.dirname(__file__),  # the worker package
    asyncio.__file__.rsplit("/", 1)[0],
    concurrent.futures.__file__.rsplit("/", 1)[0],
)


def user_traceback(exc: BaseException) -> str:
    """The traceback from the task function down: the worker's own frames are left out."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PLUMBING):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
