"""One way to end a task (issue 9): every path that takes a task to a final state goes through
omniq_end_tasks, so the result, the final event, the callbacks and the dependents follow from
that state once, whichever path it was. Also the races of issue 9 around dependencies, with
real connections interleaved at the exact point (defects 1, 2, 3), the NOTIFY payloads sized by
bytes (defect 6), the wake-ups for delayed retries (defect 8) and the worker registry after a
rescue.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import Registration, WorkerProtocol, outcomes_json
from omniq.identifiers import quote_identifier
from omniq.models.task import Task
from tests.support.db import Database
from tests.support.outcomes import outcome
from tests.support.processes import wait_until

CALLBACKS = {"on_success": "m.ok", "on_failure": "m.bad", "on_complete": "m.all"}


def now() -> datetime:
    return datetime.now(UTC)


async def violations(db: Database) -> list[dict[str, Any]]:
    sql = f"SELECT * FROM {quote_identifier(db.schema)}.omniq_check_invariants()"  # noqa: S608
    return [dict(r) for r in await db.conn.fetch(sql)]


async def status(db: Database, task_id: str) -> str:
    row = await db.row("tasks", task_id)
    assert row is not None, task_id
    return row["status"]


async def callbacks_of(db: Database, task_id: str) -> list[str]:
    rows = await db.rows("tasks", "metadata ->> 'callback_of' = $1", task_id, order="id")
    return [r["metadata"]["callback"] for r in rows]


async def assert_ended_once(db: Database, task_id: str, final: str, callbacks: list[str]) -> None:
    """The consequences of one ending: status, one result, one final event, callbacks."""
    assert await status(db, task_id) == final
    result = await db.row("results", task_id)
    expected = {"completed": "success", "failed": "failure"}.get(final, final)
    assert result is not None and result["status"] == expected, result
    assert (await db.events(task_id)).count(final) == 1
    assert await callbacks_of(db, task_id) == sorted(callbacks)


async def blocked_on_lock(db: Database, conn: asyncpg.Connection) -> bool:
    """Whether the backend of ``conn`` is waiting for a lock right now."""
    pid = conn.get_server_pid()
    wait = await db.conn.fetchval(
        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
    )
    return wait == "Lock"


# -- defect 1: dependencies against transactional enqueue ------------------------------------


async def running_task(backend: PostgreSQLBackend) -> Task:
    """A task enqueued and taken by a worker: the dependency the producer races with."""
    task = Task(func="m.a")
    await backend.task_queue.enqueue(task)
    running = await backend.task_queue.dequeue("default")
    assert running is not None and running.id == task.id
    return running


async def test_dependent_enqueued_in_a_transaction_while_its_dependency_finishes(
    backend: PostgreSQLBackend, db: Database, raw: Any, protocol: WorkerProtocol
) -> None:
    """The worker finishes A and commits while the producer's transaction, which enqueued B
    waiting for A, is still open: the worker cannot see B. At the producer's commit B must
    still become pending (before the fix it waited for a completed task forever)."""
    queue = backend.task_queue
    a = running = await running_task(backend)

    producer = await raw()
    tx = producer.transaction()
    await tx.start()
    b = Task(func="m.b", dependencies=[a.id])
    await queue.enqueue(b, connection=producer)
    assert b.status == "waiting"  # a still runs, as far as this transaction can tell
    assert await protocol.finish([outcome(running, "success")], "w") == {a.id: "completed"}
    await tx.commit()

    assert await status(db, b.id) == "pending"
    assert await violations(db) == []


async def test_producer_commit_waits_for_the_finish_that_holds_the_dependency(
    backend: PostgreSQLBackend, db: Database, raw: Any
) -> None:
    """The other order: the worker has ended A but not committed when the producer commits.
    The producer's commit-time check locks A FOR SHARE, waits for the worker's commit, then
    sees A completed."""
    queue = backend.task_queue
    a = running = await running_task(backend)

    producer, worker = await raw(), await raw()
    b = Task(func="m.b", dependencies=[a.id])
    producing = producer.transaction()
    await producing.start()
    await queue.enqueue(b, connection=producer)
    finishing = worker.transaction()
    await finishing.start()
    answer = await worker.fetch(
        "SELECT * FROM omniq_finish_tasks_v1($1::jsonb, 'w')",
        outcomes_json([outcome(running, "success")]),
    )
    assert [tuple(r) for r in answer] == [(a.id, "completed")]

    commit = asyncio.create_task(producing.commit())
    await wait_until(lambda: blocked_on_lock(db, producer), 30, "the producer's commit to wait")
    assert not commit.done()
    await finishing.commit()
    await asyncio.wait_for(commit, 30)

    assert await status(db, b.id) == "pending"
    assert await violations(db) == []


async def test_finish_waits_for_a_producer_committing_a_dependent(
    backend: PostgreSQLBackend, db: Database, raw: Any, protocol: WorkerProtocol
) -> None:
    """And the third order: the producer's commit-time check holds A FOR SHARE when the
    worker ends A; the worker waits for that commit, then finds B among A's dependents."""
    queue = backend.task_queue
    a = running = await running_task(backend)

    producer, locker = await raw(), await raw()
    b = Task(func="m.b", dependencies=[a.id])
    producing = producer.transaction()
    await producing.start()
    await queue.enqueue(b, connection=producer)
    # What the commit-time check does first, here without committing yet:
    await producer.execute("SET CONSTRAINTS tasks_waiting_committed IMMEDIATE")
    assert await locker.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE a.pid = $1 AND l.locktype = 'transactionid'",
        producer.get_server_pid(),
    )
    finishing = asyncio.create_task(protocol.finish([outcome(running, "success")], "w"))
    await wait_until(
        lambda: db.conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND backend_type = 'client backend' AND pid <> $1",
            producer.get_server_pid(),
        ),
        30,
        "the finish to wait for the producer",
    )
    await producing.commit()
    assert await asyncio.wait_for(finishing, 30) == {a.id: "completed"}

    assert await status(db, b.id) == "pending"
    assert await violations(db) == []


async def test_dependency_cycle_in_one_batch_is_refused(
    backend: PostgreSQLBackend, db: Database
) -> None:
    a = Task(func="m.a", id="cycle-a", dependencies=["cycle-b"])
    b = Task(func="m.b", id="cycle-b", dependencies=["cycle-a"])
    with pytest.raises(ValueError, match="dependency cycle"):
        await backend.task_queue.enqueue_many([a, b])
    assert await db.count("tasks") == 0


# -- defect 2 and the audit: every path that ends a task -----------------------------------


async def test_rescue_out_of_retries_runs_every_consequence(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    """A task that ends failed with WorkerLost (rescued, no retries left) cancels its
    dependents and enqueues its callbacks, like any failure."""
    queue = backend.task_queue
    doomed = Task(func="m.doomed", max_retries=0, callbacks=CALLBACKS)
    child = Task(func="m.child", dependencies=[doomed], callbacks={"on_complete": "m.all"})
    grandchild = Task(func="m.grandchild", dependencies=[child])
    await queue.enqueue_many([doomed, child, grandchild])
    await protocol.heartbeat(
        Registration("dying", "h", 1, ["default"], 1, stale_after=timedelta(milliseconds=100))
    )
    assert (await queue.dequeue("default", worker_id="dying")).id == doomed.id  # type: ignore[union-attr]

    async def rescued() -> bool:
        return (await protocol.rescue("rescuer")).rescued == 1

    await wait_until(rescued, 30, "the rescue of the silent worker's task")
    await assert_ended_once(db, doomed.id, "failed", ["on_complete", "on_failure"])
    assert (await db.row("results", doomed.id))["error_type"] == "WorkerLost"  # type: ignore[index]
    await assert_ended_once(db, child.id, "cancelled", ["on_complete"])
    await assert_ended_once(db, grandchild.id, "cancelled", [])
    assert await violations(db) == []


async def test_expiry_at_dequeue_and_in_cleanup_runs_every_consequence(
    backend: PostgreSQLBackend, db: Database
) -> None:
    queue = backend.task_queue
    late = Task(func="m.late", expires_at=now() - timedelta(seconds=1), callbacks=CALLBACKS)
    after_late = Task(func="m.after", dependencies=[late])
    stale = Task(func="m.stale", queue_name="elsewhere", callbacks={"on_failure": "m.bad"},
                 expires_at=now() - timedelta(seconds=1))  # fmt: skip
    after_stale = Task(func="m.after", queue_name="elsewhere", dependencies=[stale])
    await queue.enqueue_many([late, after_late, stale, after_stale])
    got = await queue.dequeue_many("default", 10)  # expires `late`, never hands it out
    assert sorted(t.func for t in got) == ["m.all", "m.bad"]  # only its callbacks
    await assert_ended_once(db, late.id, "expired", ["on_complete", "on_failure"])
    await assert_ended_once(db, after_late.id, "cancelled", [])
    assert (
        await queue.cleanup_expired_tasks() == 2
    )  # `stale` expired, then both expired rows deleted
    assert await db.row("tasks", stale.id) is None
    assert await callbacks_of(db, stale.id) == ["on_failure"]
    await assert_ended_once(db, after_stale.id, "cancelled", [])


async def test_cancel_from_python_and_psql_runs_every_consequence(
    backend: PostgreSQLBackend, db: Database, raw: Any
) -> None:
    queue = backend.task_queue
    a = Task(func="m.a", callbacks=CALLBACKS)
    b = Task(func="m.b", dependencies=[a], callbacks={"on_complete": "m.all"})
    c = Task(func="m.c", run_at=now() + timedelta(hours=1), callbacks={"on_complete": "m.all"})
    await queue.enqueue_many([a, b, c])
    assert await queue.cancel_task(a.id, "not needed") is True
    assert await queue.cancel_task(a.id) is False  # ended once
    await assert_ended_once(db, a.id, "cancelled", ["on_complete"])
    await assert_ended_once(db, b.id, "cancelled", ["on_complete"])
    psql = await raw()
    assert await psql.fetchval("SELECT omniq_cancel_tasks(ARRAY[$1], 'by the DBA')", c.id) == 1
    await assert_ended_once(db, c.id, "cancelled", ["on_complete"])  # a delayed task too
    assert await violations(db) == []


async def test_update_task_to_a_final_status_ends_it_the_one_way(
    backend: PostgreSQLBackend, db: Database
) -> None:
    queue = backend.task_queue
    parent = Task(func="m.parent", callbacks=CALLBACKS)
    child = Task(func="m.child", dependencies=[parent])
    await queue.enqueue_many([parent, child])
    parent.status = "failed"  # type: ignore[assignment]
    assert await queue.update_task(parent) is True
    await assert_ended_once(db, parent.id, "failed", ["on_complete", "on_failure"])
    assert await status(db, child.id) == "cancelled"
    parent.status = "pending"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="retry"):
        await queue.update_task(parent)
    done = Task(func="m.done")
    await queue.enqueue(done)
    done.status = "completed"  # type: ignore[assignment]
    assert await queue.update_task(done) is True
    await assert_ended_once(db, done.id, "completed", [])
    assert await violations(db) == []


async def test_delete_refuses_a_task_others_wait_for(
    backend: PostgreSQLBackend, db: Database
) -> None:
    queue = backend.task_queue
    parent = Task(func="m.parent")
    child = Task(func="m.child", dependencies=[parent])
    await queue.enqueue_many([parent, child])
    with pytest.raises(ValueError, match=f"{child.id} waits for it"):
        await queue.delete_task(parent.id)
    assert await status(db, parent.id) == "pending"
    assert await queue.cancel_task(parent.id)
    assert await queue.delete_task(parent.id) is True  # nothing waits for it any more


async def test_callbacks_are_enqueued_once_per_task_and_kind(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    """An operator's retry lets a task end again; its callbacks are not enqueued twice."""
    queue = backend.task_queue
    task = Task(func="m.f", max_retries=0, callbacks=CALLBACKS)
    await queue.enqueue(task)
    for kind in ("failure", "failure", "success"):
        running = await queue.dequeue("default")
        assert running is not None and running.id == task.id
        await protocol.finish([outcome(running, kind)], "w")
        assert await queue.retry_tasks([task.id]) == (1 if kind == "failure" else 0)
    assert await callbacks_of(db, task.id) == ["on_complete", "on_failure", "on_success"]
    assert await violations(db) == []


# -- defect 3: cascades never deadlock -----------------------------------------------------


async def test_fan_in_cascades_never_deadlock(
    backend: PostgreSQLBackend, db: Database, raw: Any
) -> None:
    """C depends on B and on A2; B depends on A1 and A2. A1 and A2 fail at the same moment in
    two transactions. C's id sorts before B's, so one side used to lock C then B while the
    other locked B and reached C a level later: PostgreSQL reported a deadlock in about one
    race in five, and the worker's whole outcome batch rolled back."""
    queue = backend.task_queue
    first, second = await raw(), await raw()
    for _ in range(40):
        tag = uuid.uuid4().hex[:6]
        a1 = Task(func="m.a", id=f"{tag}-a1", max_retries=0)
        a2 = Task(func="m.a", id=f"{tag}-a2", max_retries=0)
        b = Task(func="m.b", id=f"{tag}-n-b", dependencies=[a1, a2])
        c = Task(func="m.c", id=f"{tag}-n-a", dependencies=[b, a2])  # sorts before b
        await queue.enqueue_many([a1, a2, b, c])
        taken = {t.id: t for t in await queue.dequeue_many("default", 2)}
        assert set(taken) == {a1.id, a2.id}
        go = asyncio.Event()

        async def fail(conn: asyncpg.Connection, task: Task, go: asyncio.Event = go) -> list[Any]:
            await go.wait()
            return await conn.fetch(
                "SELECT * FROM omniq_finish_tasks_v1($1::jsonb, 'w')",
                outcomes_json([outcome(task, "failure", error="boom")]),
            )

        runs = [
            asyncio.create_task(fail(first, taken[a1.id])),
            asyncio.create_task(fail(second, taken[a2.id])),
        ]
        await asyncio.sleep(0)
        go.set()
        answers = await asyncio.wait_for(asyncio.gather(*runs), 60)  # a deadlock would raise here
        assert [tuple(r) for r in answers[0] + answers[1]] == [(a1.id, "failed"), (a2.id, "failed")]
        for task in (b, c):
            await assert_ended_once(db, task.id, "cancelled", [])
    assert await violations(db) == []


# -- defect 6: NOTIFY payloads sized by bytes ----------------------------------------------


def long_id(n: int) -> str:
    """A 255-character id of 4-byte characters: 1,020 bytes."""
    return f"{n:03d}-" + "\U0001f600" * 251


async def test_many_long_multibyte_ids_fit_in_the_notifications(
    backend: PostgreSQLBackend, db: Database, raw: Any, protocol: WorkerProtocol
) -> None:
    """25 tasks with 255-character 4-byte ids used to overflow NOTIFY's 8,000 bytes: the
    parent's failure was never recorded, 25 expiring tasks broke the dequeue, and
    cancel_tasks raised. Every id still reaches the result waiters."""
    queue = backend.task_queue
    listening = await raw()
    payloads: list[str] = []
    channel = await listening.fetchval("SELECT omniq_channel('results')")
    await listening.add_listener(channel, lambda *a: payloads.append(a[3]))

    parent = Task(func="m.parent", id=long_id(0), max_retries=0)
    children = [Task(func="m.child", id=long_id(n), dependencies=[parent]) for n in range(1, 26)]
    expiring = [
        Task(func="m.gone", id=long_id(n), queue_name="x", expires_at=now() - timedelta(seconds=1))
        for n in range(26, 51)
    ]
    pending = [Task(func="m.left", id=long_id(n), queue_name="y") for n in range(51, 76)]
    await queue.enqueue_many([parent, *children, *expiring, *pending])
    running = await queue.dequeue("default")
    assert running is not None and running.id == parent.id
    assert await protocol.finish([outcome(running, "failure")], "w") == {parent.id: "failed"}
    assert await db.count("tasks", "status = 'cancelled'") == 25
    assert await queue.dequeue("x") is None  # expires the 25 on the way
    assert await db.count("tasks", "status = 'expired'") == 25
    assert await queue.cancel_tasks([t.id for t in pending]) == 25

    await listening.execute("SELECT 1")  # a round trip: the notifications sent so far arrive
    await asyncio.sleep(0)
    assert max(len(p.encode()) for p in payloads) < 8000
    notified = [i for p in payloads for i in p.split(",")]
    assert sorted(notified) == sorted(t.id for t in [parent, *children, *expiring, *pending])
    assert await violations(db) == []


# -- defect 8: no wake-up for a retry that is not due ---------------------------------------


async def test_a_delayed_retry_wakes_nobody_unless_it_is_due_first(
    backend: PostgreSQLBackend, db: Database, raw: Any, protocol: WorkerProtocol
) -> None:
    queue = backend.task_queue
    listening = await raw()
    heard: list[str] = []
    channel = await listening.fetchval("SELECT omniq_channel('tasks')")
    await listening.add_listener(channel, lambda *a: heard.append(a[3]))

    async def arrived() -> None:
        await listening.execute("SELECT 1")  # a round trip: notifications sent so far arrive
        await asyncio.sleep(0)

    async def notifications_after(action: Any) -> list[str]:
        await arrived()  # an earlier step's NOTIFY (an enqueue's) is not counted as the action's
        heard.clear()
        await action()
        await arrived()
        return list(heard)

    # A delayed task enqueued wakes its queue: sleeping workers re-read the earliest due time.
    early = Task(func="m.f", queue_name="q", run_at=now() + timedelta(minutes=1))
    assert await notifications_after(lambda: queue.enqueue(early)) == ["q"]

    failing = Task(func="m.f", queue_name="q", retry_delay=600)  # retry in 7.5-12.5 minutes
    await queue.enqueue(failing)
    running = await queue.dequeue("q")
    assert running is not None and running.id == failing.id

    async def fail() -> None:
        assert await protocol.finish([outcome(running, "failure")], "w") == {failing.id: "pending"}

    assert await notifications_after(fail) == []  # workers already wake earlier, for `early`
    row = await db.row("tasks", failing.id)
    assert row["delayed"] and row["run_at"] > now() + timedelta(minutes=7)  # type: ignore[index]

    quick = Task(func="m.f", queue_name="q", retry_delay=0)
    await queue.enqueue(quick)
    taken = await queue.dequeue_many("q", 5)
    assert [t.id for t in taken] == [quick.id]

    async def fail_quick() -> None:
        assert await protocol.finish([outcome(taken[0], "failure")], "w") == {quick.id: "pending"}

    assert await notifications_after(fail_quick) == ["q"]  # ready at once: wake a worker


# -- the worker registry after a rescue ----------------------------------------------------


async def test_dequeue_never_invents_a_registry_row(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    """After a rescue removed a silent worker's row, its next dequeue used to re-create it
    without host or pid and with the default stale_after (30 s instead of its own)."""
    queue = backend.task_queue
    await queue.enqueue_many([Task(func="m.f"), Task(func="m.f")])
    slow = Registration("slow", "h", 7, ["default"], 1, stale_after=timedelta(milliseconds=300))
    await protocol.heartbeat(slow)
    assert await queue.dequeue("default", worker_id="slow") is not None

    async def rescued() -> bool:
        return (await protocol.rescue("other")).rescued == 1

    await wait_until(rescued, 30, "the rescue of the silent worker's task")
    assert (
        await db.conn.fetchval(
            f"SELECT count(*) FROM {quote_identifier(db.schema)}.omniq_workers"  # noqa: S608
        )
        == 0
    )
    assert await queue.dequeue("default", worker_id="slow") is not None  # alive after all
    workers = await backend.monitor.workers()
    assert workers == []  # not re-created with defaults: its heartbeat registers it
    await protocol.heartbeat(slow)
    (row,) = await backend.monitor.workers()
    assert (row["hostname"], row["pid"], row["stale_after"]) == (
        "h",
        7,
        timedelta(milliseconds=300),
    )
