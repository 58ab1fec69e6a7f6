"""The sync API: ``with`` and ``_sync`` methods, from plain code, from threads of a program
that runs its own event loop, and the clear error instead of a deadlock on the owning loop."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from omniq.backend.postgres import (
    AsyncPostgresEventStorage,
    AsyncPostgresQueue,
    AsyncPostgresResultStorage,
    AsyncPostgresScheduleStorage,
    PostgresEventStorage,
    PostgreSQLBackend,
    PostgresQueue,
    PostgresResultStorage,
    PostgresScheduleStorage,
    create_async_postgres_backend,
    create_postgres_backend,
)
from omniq.models.result import TaskResult
from omniq.models.task import Task
from tests.support.db import Database, drop_schemas, latest_migration, run_in_thread, unique_schema
from tests.support.waits import LONG

EXPECTED = {
    PostgresQueue: """enqueue enqueue_many dequeue dequeue_many get_task update_task delete_task
        cancel_task cancel_tasks retry_tasks list_tasks get_queue_size cleanup_expired_tasks
        purge_finished_tasks requeue_stalled next_due_at""",
    PostgresResultStorage: "set get list_results delete cleanup_expired_results wait",
    PostgresEventStorage: "log_event log_events get_events cleanup_old_events",
    PostgresScheduleStorage: """save_schedule get_schedule list_schedules delete_schedule
        pause_schedule resume_schedule cancel_schedule get_ready_schedules fire_due_schedules
        cleanup_expired_schedules next_schedule_at""",
    PostgreSQLBackend: "connect close migrate schema_version listener",
}


def loop_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "omniq-loop")


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_every_async_method_has_a_generated_sync_twin(cls: type) -> None:
    public = {
        name
        for name, fn in inspect.getmembers(cls, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }
    assert set(EXPECTED[cls].split()) <= public
    for name in getattr(cls, "_async_only", frozenset()):
        assert not hasattr(cls, f"{name}_sync")  # its result would belong to another loop
    for name in public - getattr(cls, "_async_only", frozenset()):
        twin = getattr(cls, f"{name}_sync")
        assert not inspect.iscoroutinefunction(twin)
        # Same parameters, defaults and result as the async method (scripts/unasync copies them).
        assert inspect.signature(twin) == inspect.signature(getattr(cls, name))


def test_components_have_the_specified_classes() -> None:
    backend = create_postgres_backend()  # nothing connects before first use
    for attr, async_cls, sync_cls in (
        ("task_queue", AsyncPostgresQueue, PostgresQueue),
        ("result_storage", AsyncPostgresResultStorage, PostgresResultStorage),
        ("event_storage", AsyncPostgresEventStorage, PostgresEventStorage),
        ("schedule_storage", AsyncPostgresScheduleStorage, PostgresScheduleStorage),
    ):
        component = getattr(backend, attr)
        assert isinstance(component, async_cls) and isinstance(component, sync_cls)
    assert isinstance(create_async_postgres_backend(), PostgreSQLBackend)


def test_with_statement_opens_and_closes(pg_dsn: str) -> None:
    schema = unique_schema()
    threads = loop_threads()
    backend = create_postgres_backend(dsn=pg_dsn, schema=schema)
    assert loop_threads() == threads  # nothing started before use
    try:
        with backend as opened:
            assert opened is backend
            task = Task(func="mymodule.my_function", args=(1, 2, 3), queue_name="default")
            backend.task_queue.enqueue_sync(task)
            got = backend.task_queue.dequeue_sync(["default"])
            assert got is not None and got.id == task.id
            assert backend.schema_version_sync() == latest_migration()
            assert loop_threads() == threads + 1
        assert loop_threads() == threads
        assert "closed" in repr(backend)
        with backend:  # reusable
            assert backend.task_queue.get_queue_size_sync() == 0
    finally:
        run_in_thread(lambda: drop_schemas(pg_dsn, schema))


def test_sync_without_with_connects_on_first_use(pg_dsn: str) -> None:
    schema = unique_schema()
    backend = create_postgres_backend(dsn=pg_dsn, schema=schema)
    threads = loop_threads()
    try:
        backend.task_queue.enqueue_sync(Task(func="m.f"))
        assert backend.task_queue.get_queue_size_sync() == 1
    finally:
        backend.close_sync()
        run_in_thread(lambda: drop_schemas(pg_dsn, schema))
    assert loop_threads() == threads


def test_sync_calls_from_many_threads(sync_backend: PostgreSQLBackend) -> None:
    def produce(n: int) -> list[str]:
        return [
            sync_backend.task_queue.enqueue_sync(Task(func="m.f", args=(n, i))) for i in range(25)
        ]

    with ThreadPoolExecutor(4) as pool:
        ids = [i for batch in pool.map(produce, range(4)) for i in batch]
    assert len(set(ids)) == 100
    assert sync_backend.task_queue.get_queue_size_sync() == 100

    def consume(_: int) -> list[str]:
        got = []
        while (task := sync_backend.task_queue.dequeue_sync(["default"])) is not None:
            got.append(task.id)
        return got

    with ThreadPoolExecutor(4) as pool:
        taken = [i for batch in pool.map(consume, range(4)) for i in batch]
    assert sorted(taken) == sorted(ids)


async def test_sync_backend_in_a_thread_while_this_loop_runs(pg_dsn: str) -> None:
    """A program with its own running event loop uses a sync backend in a worker thread."""
    schema = unique_schema()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    def blocking_work() -> tuple[str, int]:
        with create_postgres_backend(dsn=pg_dsn, schema=schema) as backend:
            task = Task(func="m.f")
            backend.task_queue.enqueue_sync(task)
            backend.result_storage.set_sync(TaskResult(task_id=task.id, status="success"))
            got = backend.task_queue.dequeue_sync(["default"], timeout=5)
            assert got is not None
            return got.id, backend.task_queue.get_queue_size_sync()

    beat = asyncio.ensure_future(ticker())
    try:
        got_id, size = await asyncio.wait_for(asyncio.to_thread(blocking_work), 30)
    finally:
        beat.cancel()
        await drop_schemas(pg_dsn, schema)
    assert size == 0 and got_id
    assert ticks > 0  # this loop kept running meanwhile


async def test_sync_calls_from_threads_reach_the_loop_that_owns_the_backend(
    backend: PostgreSQLBackend, db: Database
) -> None:
    """Opened with ``async with`` here; other threads use ``_sync`` methods on the same pool."""
    task = Task(func="m.f")
    assert await asyncio.to_thread(backend.task_queue.enqueue_sync, task) == task.id
    assert await db.count("tasks") == 1
    got = await asyncio.to_thread(backend.task_queue.dequeue_sync, ["default"])
    assert got is not None and got.id == task.id
    sizes = await asyncio.gather(
        *(asyncio.to_thread(backend.task_queue.get_queue_size_sync) for _ in range(5))
    )
    assert sizes == [0] * 5


async def test_sync_call_on_the_owning_loop_raises_instead_of_deadlocking(
    backend: PostgreSQLBackend, db: Database
) -> None:
    with pytest.raises(RuntimeError, match="use the async method with await"):
        backend.task_queue.enqueue_sync(Task(func="m.f"))
    with pytest.raises(RuntimeError, match="would block it forever"):
        backend.result_storage.get_sync("x")
    with pytest.raises(RuntimeError):
        backend.schema_version_sync()
    assert await db.count("tasks") == 0
    assert await backend.task_queue.get_queue_size() == 0  # the loop was never blocked


async def test_with_statement_inside_async_code_does_not_deadlock(pg_dsn: str) -> None:
    """Blocking calls from a coroutine block this loop, but run on the backend's own thread."""
    schema = unique_schema()
    try:
        with create_postgres_backend(dsn=pg_dsn, schema=schema) as backend:
            backend.task_queue.enqueue_sync(Task(func="m.f"))
            assert backend.task_queue.get_queue_size_sync() == 1
    finally:
        await drop_schemas(pg_dsn, schema)


def test_blocking_sync_dequeue_and_wait_wake_on_sync_writes(
    sync_backend: PostgreSQLBackend,
) -> None:
    queue, results = sync_backend.task_queue, sync_backend.result_storage
    parked = queue.enqueue_sync(Task(func="m.f", queue_name="parked"))  # waited for, below
    # Both wait LONG; woken by the sync writes' NOTIFY, they return well before that.
    with ThreadPoolExecutor(2) as pool:
        taken = pool.submit(queue.dequeue_sync, ["default"], LONG)
        waited = pool.submit(results.wait_sync, parked, LONG)
        threading.Event().wait(0.3)  # both are waiting on LISTEN now
        assert not taken.done() and not waited.done()
        queue.enqueue_sync(Task(func="m.f", id="the-task"))
        got = taken.result(timeout=LONG / 2)
        assert got is not None and got.id == "the-task"
        running = queue.dequeue_sync(["parked"])
        assert running is not None and running.id == parked
        assert not waited.done()  # running is not final
        results.set_sync(TaskResult(task_id=parked, status="success", result=5))
        result = waited.result(timeout=LONG / 2)
        assert result is not None and result.result == 5


def _in_child(work: Callable[[], str], timeout: float = 30.0) -> tuple[int, str]:
    """Run ``work`` in a forked child; (exit status, what it wrote). The child never outlives
    ``timeout``: a hang shows as SIGKILL, not as a stuck test."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        os.close(read_end)
        code = 0
        try:
            text = work()
        except BaseException as exc:
            text, code = f"{type(exc).__name__}: {exc}", 1
        os.write(write_end, text.encode())
        os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.05)
        with os.fdopen(read_end, "rb") as pipe:
            return status, pipe.read().decode()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_sync_backend_after_fork_starts_afresh_in_the_child(
    sync_backend: PostgreSQLBackend,
) -> None:
    """Issue 10, defect 5: a child forked after the sync backend was used sees the parent's
    loop as running, but not its thread: its first call used to hang forever. Now the child
    opens a pool of its own, and the parent's connections are left alone."""
    queue = sync_backend.task_queue
    before = Task(func="m.f", queue_name="forked")
    queue.enqueue_sync(before)

    def child() -> str:
        got = queue.get_task_sync(before.id)
        made = queue.enqueue_sync(Task(func="m.g", queue_name="forked"))
        return f"{got.id if got else None} {made}"

    status, said = _in_child(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, said)
    seen, made = said.split()
    assert seen == before.id
    assert queue.get_task_sync(made) is not None  # the child's write reached the database
    assert queue.get_queue_size_sync("forked") == 2  # the parent's pool still works


def test_async_backend_after_fork_does_not_use_the_parents_kept_connection(
    pg_dsn: str, schema_name: str
) -> None:
    """The parent's last operation keeps its pooled connection in hand (connection.Spare). A
    child forked then must open its own: the kept one's socket and loop are the parent's (the
    child's first call would hang on them, or talk over the parent's session)."""
    backend = create_postgres_backend(dsn=pg_dsn, schema=schema_name, max_connections=3)

    async def enqueue(name: str) -> str:
        return await backend.task_queue.enqueue(Task(func="m.f", queue_name=name))

    async def parent_first() -> str:
        made = await enqueue("forked")
        assert backend._spare.conn is not None  # kept in hand when the child is forked
        return made

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(parent_first())

        def child() -> str:
            return asyncio.run(enqueue("forked"))

        status, said = _in_child(child)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, said)
        assert loop.run_until_complete(backend.task_queue.get_task(said)) is not None
        assert loop.run_until_complete(backend.task_queue.get_queue_size("forked")) == 2
        loop.run_until_complete(backend.close())
    finally:
        loop.close()
        run_in_thread(lambda: drop_schemas(pg_dsn, schema_name))
