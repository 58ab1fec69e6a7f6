"""Aborting tasks (issue 13, part 4): abort_task, omniq_abort_task and the worker's side.

The database part through the worker protocol (a test plays the worker, so the races are set
up at the exact point), then an in-process AsyncWorker for the task side: an ``async def`` task
is cancelled, a thread task sees ``should_abort()``, and ``omniq.current_task()`` tells a task
who it is. Real worker processes and the latency: tests/acceptance/test_abort_workers.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import omniq
from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import Registration, WorkerProtocol, outcomes_json
from omniq.identifiers import quote_identifier
from omniq.models.task import Task
from omniq.worker import AsyncWorker
from tests.support.abort_jobs import started
from tests.support.db import Database
from tests.support.outcomes import outcome
from tests.support.processes import wait_until

CALLBACKS = {"on_success": "m.ok", "on_failure": "m.bad", "on_complete": "m.all"}
JOBS = "tests.support.abort_jobs"


async def violations(db: Database) -> list[dict[str, Any]]:
    sql = f"SELECT * FROM {quote_identifier(db.schema)}.omniq_check_invariants()"  # noqa: S608
    return [dict(r) for r in await db.conn.fetch(sql)]


async def task_row(db: Database, task_id: str) -> dict[str, Any]:
    row = await db.row("tasks", task_id)
    assert row is not None, task_id
    return row


async def take(backend: PostgreSQLBackend, task: Task, worker_id: str = "w1") -> Task:
    """Enqueue ``task`` and take it as worker ``worker_id`` does: it is running."""
    await backend.task_queue.enqueue(task)
    (running,) = await WorkerProtocol(backend).take([task.queue_name], 1, worker_id)
    assert running.id == task.id
    return running


async def assert_aborted(db: Database, task_id: str, by: str, reason: str | None) -> None:
    """Ended once, cancelled, with a result and a final event that name who asked."""
    text = f"aborted by {by}" + (f": {reason}" if reason else "")
    assert (await task_row(db, task_id))["status"] == "cancelled"
    result = await db.row("results", task_id)
    assert result is not None and result["status"] == "cancelled", result
    assert result["error"] == text and result["result"] is None
    events = await db.rows("events", "task_id = $1 AND event_type = 'cancelled'", task_id)
    assert len(events) == 1 and events[0]["message"].startswith(text), events


# -- the database side ---------------------------------------------------------------------


async def test_abort_of_a_task_that_has_not_started_is_a_plain_cancel(backend, db) -> None:
    """Pending (and waiting) tasks are cancelled at once, dependents and callbacks as for any
    cancel; finished tasks and unknown ids: False, nothing changed."""
    queue = backend.task_queue
    parent = Task(func="m.parent", callbacks=CALLBACKS)
    child = Task(func="m.child", dependencies=[parent.id])
    await queue.enqueue_many([parent, child])
    assert await queue.abort_task(parent.id, "not needed", requested_by="alice") is True
    await assert_aborted(db, parent.id, "alice", "not needed")
    assert (await task_row(db, child.id))["status"] == "cancelled"
    callbacks = await db.rows("tasks", "metadata ->> 'callback_of' = $1", parent.id)
    assert [c["metadata"]["callback"] for c in callbacks] == ["on_complete"]

    before = await task_row(db, parent.id), await db.row("results", parent.id)
    assert await queue.abort_task(parent.id) is False  # finished: nothing changes
    assert (await task_row(db, parent.id), await db.row("results", parent.id)) == before
    assert await queue.abort_task("no-such-task") is False  # like cancel_task
    assert await violations(db) == []


async def test_abort_of_a_running_task_records_the_request_and_notifies_its_worker(
    backend, db, raw
) -> None:
    """The request is kept on the row (the first one: asking again only notifies again) and the
    NOTIFY names the worker, the attempt and the task; the worker's 'aborted' outcome ends the
    task cancelled with an error naming who asked; dependents and callbacks follow."""
    listener = await raw()
    heard: asyncio.Queue[str] = asyncio.Queue()
    channel = await listener.fetchval("SELECT omniq_channel('aborts')")
    await listener.add_listener(channel, lambda *args: heard.put_nowait(args[3]))
    task = Task(func="m.long", callbacks=CALLBACKS)
    child = Task(func="m.child", dependencies=[task.id])
    running = await take(backend, task)
    await backend.task_queue.enqueue(child)

    assert await backend.task_queue.abort_task(task.id, "too slow", requested_by="bob") is True
    assert await asyncio.wait_for(heard.get(), 30) == f"w1 {running.attempts} {task.id}"
    row = await task_row(db, task.id)
    assert row["status"] == "running" and row["abort_requested_by"] == "bob"
    assert await backend.task_queue.abort_task(task.id, "again", requested_by="carol") is True
    assert await asyncio.wait_for(heard.get(), 30) == f"w1 {running.attempts} {task.id}"
    assert (await task_row(db, task.id))["abort_requested_by"] == "bob"

    protocol = WorkerProtocol(backend)
    ended = await protocol.finish([outcome(running, "aborted", error="CancelledError")], "w1")
    assert ended == {task.id: "cancelled"}
    await assert_aborted(db, task.id, "bob", "too slow")
    assert (await db.row("results", task.id))["error_type"] == "TaskAborted"
    assert (await task_row(db, child.id))["status"] == "cancelled"
    callbacks = await db.rows("tasks", "metadata ->> 'callback_of' = $1", task.id)
    assert [c["metadata"]["callback"] for c in callbacks] == ["on_complete"]
    assert await violations(db) == []


@pytest.mark.parametrize("kind", ["success", "failure"])
async def test_once_requested_an_abort_decides_the_end(backend, db, kind) -> None:
    """A worker that reports success (a thread task that returned anyway, or a worker of the
    previous release that cannot hear aborts) or a failure with retries left: the task still
    ends cancelled, its value discarded, not retried."""
    running = await take(backend, Task(func="m.long", max_retries=3))
    assert await backend.task_queue.abort_task(running.id, requested_by="dave") is True
    reported = outcome(running, kind, result=42) if kind == "success" else outcome(running, kind)
    assert await WorkerProtocol(backend).finish([reported], "w1") == {running.id: "cancelled"}
    await assert_aborted(db, running.id, "dave", None)
    assert await violations(db) == []


async def test_a_finish_that_commits_first_wins(backend, db) -> None:
    running = await take(backend, Task(func="m.quick"))
    protocol = WorkerProtocol(backend)
    assert await protocol.finish([outcome(running, "success", result=1)], "w1") == {
        running.id: "completed"
    }
    assert await backend.task_queue.abort_task(running.id) is False
    row = await task_row(db, running.id)
    assert row["status"] == "completed" and row["abort_requested_at"] is None


async def test_a_finish_waiting_behind_the_abort_ends_the_task_cancelled(backend, db, raw) -> None:
    """The abort holds the row until it commits; the finish, blocked meanwhile, then sees the
    request (READ COMMITTED re-reads the row it waited for): one outcome, cancelled."""
    running = await take(backend, Task(func="m.quick"))
    aborter, worker = await raw(), await raw()
    tx = aborter.transaction()
    await tx.start()
    assert await aborter.fetchval("SELECT omniq_abort_task($1, 'race')", running.id) is True
    finishing = asyncio.ensure_future(
        worker.fetch(
            "SELECT * FROM omniq_finish_tasks_v1($1::jsonb, 'w1')",
            outcomes_json([outcome(running, "success", result=1)]),
        )
    )
    pid = worker.get_server_pid()
    await wait_until(
        lambda: db.conn.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ),
        30,
        "the finish to wait for the abort's lock",
    )
    await tx.commit()
    assert [tuple(r) for r in await asyncio.wait_for(finishing, 30)] == [(running.id, "cancelled")]
    user = await aborter.fetchval("SELECT session_user")
    await assert_aborted(db, running.id, user, "race")
    assert await violations(db) == []


async def test_rescue_and_release_end_an_aborted_task_instead_of_running_it_again(
    backend, db
) -> None:
    """The rescue guard: the worker died after the request (its heartbeat went stale), or it
    shut down and released what it held: the task ends cancelled, not pending again."""
    protocol = WorkerProtocol(backend)
    dead = Registration("dead", "h", 1, ["default"], 1, timedelta(seconds=1))
    await protocol.heartbeat(dead)
    lost = await take(backend, Task(func="m.long", max_retries=5), "dead")
    assert await backend.task_queue.abort_task(lost.id, requested_by="erin") is True
    await db.conn.execute(
        f"UPDATE {quote_identifier(db.schema)}.omniq_workers"  # noqa: S608
        " SET last_heartbeat = now() - interval '1 minute' WHERE id = 'dead'"
    )
    assert (await protocol.rescue("other")).rescued == 1
    await assert_aborted(db, lost.id, "erin", None)

    kept = await take(backend, Task(func="m.long"), "leaving")
    other = await take(backend, Task(func="m.other"), "leaving")
    assert await backend.task_queue.abort_task(kept.id, requested_by="erin") is True
    assert await protocol.worker_stopped("leaving") == 1  # the other one goes back to pending
    await assert_aborted(db, kept.id, "erin", None)
    assert (await task_row(db, other.id))["status"] == "pending"

    stalled = await take(backend, Task(func="m.long", queue_name="q2"), None)
    assert await backend.task_queue.abort_task(stalled.id, requested_by="erin") is True
    await backend.task_queue.requeue_stalled(timedelta(0))
    await assert_aborted(db, stalled.id, "erin", None)
    assert await violations(db) == []


async def test_an_operator_retry_forgets_the_request(backend, db) -> None:
    running = await take(backend, Task(func="m.long"))
    assert await backend.task_queue.abort_task(running.id) is True
    await WorkerProtocol(backend).finish([outcome(running, "aborted")], "w1")
    assert await backend.task_queue.retry_tasks([running.id]) == 1
    (second,) = await WorkerProtocol(backend).take(["default"], 1, "w2")
    assert second.id == running.id and (await task_row(db, second.id))["abort_requested_at"] is None
    assert await WorkerProtocol(backend).finish([outcome(second, "success", result=7)], "w2") == {
        second.id: "completed"
    }
    assert await violations(db) == []


async def test_the_invariant_catches_a_request_that_was_not_honoured(backend, db) -> None:
    running = await take(backend, Task(func="m.long"))
    await WorkerProtocol(backend).finish([outcome(running, "success", result=1)], "w1")
    await db.execute(
        "UPDATE {tasks} SET abort_requested_at = now(), abort_requested_by = 'x' WHERE id = $1",
        running.id,
    )
    found = [(v["invariant"], v["task_id"]) for v in await violations(db)]
    assert found == [("abort_not_honoured", running.id)]


def test_abort_task_sync(sync_backend) -> None:
    queue = sync_backend.task_queue
    task = Task(func="m.later")
    queue.enqueue_sync(task)
    assert queue.abort_task_sync(task.id, "changed my mind") is True
    assert queue.get_task_sync(task.id).status == "cancelled"
    assert queue.abort_task_sync(task.id) is False


# -- the worker side -------------------------------------------------------------------------


@pytest.fixture
async def worker(backend: PostgreSQLBackend) -> AsyncIterator[AsyncWorker]:
    """An in-process worker (listening, not burst) on the test's backend."""
    w = AsyncWorker(backend, ["default"], concurrency=4, install_signal_handlers=False)
    running = asyncio.ensure_future(w.run())
    yield w
    w.stop()
    await asyncio.wait_for(running, 30)


async def start(backend: PostgreSQLBackend, func: str, path: Path) -> Task:
    """Enqueue a task of tests.support.abort_jobs and wait until its function runs."""
    task = Task(func=f"{JOBS}.{func}", args=(str(path),))
    await backend.task_queue.enqueue(task)
    await wait_until(lambda: any(s["id"] == task.id for s in started(path)), 60, f"{func} to start")
    return task


@pytest.mark.parametrize("func", ["sleeper", "swallower", "polite", "stubborn"])
async def test_the_worker_stops_a_running_task(backend, db, worker, tmp_path, func) -> None:
    """An async task is cancelled (one that swallows the cancel and returns still ends
    cancelled); a thread task sees should_abort() and stops by raising TaskAborted, or returns
    anyway: cancelled either way, one outcome."""
    task = await start(backend, func, tmp_path / "started")
    assert await backend.task_queue.abort_task(task.id, "test", requested_by="frank") is True
    result = await backend.result_storage.wait(task.id, 60)
    assert result is not None and result.status == "cancelled"
    await assert_aborted(db, task.id, "frank", "test")
    if func == "polite":
        assert "TaskAborted" in (await db.row("results", task.id))["traceback"]
    assert worker.stats.aborted == 1 and worker.stats.failed == 0
    assert await violations(db) == []


async def test_a_prefetched_task_aborted_while_it_waits_for_a_slot(backend, db, tmp_path) -> None:
    """Taken (prefetch) but not started, its slot held by another task: it ends at once,
    never started, while the other one runs on."""
    w = AsyncWorker(backend, ["default"], concurrency=1, prefetch=1, install_signal_handlers=False)
    running = asyncio.ensure_future(w.run())
    try:
        first = await start(backend, "sleeper", tmp_path / "started")
        second = Task(func=f"{JOBS}.quick", args=(str(tmp_path / "started"),))
        await backend.task_queue.enqueue(second)
        await wait_until(
            lambda: _status_is(backend, second.id, "running"), 60, "the second task to be taken"
        )
        assert await backend.task_queue.abort_task(second.id, requested_by="ivy") is True
        assert (await backend.result_storage.wait(second.id, 60)).status == "cancelled"
        await assert_aborted(db, second.id, "ivy", None)
        assert [s["id"] for s in started(tmp_path / "started")] == [first.id]  # never started
        assert (await task_row(db, first.id))["status"] == "running"
        assert await backend.task_queue.abort_task(first.id) is True
        assert (await backend.result_storage.wait(first.id, 60)).status == "cancelled"
    finally:
        w.stop()
        await asyncio.wait_for(running, 30)


async def _status_is(backend: PostgreSQLBackend, task_id: str, status: str) -> bool:
    task = await backend.task_queue.get_task(task_id)
    return task is not None and task.status == status


async def test_current_task_inside_and_outside_a_task(backend, worker, tmp_path) -> None:
    path = tmp_path / "started"
    tasks = [Task(func=f"{JOBS}.quick", args=(str(path),)) for _ in range(2)]
    await backend.task_queue.enqueue_many(tasks)
    for t in tasks:
        assert (await backend.result_storage.wait(t.id, 60)).result == "quick"
    seen = {s["id"]: s for s in started(path)}
    for t in tasks:
        assert seen[t.id] == {
            "id": t.id,
            "attempt": 1,
            "retry_count": 0,
            "worker_id": worker.worker_id,
            "queue": "default",
            "func": f"{JOBS}.quick",
            "at": seen[t.id]["at"],
        }
    with pytest.raises(RuntimeError, match="only available inside a task function"):
        omniq.current_task()


async def test_a_notice_that_comes_before_the_task_is_kept(backend, db, worker) -> None:
    """The NOTIFY (LISTEN connection) may overtake the reply of the dequeue that took the task
    (pool connection): the notice is kept and applied when the task starts."""
    # A queue the in-process worker does not serve: the test takes the task itself, so the
    # worker's own dequeue cannot race it to the task.
    task = Task(func="m.not_yet_here", queue_name="taken-by-the-test")
    payload = f"{worker.worker_id} 1 {task.id}"
    worker._aborts.on_notice(payload)  # as if heard before the dequeue's reply
    worker._aborts.on_notice(f"another-worker 1 {task.id}")  # not ours: ignored
    running = await take(backend, task, worker.worker_id)
    await backend.task_queue.abort_task(running.id, requested_by="gina")
    worker._start(running)
    assert (await backend.result_storage.wait(task.id, 60)).status == "cancelled"
    await assert_aborted(db, task.id, "gina", None)


async def test_requests_missed_while_deaf_are_looked_up_after_a_reconnect(
    backend, db, worker, tmp_path
) -> None:
    """A NOTIFY sent while the worker's LISTEN connection is down is lost; when it comes back
    the worker asks which of its tasks have a request."""
    task = await start(backend, "sleeper", tmp_path / "started")
    listener = await backend.listener()
    pid = listener.backend_pid
    await db.execute(
        "UPDATE {tasks} SET abort_requested_at = now(), abort_requested_by = 'hal' WHERE id = $1",
        task.id,
    )  # a request whose NOTIFY never arrived
    await db.conn.execute("SELECT pg_terminate_backend($1)", pid)
    result = await backend.result_storage.wait(task.id, 60)
    assert result is not None and result.status == "cancelled"
    await assert_aborted(db, task.id, "hal", None)
