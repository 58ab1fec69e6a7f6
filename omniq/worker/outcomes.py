"""Recording outcomes: batched writes through omniq_finish_tasks, counted and logged.

Outcomes wait in memory at most ``flush_interval`` seconds (or until ``flush_size`` of them
have gathered), then one round trip records them all. A database error keeps them and tries
again; a worker that dies first leaves its tasks running under its id, to be rescued.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..backend.postgres.queue import AsyncPostgresQueue
from ..models._common import dump_json, utcnow
from ..models.task import Task

log = logging.getLogger("omniq.worker")


@dataclass
class WorkerStats:
    """Counts since the worker started."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    expired: int = 0
    lost: int = 0  # outcomes discarded because the task had been rescued meanwhile
    released: int = 0


@dataclass
class _Batch:
    outcomes: list[dict[str, Any]] = field(default_factory=list)


class OutcomeRecorder:
    """Collects outcomes and writes them in batches; runs its flusher with :meth:`run`."""

    def __init__(
        self,
        queue: AsyncPostgresQueue,
        worker_id: str,
        stats: WorkerStats,
        flush_interval: float,
        flush_size: int,
    ) -> None:
        self._queue = queue
        self._worker_id = worker_id
        self._stats = stats
        self._flush_interval = flush_interval
        self._flush_size = flush_size
        self._batch = _Batch()
        self._lock = asyncio.Lock()
        self._due = asyncio.Event()

    @property
    def idle(self) -> bool:
        """Nothing waiting to be written and no write under way."""
        return not self._batch.outcomes and not self._lock.locked()

    def add(self, task: Task, outcome: dict[str, Any], t0: float) -> None:
        """Queue one outcome (started with id, attempt, started_at and the result or error)."""
        outcome["finished_at"] = utcnow()
        outcome["execution_time"] = time.perf_counter() - t0
        outcome["func"] = task.func  # for the progress log; ignored by the database
        outcomes = self._batch.outcomes
        outcomes.append(outcome)
        if len(outcomes) >= self._flush_size:
            self._due.set()
        elif len(outcomes) == 1:
            asyncio.get_running_loop().call_later(self._flush_interval, self._due.set)

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

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[set[str]]:
        """Hold off writes; yields the ids of the outcomes still waiting to be written."""
        async with self._lock:
            yield {o["id"] for o in self._batch.outcomes}

    async def flush(self) -> None:
        """Write the pending outcomes; on a database error keep them and try again later."""
        async with self._lock:
            outcomes, self._batch = self._batch.outcomes, _Batch()
            if outcomes:
                statuses = await self._write(outcomes)
                for outcome in outcomes:
                    self._count(outcome, statuses.get(outcome["id"]))

    async def _write(self, outcomes: list[dict[str, Any]]) -> dict[str, str]:
        delay = 0.1
        while True:
            try:
                return await self._queue.finish_tasks(outcomes, self._worker_id)
            except (ConnectionError, OSError, TimeoutError) as exc:  # transient: keep and retry
                log.warning(
                    "recording %d outcome(s) failed (%s); retrying in %.1fs",
                    len(outcomes),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                if len(outcomes) == 1:
                    log.exception(
                        "could not record the outcome of %s; it stays held and is requeued at shutdown",
                        outcomes[0]["id"],
                    )
                    return {}
                log.exception(
                    "recording a batch failed; recording its %d outcomes one by one", len(outcomes)
                )
                statuses: dict[str, str] = {}
                for outcome in outcomes:
                    statuses.update(await self._write([outcome]))
                return statuses

    def _count(self, outcome: dict[str, Any], status: str | None) -> None:
        """Tally an outcome by the status the database gave the task, and log it for people."""
        task_id, func = outcome["id"], outcome["func"]
        if status is None:
            self._stats.lost += 1
            log.warning("outcome of %s discarded: the task was taken from this worker", task_id)
            return
        if status == "completed":
            self._stats.succeeded += 1
            log.info("done     %s %s in %.1f ms", task_id, func, outcome["execution_time"] * 1000)
            return
        if status == "pending":
            self._stats.retried += 1
        elif status == "expired":
            self._stats.expired += 1
        else:
            self._stats.failed += 1
        word = {"pending": "retry", "failed": "failed", "expired": "expired"}.get(status, status)
        log.info("%-8s %s %s: %s", word, task_id, func, outcome.get("error"))


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
