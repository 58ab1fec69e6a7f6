"""The worker's prefetch: fixed when set; by default adapted to how fast tasks run, so short
tasks come in big batches and long ones as before, and tasks taken while they were short are
given back when they turn slow (omniq/worker/prefetch.py). What a worker took per dequeue is
``stats.started / stats.batches``."""

from __future__ import annotations

import math

from omniq.worker import AsyncWorker
from omniq.worker.prefetch import HOLD_LIMIT, MAX_FACTOR
from tests.support.db import Database

SLEEP = "tests.support.jobs.async_sleep"


async def _burst(backend, tasks: int, seconds: float, **options) -> tuple[int, int]:
    """Run ``tasks`` async tasks of ``seconds`` with a burst worker; (started, batches)."""
    await backend.task_queue.enqueue_calls(SLEEP, [(seconds,)] * tasks)
    worker = AsyncWorker(backend, ["default"], install_signal_handlers=False, **options)
    stats = await worker.run(burst=True)
    assert stats.succeeded == tasks
    return stats.started, stats.batches


async def test_short_tasks_come_in_batches_bigger_than_twice_concurrency(backend) -> None:
    """Tasks that finish in microseconds, against a dequeue of about a millisecond: the worker
    holds more than ``concurrency`` beyond the running ones (up to 20 times as many)."""
    started, batches = await _burst(backend, 600, 0.0, concurrency=2)
    assert started / batches > 2 * 2, (started, batches)
    assert started / batches <= 2 + MAX_FACTOR * 2


async def test_long_tasks_are_held_as_before(backend) -> None:
    """Tasks far longer than a dequeue: at most ``2 * concurrency`` held, as with the fixed
    default before, so no task waits long behind this worker's busy slots."""
    started, batches = await _burst(backend, 12, 0.05, concurrency=2)
    assert batches >= math.ceil(12 / (2 * 2)), (started, batches)


async def test_tasks_held_behind_slow_ones_are_given_back(backend, db: Database) -> None:
    """Short tasks, then slow ones in the same queue: the worker took slow tasks in a batch
    sized for short ones; once no task has started for HOLD_LIMIT, those waiting beyond
    ``concurrency`` go back to pending (a 'requeued' event each, no retry counted), and every
    task still runs once."""
    await backend.task_queue.enqueue_calls(SLEEP, [(0.0,)] * 200)
    slow = await backend.task_queue.enqueue_calls(SLEEP, [(1.5 * HOLD_LIMIT,)] * 8)
    worker = AsyncWorker(backend, ["default"], concurrency=2, install_signal_handlers=False)
    stats = await worker.run(burst=True)
    assert stats.succeeded == 208 and stats.failed == 0
    assert stats.released > 0, stats
    requeued = await db.rows("events", "event_type = 'requeued'")
    assert len(requeued) == stats.released
    assert {e["task_id"] for e in requeued} <= set(slow)
    assert all("slow" in e["message"] for e in requeued)
    for row in await db.rows("tasks", "id = ANY($1)", slow):
        assert row["status"] == "completed" and row["retry_count"] == 0


async def test_a_prefetch_set_is_kept(backend) -> None:
    """``prefetch=0``: never more than ``concurrency`` taken at once, however short the tasks."""
    started, batches = await _burst(backend, 60, 0.0, concurrency=3, prefetch=0)
    assert batches >= 60 / 3, (started, batches)
