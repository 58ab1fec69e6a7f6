"""Task functions for the abort tests (tests/integration/test_abort.py,
tests/acceptance/test_abort_workers.py) and scripts/bench_abort: each writes what
``omniq.current_task()`` says to a file when it starts, so a test knows it runs, and then
waits to be aborted in its own way. Also the latency measurement they share."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import omniq
from omniq import Task
from omniq.backend.postgres import PostgreSQLBackend


def _started(path: str) -> omniq.TaskContext:
    ctx = omniq.current_task()
    seen = {
        "id": ctx.id,
        "attempt": ctx.attempt,
        "retry_count": ctx.retry_count,
        "worker_id": ctx.worker_id,
        "queue": ctx.queue,
        "func": ctx.func,
        "at": time.time(),
    }
    with Path(path).open("a") as f:
        f.write(json.dumps(seen) + "\n")
    return ctx


def started(path: str | Path) -> list[dict]:
    """What the tasks that started wrote, in order."""
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


async def sleeper(path: str) -> str:
    """An async task that would run for an hour: an abort cancels it."""
    _started(path)
    await asyncio.sleep(3600)
    return "woke up"


async def swallower(path: str) -> str:
    """An async task that swallows the cancellation and returns a value."""
    _started(path)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        return "swallowed the cancel"
    return "woke up"


def polite(path: str) -> str:
    """A thread task that checks for an abort between steps, and stops as asked."""
    ctx = _started(path)
    for _ in range(360_000):
        if ctx.wait_for_abort(0.01):
            ctx.raise_if_aborted()
    return "never asked"


def stubborn(path: str) -> str:
    """A thread task that sees the request but returns a value anyway."""
    _started(path)
    while not omniq.current_task().should_abort():
        time.sleep(0.01)
    return "done anyway"


def ignorer(path: str, seconds: float) -> str:
    """A thread task that never looks: it runs its course whatever happens."""
    _started(path)
    time.sleep(seconds)
    return "ignored"


def quick(path: str) -> str:
    _started(path)
    return "quick"


async def abort_latencies(
    backend: PostgreSQLBackend, path: str, count: int, func: str = "sleeper"
) -> list[float]:
    """Start ``count`` tasks of ``func`` on the workers running, wait until all of them run,
    then abort them one at a time: seconds from the abort_task call to the stored result."""
    tasks = [Task(func=f"{__name__}.{func}", args=(path,)) for _ in range(count)]
    await backend.task_queue.enqueue_many(tasks)
    deadline = time.monotonic() + 120
    while len(started(path)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(started(path))} of {count} tasks started")
        await asyncio.sleep(0.05)
    latencies = []
    for task in tasks:
        t0 = time.perf_counter()
        assert await backend.task_queue.abort_task(task.id, "latency", requested_by="bench")
        result = await backend.result_storage.wait(task.id, 60)
        latencies.append(time.perf_counter() - t0)
        assert result is not None and result.status == "cancelled", (task.id, result)
    return latencies


def summary(latencies: list[float]) -> str:
    """p50, p95 and max in milliseconds."""
    ms = sorted(x * 1000 for x in latencies)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return (
        f"{len(ms)} aborts: p50 {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, "
        f"max {ms[-1]:.1f} ms"
    )
