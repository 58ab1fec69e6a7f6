"""What the fault and failover tests share: reporting figures, producing through a fault with
the README's retry policy, and directories for servers of a test's own."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.embedded import find_bindir
from omniq.errors import DatabaseConnectionError, DuplicateTaskError
from omniq.models.task import Task


def report(record_property: Any, scenario: str, **figures: Any) -> None:
    for key, value in figures.items():
        record_property(f"{scenario}.{key}", value)
    print(f"\n{scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def tasks_of(keys: list[str], path: str, seconds: float, **fields: Any) -> list[Task]:
    return [
        Task(func="tests.support.fault_jobs.record_run", args=(path, key, seconds), **fields)
        for key in keys
    ]


def server_base(prefix: str) -> Path:
    """A fresh directory for servers of a test's own (skips without server binaries). As root
    the servers run as `postgres`, which must be able to enter it."""
    try:
        find_bindir()
    except RuntimeError as exc:
        pytest.skip(f"needs PostgreSQL server binaries for a server of its own: {exc}")
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o755)
    return base


async def enqueue_with_retry(
    backend: PostgreSQLBackend, task: Task, errors: list[Exception], max_delay: float = 1.0
) -> bool:
    """The producer's documented policy (README, Crashes and at-least-once): on a connection
    error retry the *same* task (same id) with backoff; a DuplicateTaskError on a retry means
    the earlier try was committed and only its reply was lost. True if that happened."""
    delay = 0.05
    retried = False
    while True:
        try:
            await backend.task_queue.enqueue(task)
            return False
        except DuplicateTaskError:
            if not retried:
                raise
            return True
        except DatabaseConnectionError as exc:
            errors.append(exc)
            retried = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


async def produce_through(
    producer: PostgreSQLBackend, path: str, total: int, fault_after: int, fault: Any
) -> tuple[dict[str, str], list[Exception], int, float]:
    """Enqueue ``total`` tasks one at a time with the README's retry policy; after the
    ``fault_after``-th, run ``fault()`` (blocking, in a thread) while enqueueing goes on.
    Returns (acknowledged id -> key, errors seen, replies lost, seconds the fault took)."""
    acked: dict[str, str] = {}
    errors: list[Exception] = []
    replies_lost = 0
    due = asyncio.Event()

    async def produce() -> None:
        nonlocal replies_lost
        for i in range(total):
            (task,) = tasks_of([f"t{i}"], path, 0.02, max_retries=10)
            replies_lost += await enqueue_with_retry(producer, task, errors)
            acked[task.id] = f"t{i}"
            if i == fault_after:
                due.set()
            await asyncio.sleep(0.01)

    async def strike() -> float:
        await due.wait()
        t0 = time.monotonic()
        await asyncio.to_thread(fault)
        return time.monotonic() - t0

    _, took = await asyncio.wait_for(asyncio.gather(produce(), strike()), 180)
    return acked, errors, replies_lost, took
