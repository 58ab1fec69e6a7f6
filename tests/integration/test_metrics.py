"""A worker's Prometheus metrics, in this process: its counters and execution-time histogram
count what really ran, in a registry of its own; the queue-wide gauges come from one query at
scrape time (its plan: tests/integration/test_dashboard_monitor.py, "gauges")."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from prometheus_client import generate_latest

from omniq import Task
from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import Registration, WorkerProtocol
from omniq.identifiers import quote_identifier
from omniq.observability.metrics import WorkerMetrics
from omniq.worker import AsyncWorker
from tests.support.db import Database
from tests.support.metrics import of, samples

ADD, FAIL, FLAKY = (
    "tests.support.jobs.add",
    "tests.support.jobs.fail_always",
    "tests.support.jobs.flaky",
)


async def test_counters_and_histogram_count_what_ran(backend: PostgreSQLBackend, tmp_path) -> None:
    """3 tasks complete, 1 fails for good, 1 fails once, is retried and completes; a second
    worker's metrics in the same process stay apart."""
    queue = backend.task_queue
    await queue.enqueue_many([Task(func=ADD, args=(i, i), queue_name="mail") for i in range(3)])
    await queue.enqueue(Task(func=FAIL, queue_name="mail", max_retries=0))
    flaky = Task(func=FLAKY, args=(str(tmp_path / "flaky"), 1), max_retries=1, retry_delay=0)
    await queue.enqueue(flaky)
    metrics, other = WorkerMetrics(), WorkerMetrics()
    worker = AsyncWorker(
        backend, ["mail", "default"], concurrency=2, metrics=metrics, install_signal_handlers=False
    )
    stats = await asyncio.wait_for(worker.run(burst=True), 60)
    assert (stats.succeeded, stats.failed, stats.retried) == (4, 1, 1)

    got = samples(generate_latest(metrics.registry).decode())
    print({k: v for k, v in got.items() if k[0].startswith("omniq_tasks")})
    assert got[("omniq_tasks_started_total", of("mail", ADD))] == 3
    assert got[("omniq_tasks_completed_total", of("mail", ADD))] == 3
    assert got[("omniq_tasks_started_total", of("mail", FAIL))] == 1
    assert got[("omniq_tasks_failed_total", of("mail", FAIL))] == 1
    assert got[("omniq_tasks_started_total", of("default", FLAKY))] == 2
    assert got[("omniq_tasks_retried_total", of("default", FLAKY))] == 1
    assert got[("omniq_tasks_completed_total", of("default", FLAKY))] == 1
    assert ("omniq_tasks_failed_total", of("default", FLAKY)) not in got
    assert ("omniq_tasks_completed_total", of("mail", FAIL)) not in got
    assert got[("omniq_task_execution_seconds_count", of("mail", ADD))] == 3
    assert got[("omniq_task_execution_seconds_count", of("default", FLAKY))] == 2
    inf = (("func", ADD), ("le", "+Inf"), ("queue", "mail"))
    assert got[("omniq_task_execution_seconds_bucket", inf)] == 3
    assert got[("omniq_task_execution_seconds_sum", of("mail", ADD))] > 0
    assert got[("omniq_tasks_rescued_total", ())] == 0
    assert not any(k[0].startswith("omniq_queue") for k in got)  # no gauges unless asked

    untouched = samples(generate_latest(other.registry).decode())
    assert not any(k[0] == "omniq_tasks_started_total" for k in untouched)


async def test_a_rescue_is_counted_by_the_worker_that_performed_it(
    backend: PostgreSQLBackend, protocol: WorkerProtocol, db: Database
) -> None:
    """Two tasks held by a worker that stopped heartbeating: the worker that rescues them counts 2."""
    tasks = [Task(func=ADD, args=(1, 1)) for _ in range(2)]
    await backend.task_queue.enqueue_many(tasks)
    await protocol.heartbeat(Registration("dead", "box", 1, ["default"], 2))
    assert len(await protocol.take(["default"], 2, "dead")) == 2
    await db.execute(
        f"UPDATE {quote_identifier(db.schema)}.omniq_workers"  # noqa: S608
        " SET last_heartbeat = now() - interval '1 hour' WHERE id = 'dead'"
    )
    metrics = WorkerMetrics()
    worker = AsyncWorker(backend, ["default"], metrics=metrics, install_signal_handlers=False)
    running = asyncio.ensure_future(worker.run())  # not burst: an idle worker rescues
    for task in tasks:
        assert (await backend.result_storage.wait(task.id, 60)).result == 2
    worker.stop()
    stats = await asyncio.wait_for(running, 60)
    assert stats.succeeded == 2
    got = samples(generate_latest(metrics.registry).decode())
    assert got[("omniq_tasks_rescued_total", ())] == 2
    assert got[("omniq_tasks_completed_total", of("default", ADD))] == 2


async def test_the_gauges_are_read_at_scrape_time(backend: PostgreSQLBackend) -> None:
    """With add_gauges, each scrape (from the HTTP server's thread) reads queue_gauges once."""
    metrics = WorkerMetrics()
    metrics.add_gauges(backend.monitor.gauges, asyncio.get_running_loop())
    later = datetime.now(UTC) + timedelta(hours=1)
    await backend.task_queue.enqueue_many(
        [Task(func=ADD, args=(i, 1), queue_name="q1") for i in range(4)]
    )
    await backend.task_queue.enqueue(Task(func=ADD, args=(1, 1), queue_name="q2", run_at=later))
    got = samples((await asyncio.to_thread(generate_latest, metrics.registry)).decode())
    depth = "omniq_queue_depth"
    assert got[(depth, (("queue", "q1"), ("status", "ready")))] == 4
    assert got[(depth, (("queue", "q2"), ("status", "later")))] == 1
    assert got[(depth, (("queue", "q2"), ("status", "ready")))] == 0
    assert got[("omniq_workers_alive", ())] == 0
    assert got[("omniq_queue_oldest_ready_age_seconds", (("queue", "q2"),))] == 0
    await backend.task_queue.enqueue(Task(func=ADD, args=(1, 1), queue_name="q2"))
    again = samples((await asyncio.to_thread(generate_latest, metrics.registry)).decode())
    assert again[(depth, (("queue", "q2"), ("status", "ready")))] == 1  # read again, not cached
