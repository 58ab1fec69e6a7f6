"""Workers and schedulers in this process, through the Python API: ``await AsyncWorker(...).run()``
and the blocking ``Worker(...).run()`` and ``Scheduler(...).run()`` (worker processes:
tests/acceptance/test_worker.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from omniq import Schedule, Task
from omniq.backend.postgres import PostgreSQLBackend, create_postgres_backend
from omniq.models.config import PostgresConfig
from omniq.scheduler import Scheduler
from omniq.worker import AsyncWorker, Worker
from tests.support.db import drop_schemas, run_in_thread, unique_schema
from tests.support.jobs import read_trace


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


# -- the blocking runners run on the backend they are given ----------------------------------


async def test_the_blocking_worker_runs_on_the_given_backend(backend, db) -> None:
    """``Worker.run()`` used to build a backend of its own from the config (a second pool,
    ``worker.backend`` replaced) and close it. It runs on the user's backend, here open on this
    test's loop, which serves it from another thread; the backend stays open afterwards."""
    tasks = [Task(func="tests.support.jobs.add", args=(i, 1)) for i in range(3)]
    await backend.task_queue.enqueue_many(tasks)
    worker = Worker(backend, "default", concurrency=2)
    stats = await asyncio.to_thread(worker.run, True)
    assert worker.backend is backend and stats.succeeded == 3
    assert await backend.task_queue.get_queue_size() == 0  # still open
    assert [(await db.row("results", t.id))["result"] for t in tasks] == [1, 2, 3]


def test_the_blocking_worker_and_scheduler_on_a_backend_opened_with_with(pg_dsn: str) -> None:
    """Blocking code: ``with create_postgres_backend(...) as backend`` and the runners on it,
    the worker in burst mode, the scheduler until its ``threading.Event`` is set (it used to
    ignore the event and run forever)."""
    schema = unique_schema()
    try:
        with create_postgres_backend(dsn=pg_dsn, schema=schema) as backend:
            task = Task(func="tests.support.jobs.add", args=(2, 3))
            backend.task_queue.enqueue_sync(task)
            assert Worker(backend, "default").run(burst=True).succeeded == 1
            assert backend.result_storage.get_sync(task.id).result == 5

            every = Schedule(func="tests.support.jobs.noop", interval_seconds=0.2, max_runs=2)
            backend.schedule_storage.save_schedule_sync(every)
            stop, fired = threading.Event(), []
            scheduler = threading.Thread(
                target=lambda: fired.append(Scheduler(backend).run(stop)), daemon=True
            )
            scheduler.start()
            done = lambda: backend.schedule_storage.get_schedule_sync(every.id).status  # noqa: E731
            while done() != "completed":  # fired twice: the scheduler runs
                threading.Event().wait(0.05)
            assert scheduler.is_alive()  # until told to stop
            stop.set()
            scheduler.join(timeout=60)
            assert not scheduler.is_alive() and fired == [2]
            assert backend.task_queue.get_queue_size_sync() == 2  # the backend is still open
    finally:
        run_in_thread(lambda: drop_schemas(pg_dsn, schema))


async def test_blocking_runners_say_what_to_use_in_async_code(backend) -> None:
    """Called on a thread that runs an event loop, a blocking runner would block that loop
    (and the backend on it): it refuses, naming the async runner."""
    with pytest.raises(RuntimeError, match=r"await AsyncWorker\(backend, \.\.\.\)\.run\(\)"):
        Worker(backend, "default", install_signal_handlers=False).run(burst=True)
    with pytest.raises(RuntimeError, match=r"await AsyncScheduler\(backend\)\.run\(stopping\)"):
        Scheduler(backend).run()
    assert await backend.task_queue.get_queue_size() == 0  # the backend is untouched


def test_a_backend_open_on_a_loop_that_is_not_running_is_refused_clearly(pg_dsn: str) -> None:
    """A backend connected by async code on a loop that no longer runs cannot serve a runner
    (its pool belongs to that loop): both runners say so, instead of failing on a closed
    loop or retrying forever."""
    schema = unique_schema()
    backend = PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=schema, max_connections=2))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(backend.connect())  # then the loop stops; the pool stays on it
    try:
        for run in (
            lambda: Worker(backend, "default", install_signal_handlers=False).run(burst=True),
            lambda: Scheduler(backend).run(),
        ):
            with pytest.raises(RuntimeError, match="open on another event loop"):
                run()
    finally:
        loop.run_until_complete(backend.close())
        loop.close()
        backend.close_sync()  # the loop thread the runners' attempt started
        run_in_thread(lambda: drop_schemas(pg_dsn, schema))


# -- rescue checks prompted by new work ---------------------------------------------------------


async def test_a_trickle_of_tasks_prompts_a_rescue_check_at_most_once_a_second(backend) -> None:
    """A worker woken from idle by new work checks for tasks held by dead workers (someone may
    hold tasks now). With one task every 50 ms it used to check after each task: 20 calls of
    omniq_rescue_tasks_v1 for 20 tasks, each costing the server more than the task's enqueue.
    Now at most one such check a second: put off, not dropped, so checks go on as long as
    work keeps appearing."""
    worker = AsyncWorker(backend, ["default"], concurrency=2, install_signal_handlers=False)
    checks: list[float] = []
    rescue = worker.protocol.rescue

    async def counted(worker_id: str) -> Any:
        checks.append(time.monotonic())
        return await rescue(worker_id)

    worker.protocol.rescue = counted  # type: ignore[method-assign]
    running = asyncio.ensure_future(worker.run())
    tasks = [Task(func="tests.support.jobs.add", args=(i, 1)) for i in range(20)]
    for task in tasks:
        await backend.task_queue.enqueue(task)
        await asyncio.sleep(0.05)
    for task in tasks:
        assert (await backend.result_storage.wait(task.id, 10)).status == "success"
    last_work = time.monotonic()
    await asyncio.sleep(1.5)  # a check work prompted is put off by at most a second
    worker.stop()
    await asyncio.wait_for(running, 10)
    # One at start-up, then at most one a second over the ~1 s of work (it was 20).
    assert 2 <= len(checks) <= 5, checks
    assert checks[-1] >= last_work - 1.0, "the last check is at most a second older than the work"


# -- outcomes of a worker with nothing else running -------------------------------------------


async def test_an_idle_workers_outcome_is_written_without_waiting_for_the_batch(backend) -> None:
    """Outcomes are written in batches, at most ``flush_interval`` after the first of them. A
    worker whose last running task just ended writes at once: nothing else is about to join
    the batch, and at a trickle the write would otherwise land on the next task's way to
    start. With a flush_interval of a minute, each result of a trickle is there long before."""
    worker = AsyncWorker(
        backend, ["default"], concurrency=2, flush_interval=60.0, install_signal_handlers=False
    )
    running = asyncio.ensure_future(worker.run())
    try:
        for i in range(3):
            task = Task(func="tests.support.jobs.add", args=(i, 1))
            await backend.task_queue.enqueue(task)
            result = await backend.result_storage.wait(task.id, 20)
            assert result is not None and result.status == "success" and result.result == i + 1
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)


# -- a task taken at a trickle starts before the worker looks again ------------------------------


async def test_a_task_taken_from_a_drained_queue_starts_before_the_next_look(
    backend, make_backend, tmp_path
) -> None:
    """After a dequeue that returned fewer tasks than asked (the queue ran dry), the tasks it
    took begin before the worker builds and sends its next dequeue (likely empty): at a
    trickle that look used to come first, on each task's way to start. The trace shows the
    order: the worker's looks (its calls of take) and each task's start, in one file. The
    producer has a backend of its own, as in production (it would lend the worker its
    connections otherwise)."""
    trace = tmp_path / "trace"
    producer = await make_backend(dsn=backend.config.dsn, schema=backend.config.schema)
    worker = AsyncWorker(backend, ["default"], concurrency=4, install_signal_handlers=False)
    take = worker.protocol.take

    async def traced(*args: Any, **kwargs: Any) -> Any:
        with open(trace, "a") as f:
            f.write("look 0 0\n")
        return await take(*args, **kwargs)

    worker.protocol.take = traced  # type: ignore[method-assign]
    running = asyncio.ensure_future(worker.run())
    try:
        for _ in range(3):
            task = Task(func="tests.support.jobs.async_sleep", args=(0, str(trace)))
            await producer.task_queue.enqueue(task)
            assert (await producer.result_storage.wait(task.id, 20)).status == "success"
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
    events = [what for what, _, _ in read_trace(trace) if what != "end"]
    starts = [n for n, what in enumerate(events) if what == "start"]
    assert len(starts) == 3, events
    for n in starts:  # the look that took it, then the task, then the next look
        assert events[n - 1] == "look" and events[n + 1] == "look", events
