"""Workers in this process, through the Python API: ``await AsyncWorker(...).run()`` and the
blocking ``Worker(...).run()`` (worker processes: tests/acceptance/test_worker.py)."""

from __future__ import annotations

import asyncio

from omniq import Task
from omniq.worker import AsyncWorker, Worker


async def test_async_and_blocking_workers_in_process(backend, db) -> None:
    """The Python API: ``await AsyncWorker(...).run()`` until ``stop()``; ``Worker(...).run()``."""
    first = Task(func="tests.support.jobs.add", args=(1, 2))
    await backend.task_queue.enqueue(first)
    worker = AsyncWorker(backend, ["default"], concurrency=2, install_signal_handlers=False)
    running = asyncio.ensure_future(worker.run())
    assert (await backend.result_storage.wait(first.id, 10)).result == 3
    worker.stop()
    stats = await asyncio.wait_for(running, 10)
    assert stats.succeeded == 1 and stats.failed == 0

    tasks = [Task(func="tests.support.jobs.add", args=(i, i)) for i in range(5)]
    await backend.task_queue.enqueue_many(tasks)
    stats = await asyncio.to_thread(Worker(backend, "default", concurrency=3).run, True)  # burst
    assert stats.succeeded == 5
    assert [(await db.row("results", t.id))["result"] for t in tasks] == [0, 2, 4, 6, 8]
