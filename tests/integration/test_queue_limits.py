"""Paused queues, max_running and rate limits (issue 13, parts 2-3) against a real PostgreSQL:
enforced inside omniq_dequeue_v1, by concurrent dequeuers too; resume and a freed slot wake a
waiting dequeue by NOTIFY; bad limits refused; the psql and _sync forms."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import WorkerProtocol
from omniq.identifiers import quote_identifier
from omniq.models import QueueSettings
from omniq.models.task import Task
from tests.support.db import Database
from tests.support.outcomes import outcome


@pytest.fixture(autouse=True)
async def _psql_in_schema(db: Database) -> None:
    """The admin connection reads the test's schema first, as a psql user of it would."""
    await db.conn.execute(f"SET search_path = {quote_identifier(db.schema)}, public")


async def fill(backend: PostgreSQLBackend, n: int, queue: str = "q") -> list[str]:
    tasks = [Task(func="app.jobs.work", args=(i,), queue_name=queue) for i in range(n)]
    return await backend.task_queue.enqueue_many(tasks)


async def violations(db: Database) -> list[str]:
    rows = await db.conn.fetch("SELECT invariant, detail FROM omniq_check_invariants()")
    return [f"{r['invariant']}: {r['detail']}" for r in rows]


async def test_a_paused_queue_accepts_tasks_and_hands_out_none(
    backend: PostgreSQLBackend, protocol: WorkerProtocol
) -> None:
    q = backend.task_queue
    await fill(backend, 2)
    running = await q.dequeue("q", worker_id="w")
    assert running is not None
    assert await q.pause_queue("q") is True
    assert await q.pause_queue("q") is False  # already paused
    await fill(backend, 2)  # still accepted
    assert await q.dequeue_many(["q", "other"], 10) == []
    assert await q.get_queue_size("q") == 3
    # The running task finishes while the queue is paused.
    assert await protocol.finish([outcome(running, "success")], "w") == {running.id: "completed"}
    (settings,) = await q.queue_settings(["q"])
    assert settings.paused and settings.pending == 3 and settings.running == 0
    assert await q.resume_queue("q") is True
    assert await q.resume_queue("q") is False
    assert len(await q.dequeue_many("q", 10)) == 3


async def test_pausing_an_unknown_queue_creates_it(backend: PostgreSQLBackend) -> None:
    q = backend.task_queue
    assert await q.queue_settings(["never-used"]) == [QueueSettings("never-used")]
    assert await q.pause_queue("never-used")
    (settings,) = await q.queue_settings()
    assert settings.name == "never-used" and settings.paused


async def test_resume_wakes_a_waiting_dequeue_by_notify(backend: PostgreSQLBackend) -> None:
    """The dequeue waits on LISTEN with nothing due: only a NOTIFY can wake it before its 120 s."""
    q = backend.task_queue
    await q.pause_queue("q")
    await fill(backend, 1)
    waiting = asyncio.create_task(q.dequeue("q", timeout=120))
    await asyncio.sleep(0.3)  # let it look once and sleep (no assertion hangs on this)
    assert not waiting.done()
    await q.resume_queue("q")
    task = await asyncio.wait_for(waiting, timeout=60)
    assert task is not None and task.queue_name == "q"


async def test_max_running_caps_running_tasks_and_a_freed_slot_wakes(
    backend: PostgreSQLBackend, protocol: WorkerProtocol, db: Database
) -> None:
    q = backend.task_queue
    await fill(backend, 5)
    settings = await q.set_queue_limits("q", max_running=2)
    assert settings.max_running == 2 and settings.rate is None
    first = await q.dequeue_many("q", 10, worker_id="w")
    assert len(first) == 2
    assert await q.dequeue_many("q", 10) == []
    waiting = asyncio.create_task(q.dequeue("q", timeout=120, worker_id="w"))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await protocol.finish([outcome(first[0], "success")], "w")  # frees a slot: NOTIFY
    third = await asyncio.wait_for(waiting, timeout=60)
    assert third is not None
    assert await q.dequeue_many("q", 10) == []
    assert await violations(db) == []
    await q.set_queue_limits("q", max_running=0)  # 0 pauses
    await protocol.finish([outcome(first[1], "success"), outcome(third, "success")], "w")
    assert await q.dequeue_many("q", 10) == []
    await q.set_queue_limits("q")  # no limit
    assert len(await q.dequeue_many("q", 10)) == 2


async def test_concurrent_dequeuers_never_exceed_max_running(
    make_backend: object, backend: PostgreSQLBackend, db: Database
) -> None:
    await fill(backend, 40)
    await backend.task_queue.set_queue_limits("q", max_running=3)
    others = [
        await make_backend(schema=backend.config.schema, max_connections=2)  # type: ignore[operator]
        for _ in range(6)
    ]
    barrier = asyncio.Barrier(len(others))

    async def grab(b: PostgreSQLBackend) -> int:
        await barrier.wait()
        return len(await b.task_queue.dequeue_many("q", 5))

    taken = await asyncio.gather(*(grab(b) for b in others))
    print(f"\n6 concurrent dequeuers of up to 5 under max_running=3 took {taken}")
    assert sum(taken) == 3
    assert await db.count("tasks", "status = 'running'") == 3


async def test_rate_limit_gives_the_burst_then_a_token_time(backend: PostgreSQLBackend) -> None:
    q = backend.task_queue
    await fill(backend, 10)
    settings = await q.set_queue_limits("q", rate=0.5, burst=3)
    assert (settings.rate, settings.burst, settings.tokens) == (0.5, 3, pytest.approx(3, abs=0.1))
    assert len(await q.dequeue_many("q", 10)) == 3
    assert await q.dequeue_many("q", 10) == []
    # A worker held back by the rate sleeps until the next token: next_due_at says when.
    due = await q.next_due_at("q")
    (now,) = await backend.task_queue.queue_settings(["q"])
    assert due is not None and now.updated_at is not None
    assert 0 < (due - now.updated_at).total_seconds() <= 2.5  # 1 token at 0.5/s
    default_burst = await q.set_queue_limits("q", rate=7.5)
    assert default_burst.burst == 8


@pytest.mark.parametrize(
    "limits",
    [{"max_running": -1}, {"rate": 0}, {"rate": -2.0}, {"burst": 0, "rate": 1}, {"burst": 3}],
)
async def test_bad_limits_are_refused_in_python(backend: PostgreSQLBackend, limits: dict) -> None:
    with pytest.raises(ValueError, match="max_running|rate|burst"):
        await backend.task_queue.set_queue_limits("q", **limits)
    assert await backend.task_queue.queue_settings() == []


@pytest.mark.parametrize(
    "call",
    [
        "SELECT omniq_set_queue_limits('q', max_running => -1)",
        "SELECT omniq_set_queue_limits('q', rate => -1)",
        "SELECT omniq_set_queue_limits('q', burst => 4)",
        "SELECT omniq_pause_queue('')",
    ],
)
async def test_bad_limits_from_psql_are_refused_and_store_nothing(db: Database, call: str) -> None:
    with pytest.raises(asyncpg.InvalidParameterValueError) as info:
        await db.conn.execute(call)
    assert "queue" in str(info.value)
    assert await db.count("tasks") == 0
    assert await db.conn.fetchval("SELECT count(*) FROM omniq_queues") == 0
    with pytest.raises(asyncpg.CheckViolationError):  # the table's own CHECK, for direct writes
        await db.conn.execute("INSERT INTO omniq_queues (name, max_running) VALUES ('q', -1)")


async def test_psql_forms(backend: PostgreSQLBackend, db: Database) -> None:
    await fill(backend, 3)
    assert await db.conn.fetchval("SELECT omniq_pause_queue('q')") is True
    assert await backend.task_queue.dequeue_many("q", 5) == []
    assert await db.conn.fetchval("SELECT omniq_resume_queue('q')") is True
    await db.conn.execute("SELECT omniq_set_queue_limits('q', max_running => 1, rate => 10)")
    row = await db.conn.fetchrow(
        "SELECT name, paused, max_running, rate, burst, running, pending FROM omniq_queue_settings()"
    )
    assert dict(row) == {
        "name": "q", "paused": False, "max_running": 1, "rate": 10.0, "burst": 10,
        "running": 0, "pending": 3,
    }  # fmt: skip
    assert len(await backend.task_queue.dequeue_many("q", 5)) == 1


def test_sync_forms(sync_backend: PostgreSQLBackend) -> None:
    q = sync_backend.task_queue
    assert q.pause_queue_sync("s") is True
    assert q.resume_queue_sync("s") is True
    settings = q.set_queue_limits_sync("s", max_running=4, rate=2.0, burst=5)
    assert (settings.max_running, settings.rate, settings.burst) == (4, 2.0, 5)
    assert [s.name for s in q.queue_settings_sync()] == ["s"]


async def test_the_limit_invariants_report_what_a_hand_made_change_broke(
    backend: PostgreSQLBackend, db: Database
) -> None:
    """max_running_exceeded, tokens_out_of_bounds and unique_key_shared, each broken by hand as
    only the table owner can (the unique index dropped inside a transaction rolled back)."""
    q = backend.task_queue
    await fill(backend, 3)
    await q.set_queue_limits("q", max_running=1, rate=100, burst=5)
    assert len(await q.dequeue_many("q", 3)) == 1
    assert await violations(db) == []
    await db.execute("UPDATE {tasks} SET status = 'running', started_at = clock_timestamp()")
    await db.conn.execute("UPDATE omniq_queues SET tokens = 7")
    await q.enqueue_many([Task(func="app.jobs.work", unique_key=k) for k in ("a", "b")])
    broken = db.conn.transaction()
    await broken.start()
    try:
        await db.conn.execute("DROP INDEX tasks_unique_key_idx")
        await db.execute("UPDATE {tasks} SET unique_key = 'a' WHERE unique_key = 'b'")
        found = sorted(v.split(":")[0] for v in await violations(db))
    finally:
        await broken.rollback()
    print("\n" + "\n".join(await violations(db)))
    assert found == ["max_running_exceeded", "tokens_out_of_bounds", "unique_key_shared"]
    assert sorted(v.split(":")[0] for v in await violations(db)) == [
        "max_running_exceeded",
        "tokens_out_of_bounds",
    ]
