"""omniq_check_invariants() and `omniq doctor --invariants`: each invariant of issue 9 is
reported, naming the task or schedule, when a hand-made change (as the table owner, from psql)
breaks it; a healthy installation reports nothing and the doctor exits 0.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import OutcomeKind, Registration, WorkerProtocol
from omniq.identifiers import quote_identifier
from omniq.models.schedule import Schedule
from omniq.models.task import Task
from tests.support.db import Database
from tests.support.outcomes import outcome
from tests.support.processes import REPO, child_env


async def violations(db: Database) -> set[tuple[str, str | None, str | None]]:
    sql = f"SELECT * FROM {quote_identifier(db.schema)}.omniq_check_invariants()"  # noqa: S608
    return {(r["invariant"], r["task_id"], r["schedule_id"]) for r in await db.conn.fetch(sql)}


def doctor(dsn: str, schema: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omniq", "doctor", "--invariants", "--dsn", dsn, "--schema", schema],
        capture_output=True, text=True, timeout=120, env=child_env(),
        cwd=REPO, check=False,
    )  # fmt: skip


async def finish(backend: PostgreSQLBackend, *tasks: Task, kind: OutcomeKind = "success") -> None:
    """Dequeue the given tasks (the only ready ones) and record ``kind`` for each."""
    taken = await backend.task_queue.dequeue_many("default", len(tasks))
    assert {t.id for t in taken} == {t.id for t in tasks}
    await WorkerProtocol(backend).finish([outcome(t, kind) for t in taken], "w")


async def test_every_invariant_is_reported_with_its_ids(
    backend: PostgreSQLBackend, db: Database, pg_dsn: str
) -> None:
    queue = backend.task_queue
    done = [Task(func="m.f", callbacks={"on_success": "m.cb"}) for _ in range(6)]
    a, b = Task(func="m.a"), Task(func="m.b")
    await queue.enqueue_many([*done, a, b])
    await finish(backend, *done, a, b)
    waiting_ready = Task(func="m.w", dependencies=[a])  # enqueued after a completed: pending
    waiting_dead = Task(func="m.w", dependencies=[b])
    running = Task(func="m.r", queue_name="r")
    await queue.enqueue_many([waiting_ready, waiting_dead, running])
    protocol = WorkerProtocol(backend)
    await protocol.heartbeat(Registration("ghost", "h", 1, ["r"], 1))
    assert (await queue.dequeue("r", worker_id="ghost")).id == running.id  # type: ignore[union-attr]
    forgotten = Task(func="m.r", queue_name="f")
    await queue.enqueue(forgotten)
    forgetful = Registration("forgetful", "h", 2, ["f"], 1)
    await protocol.heartbeat(forgetful)
    assert (await queue.dequeue("f", worker_id="forgetful")).id == forgotten.id  # type: ignore[union-attr]
    await protocol.heartbeat(forgetful, held=[forgotten.id])
    jammed = Schedule(func="m.s", interval_seconds=60)
    await backend.schedule_storage.save_schedule(jammed)
    assert await violations(db) == set()
    result = doctor(pg_dsn, db.schema)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK    invariants  all hold" in result.stdout

    # Now break each invariant by hand, as only the table owner can, with triggers off (the
    # commit-time resolution would put a task set back to waiting right again).
    no_result, mismatch, no_event, twice, no_callback, _ = done
    breaking = db.conn.transaction()
    await breaking.start()
    await db.conn.execute("SET LOCAL session_replication_role = replica")
    await db.execute("UPDATE {tasks} SET status = 'waiting' WHERE id = $1", waiting_ready.id)
    await db.execute("UPDATE {tasks} SET status = 'failed' WHERE id = $1", b.id)
    await db.execute("UPDATE {tasks} SET status = 'waiting' WHERE id = $1", waiting_dead.id)
    await db.execute("DELETE FROM {results} WHERE task_id = $1", no_result.id)
    await db.execute("UPDATE {results} SET status = 'failure' WHERE task_id = $1", mismatch.id)
    # A completed task's 'completed' event is derived from its result (issue 12): the final
    # event that can go missing is a stored one, here a cancellation's.
    await db.execute("UPDATE {tasks} SET status = 'cancelled' WHERE id = $1", no_event.id)
    await db.execute("UPDATE {results} SET status = 'cancelled' WHERE task_id = $1", no_event.id)
    await db.execute(
        "INSERT INTO {events} (task_id, event_type, timestamp)"
        " VALUES ($1, 'completed', now()), ($1, 'completed', now())",
        twice.id,
    )
    await db.execute("DELETE FROM {tasks} WHERE metadata ->> 'callback_of' = $1", no_callback.id)
    await db.execute(
        f"UPDATE {quote_identifier(db.schema)}.omniq_workers"  # noqa: S608
        " SET last_heartbeat = now() - interval '1 hour' WHERE id = 'ghost'"
    )
    await db.execute(
        "UPDATE {schedules} SET last_run = next_run + interval '1 second' WHERE id = $1", jammed.id
    )
    fire = f"{jammed.id}@2030-01-01T00:00:00.000000Z"
    await db.execute(
        "INSERT INTO {events} (task_id, event_type, timestamp, schedule_id)"
        " VALUES ($1, 'scheduled', now(), $2), ($1, 'scheduled', now(), $2)",
        fire,
        jammed.id,
    )
    await breaking.commit()
    # A live worker that no longer lists a task it holds (a lost reply, a bug): never rescued.
    await db.execute(
        "UPDATE {tasks} SET started_at = now() - interval '5 minutes' WHERE id = $1", forgotten.id
    )
    await protocol.heartbeat(forgetful, held=[])

    found = await violations(db)
    assert found == {
        ("waiting_ready", waiting_ready.id, None),
        ("waiting_on_dead", waiting_dead.id, None),
        ("result_mismatch", b.id, None),  # b "failed" by hand: its result says success,
        ("final_without_event", b.id, None),  # and no 'failed' event was ever written
        ("final_without_result", no_result.id, None),
        ("result_mismatch", mismatch.id, None),
        ("final_without_event", no_event.id, None),
        ("ended_twice", twice.id, None),
        ("callback_missing", no_callback.id, None),
        ("running_on_dead_worker", running.id, None),
        ("held_but_not_running", forgotten.id, None),
        ("schedule_next_run", None, jammed.id),
        ("schedule_fired_twice", fire, jammed.id),
    }
    result = doctor(pg_dsn, db.schema)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("FAIL  invariants")]
    assert len(lines) == len(found)
    assert (
        f"FAIL  invariants  waiting_on_dead: task {waiting_dead.id}: dependency {b.id} ended failed"
        in lines
    )


async def test_the_check_is_bounded_and_cheap(backend: PostgreSQLBackend, db: Database) -> None:
    """On a few thousand finished tasks it looks at p_limit of them, by index: the plans are
    proven in test_plans.py; here the bound itself."""
    queue = backend.task_queue
    tasks = [Task(func="m.f") for _ in range(300)]
    await queue.enqueue_many(tasks)
    await finish(backend, *tasks)
    await db.execute("DELETE FROM {results}")
    sql = f"SELECT * FROM {quote_identifier(db.schema)}.omniq_check_invariants(p_limit => 50)"  # noqa: S608
    rows: list[Any] = await db.conn.fetch(sql)
    assert 50 <= len(rows) <= 100  # at most p_limit by creation time plus p_limit by event time
    assert {r["invariant"] for r in rows} == {"final_without_result"}
    window = f"SELECT count(*) FROM {quote_identifier(db.schema)}.omniq_check_invariants(p_window => interval '1 microsecond')"  # noqa: S608
    assert await db.conn.fetchval(window) == 0
    assert await queue.get_queue_size() == 0
