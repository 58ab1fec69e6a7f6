"""Unique tasks (issue 13, part 1) against a real PostgreSQL: the race of 8 producers, each
mode, keys repeated in one batch, windows, counted states, bad input, the psql form, _sync."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from omniq import Unique
from omniq.backend.postgres import PostgreSQLBackend
from omniq.errors import DuplicateTaskError
from omniq.identifiers import quote_identifier
from omniq.models import Enqueued, unique_key_for
from omniq.models.task import Task
from tests.support.db import Database
from tests.support.outcomes import outcome


@pytest.fixture(autouse=True)
async def _psql_in_schema(db: Database) -> None:
    """The admin connection reads the test's schema first, as a psql user of it would."""
    await db.conn.execute(f"SET search_path = {quote_identifier(db.schema)}, public")


def job(*args: object, **kw: object) -> Task:
    return Task(func="app.jobs.report", args=args, **kw)  # type: ignore[arg-type]


async def test_eight_racing_producers_make_one_task(
    backend: PostgreSQLBackend, db: Database, pg_dsn: str
) -> None:
    """8 connections enqueue the same key at the same moment (a barrier, each in its own
    transaction that waits for all 8 to have inserted before committing): one task."""
    conns = [
        await asyncpg.connect(pg_dsn, server_settings={"search_path": backend.config.schema})
        for _ in range(8)
    ]
    try:
        barrier = asyncio.Barrier(8)

        async def produce(conn: asyncpg.Connection, n: int) -> Enqueued:
            await barrier.wait()
            async with conn.transaction():
                return await backend.task_queue.enqueue_unique(
                    job(n, unique_key="nightly-report"), connection=conn
                )

        results = await asyncio.wait_for(
            asyncio.gather(*(produce(c, n) for n, c in enumerate(conns))), timeout=60
        )
    finally:
        for conn in conns:
            await conn.close()
    created = [r for r in results if r.created]
    print(f"\n8 racing producers: {len(created)} created, {8 - len(created)} deduplicated")
    assert len(created) == 1
    assert {r.id for r in results} == {created[0].id}
    assert await db.count("tasks", "unique_key = 'nightly-report'") == 1
    assert await db.count("tasks") == 1
    assert await db.conn.fetchval("SELECT count(*) FROM omniq_check_invariants()") == 0


async def test_skip_returns_the_holder_and_changes_nothing(
    backend: PostgreSQLBackend, db: Database
) -> None:
    q = backend.task_queue
    first = await q.enqueue_unique(job(1, unique_key="k"))
    assert first.created
    second = await q.enqueue_unique(job(2, unique_key="k"))
    assert second == Enqueued(first.id, False)
    assert await q.enqueue(job(3, unique_key="k")) == first.id  # enqueue's type: the id
    row = await db.row("tasks", first.id)
    assert row is not None and row["args"] == [1] and await db.count("tasks") == 1


@pytest.mark.parametrize("mode", ["replace", "keep_run_at"])
async def test_replace_modes_update_the_pending_holder(
    backend: PostgreSQLBackend, db: Database, mode: str
) -> None:
    q = backend.task_queue
    first_at = datetime(2031, 1, 1, tzinfo=UTC)
    later_at = datetime(2032, 6, 1, tzinfo=UTC)
    first = await q.enqueue(job(1, unique_key="k", run_at=first_at))
    again = Task(
        func="app.jobs.report", args=(2,), kwargs={"x": 1}, run_at=later_at,
        unique=Unique(key="k", mode=mode),  # type: ignore[arg-type]
    )  # fmt: skip
    assert await q.enqueue_unique(again) == Enqueued(first, False)
    row = await db.row("tasks", first)
    assert row is not None and row["args"] == [2] and row["kwargs"] == {"x": 1}
    assert row["run_at"] == (later_at if mode == "replace" else first_at)
    assert row["delayed"] is True
    assert await db.count("tasks") == 1


async def test_replace_leaves_a_running_holder_alone(
    backend: PostgreSQLBackend, db: Database
) -> None:
    q = backend.task_queue
    first = await q.enqueue(job(1, unique_key="k"))
    taken = await q.dequeue("default")
    assert taken is not None and taken.id == first
    again = await q.enqueue_unique(
        Task(func="app.jobs.report", args=(9,), unique=Unique(key="k", mode="replace"))
    )
    assert again == Enqueued(first, False)
    row = await db.row("tasks", first)
    assert row is not None and row["args"] == [1] and row["status"] == "running"


async def test_the_key_is_free_again_once_the_holder_ends(
    backend: PostgreSQLBackend, protocol: object, db: Database
) -> None:
    q = backend.task_queue
    first = await q.enqueue(job(1, unique_key="k"))
    taken = await q.dequeue("default", worker_id="w")
    assert taken is not None
    await protocol.finish([outcome(taken, "success")], "w")  # type: ignore[attr-defined]
    second = await q.enqueue_unique(job(2, unique_key="k"))
    assert second.created and second.id != first


async def test_counted_final_states_keep_the_key(
    backend: PostgreSQLBackend, protocol: object
) -> None:
    """With completed counted, a completed holder still refuses a second task."""
    q = backend.task_queue
    states = frozenset({"pending", "waiting", "running", "completed"})
    first = await q.enqueue(Task(func="app.jobs.report", unique=Unique(key="once", states=states)))
    taken = await q.dequeue("default", worker_id="w")
    assert taken is not None
    await protocol.finish([outcome(taken, "success")], "w")  # type: ignore[attr-defined]
    again = await q.enqueue_unique(
        Task(func="app.jobs.report", unique=Unique(key="once", states=states))
    )
    assert again == Enqueued(first, False)


async def test_enqueue_many_with_repeated_keys_first_wins(
    backend: PostgreSQLBackend, db: Database
) -> None:
    q = backend.task_queue
    batch = [job(1, unique_key="a"), job(2, unique_key="b"), job(3, unique_key="a"), job(4)]
    dependent = Task(func="app.jobs.report", dependencies=[batch[2].id])  # a deduplicated id
    got = await q.enqueue_many_unique([*batch, dependent])
    assert [g.created for g in got] == [True, True, False, True, True]
    assert got[2].id == batch[0].id
    assert await db.count("tasks") == 4
    row = await db.row("tasks", dependent.id)
    assert row is not None and row["dependencies"] == [batch[0].id]  # redirected to the holder


async def test_window_makes_the_key_unique_per_window(
    backend: PostgreSQLBackend, db: Database
) -> None:
    q = backend.task_queue
    hourly = Unique(key="digest", window=timedelta(hours=1))
    first = await q.enqueue_unique(Task(func="app.jobs.report", unique=hourly))
    again = await q.enqueue_unique(Task(func="app.jobs.report", unique=hourly))
    assert first.created and again == Enqueued(first.id, False)
    stored = await db.conn.fetchval("SELECT unique_key FROM tasks WHERE id = $1", first.id)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    # The window start is the database's hour: equal unless the hour turned in between.
    assert stored in {
        f"digest#{(hour + d):%Y-%m-%dT%H:%M:%SZ}" for d in (timedelta(0), timedelta(hours=-1))
    }
    # The previous window's task does not hold this window's key.
    await db.execute("UPDATE {tasks} SET unique_key = 'digest#2000-01-01T00:00:00Z'")
    assert (await q.enqueue_unique(Task(func="app.jobs.report", unique=hourly))).created


async def test_derived_key_from_func_args_and_queue(backend: PostgreSQLBackend) -> None:
    q = backend.task_queue
    derived = Task(func="app.jobs.report", args=(1,), kwargs={"a": 2}, unique=Unique())
    assert derived.unique_key == unique_key_for("app.jobs.report", (1,), {"a": 2}, "default")
    assert (await q.enqueue_unique(derived)).created
    same = Task(func="app.jobs.report", args=(1,), kwargs={"a": 2}, unique=Unique())
    other = Task(
        func="app.jobs.report", args=(1,), kwargs={"a": 2}, queue_name="q2", unique=Unique()
    )
    assert not (await q.enqueue_unique(same)).created
    assert (await q.enqueue_unique(other)).created


@pytest.mark.parametrize(
    "make",
    [
        lambda: Task(func="app.jobs.report", unique_key="k" * 256),
        lambda: Task(func="app.jobs.report", unique_key="a\nb"),
        lambda: Unique(key="k", states=frozenset({"pending"})),
        lambda: Unique(key="k", mode="merge"),  # type: ignore[arg-type]
        lambda: Unique(key="k", window=timedelta(milliseconds=10)),
        lambda: Task(func="app.jobs.report", unique_key="a", unique=Unique(key="b")),
    ],
)
def test_bad_unique_options_are_refused_in_python(make: object) -> None:
    with pytest.raises(ValueError, match="unique|states|mode|window"):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ('"unique_key": "' + "k" * 256 + '"', "1-255 characters"),
        (
            '"unique_key": "k", "unique_states": ["pending"]',
            "must include pending, waiting and running",
        ),
        ('"unique_key": "k", "unique_mode": "merge"', "skip, replace or keep_run_at"),
        ('"unique_key": "k", "unique_window": 0.5', "number of seconds"),
    ],
)
async def test_bad_unique_input_from_sql_is_refused_and_stores_nothing(
    backend: PostgreSQLBackend, db: Database, doc: str, message: str
) -> None:
    batch = f'[{{"func": "app.jobs.ok"}}, {{"func": "app.jobs.report", {doc}}}]'
    with pytest.raises(asyncpg.InvalidParameterValueError, match=message) as info:
        await db.conn.fetch("SELECT id FROM omniq_enqueue($1::text::jsonb)", batch)
    assert info.value.hint or message != "1-255 characters"
    assert await db.count("tasks") == 0


async def test_an_existing_id_is_still_a_duplicate_error(backend: PostgreSQLBackend) -> None:
    q = backend.task_queue
    first = await q.enqueue(job(1))
    with pytest.raises(DuplicateTaskError):
        await q.enqueue(Task(func="app.jobs.report", id=first, unique_key="fresh"))


async def test_psql_add_task_with_unique_key(backend: PostgreSQLBackend, db: Database) -> None:
    add = (
        "SELECT omniq_add_task('app.jobs.report', '[1]', unique_key => 'p', "
        "unique_window => $1::interval, unique_mode => $2)"
    )
    first = await db.conn.fetchval(add, timedelta(days=1), "skip")
    again = await db.conn.fetchval(add, timedelta(days=1), "replace")
    assert again == first
    assert await db.count("tasks") == 1
    plain = "SELECT omniq_add_task('app.jobs.report', unique_key => 'p2')"
    assert await db.conn.fetchval(plain) == await db.conn.fetchval(plain)
    with pytest.raises(asyncpg.InvalidParameterValueError, match="unique states"):
        await db.conn.fetchval(
            "SELECT omniq_add_task('app.jobs.report', unique_key => 'x', "
            "unique_states => '{completed}')"
        )


def test_sync_forms(sync_backend: PostgreSQLBackend) -> None:
    q = sync_backend.task_queue
    first = q.enqueue_unique_sync(job(1, unique_key="s"))
    assert first.created
    got = q.enqueue_many_unique_sync([job(2, unique_key="s"), job(3, unique_key="t")])
    assert got == [Enqueued(first.id, False), Enqueued(got[1].id, True)]


async def test_retrying_a_task_whose_key_was_taken_is_refused(
    backend: PostgreSQLBackend, protocol: object, db: Database
) -> None:
    q = backend.task_queue
    first = await q.enqueue(Task(func="app.jobs.report", unique_key="k", max_retries=0))
    taken = await q.dequeue("default", worker_id="w")
    assert taken is not None
    await protocol.finish([outcome(taken, "failure", error="boom")], "w")  # type: ignore[attr-defined]
    second = await q.enqueue_unique(job(2, unique_key="k"))
    assert second.created
    with pytest.raises(
        ValueError, match=r"Key \(unique_key\)=\(k\) already exists.*another task holds"
    ):
        await q.retry_tasks([first])
    assert await db.count("tasks", "status = 'failed'") == 1
