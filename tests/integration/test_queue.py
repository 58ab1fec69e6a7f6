"""The task queue against a real PostgreSQL: every method, async and ``_sync``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import Registration, WorkerProtocol
from omniq.backend.postgres.rows import task_document
from omniq.errors import DuplicateTaskError, UnknownDependencyError
from omniq.identifiers import quote_identifier
from omniq.models._common import utcnow
from omniq.models.enums import TaskStatus
from omniq.models.task import Task
from tests.support.db import Database
from tests.support.outcomes import outcome


def now() -> datetime:
    return datetime.now(UTC)


def naive_utc_now() -> datetime:
    """What ``datetime.utcnow()`` returns, without its deprecation warning."""
    return datetime.now(UTC).replace(tzinfo=None)


async def take(backend: PostgreSQLBackend, queues: Any = "default", **kw: Any) -> Task:
    task = await backend.task_queue.dequeue(queues, **kw)
    assert task is not None
    return task


# -- enqueue ---------------------------------------------------------------------------


async def test_enqueue_stores_every_column(backend: PostgreSQLBackend, db: Database) -> None:
    created = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    task = Task(
        func="mymodule.my_function",
        args=(1, "two", [3.5, None], {"four": True}),
        kwargs={"k": {"nested": [1, 2]}, "s": "ü✓"},
        queue_name="emails",
        priority=7,
        created_at=created,
        run_at=datetime(2030, 1, 3),  # naive: UTC
        expires_at=datetime(2030, 2, 1, tzinfo=UTC),
        max_retries=5,
        retry_delay=2.5,
        callbacks={"on_success": "mymodule.done"},
        metadata={"owner": "me"},
        timeout=12.5,
        result_ttl=60,
        task_data={"extra": 1},
    )
    assert await backend.task_queue.enqueue(task) == task.id
    row = await db.row("tasks", task.id)
    assert row is not None
    assert row["queue_name"] == "emails" and row["priority"] == 7
    assert row["status"] == "pending" and row["func"] == "mymodule.my_function"
    assert row["args"] == [1, "two", [3.5, None], {"four": True}]
    assert row["kwargs"] == {"k": {"nested": [1, 2]}, "s": "ü✓"}
    assert row["created_at"] == created
    assert row["run_at"] == datetime(2030, 1, 3, tzinfo=UTC)
    assert row["expires_at"] == datetime(2030, 2, 1, tzinfo=UTC)
    assert (row["retry_count"], row["max_retries"], row["retry_delay"]) == (0, 5, 2.5)
    assert row["dependencies"] == [] and row["callbacks"] == {"on_success": "mymodule.done"}
    assert row["metadata"] == {"owner": "me"}
    assert row["task_data"] == {"extra": 1, "timeout": 12.5, "result_ttl": 60}
    assert await db.events(task.id) == ["enqueued"]
    # The model read back equals the one stored.
    assert await backend.task_queue.get_task(task.id) == task


@pytest.mark.parametrize(
    ("fields", "sent"),
    [
        ({}, set()),
        ({"queue_name": "default", "priority": 0, "max_retries": 3, "retry_delay": 1}, set()),
        (
            {"priority": -1, "max_retries": 0, "retry_delay": 0, "retry_count": 2, "args": (0,)},
            {"priority", "max_retries", "retry_delay", "retry_count", "args"},
        ),
        ({"kwargs": {"": None}, "metadata": {"m": []}}, {"kwargs", "metadata"}),
        ({"timeout": 3, "callbacks": {"on_complete": "m.g"}}, {"task_data", "callbacks"}),
    ],
    ids=["defaults", "defaults-spelled-out", "zeros", "kwargs-metadata", "task-data"],
)
async def test_values_left_out_of_the_document_are_stored_as_the_model_has_them(
    backend: PostgreSQLBackend, fields: dict[str, Any], sent: set[str]
) -> None:
    """task_document sends a value only when it differs from what omniq_insert_tasks stores
    for an absent key; what is stored must then be exactly what the model says. (A batch
    sends documents; enqueue() of one plain task sends every column, typed.)"""
    task = Task(func="m.f", **fields)
    assert set(task_document(task)) == {"id", "func", "created_at"} | sent
    await backend.task_queue.enqueue_many([task])
    assert await backend.task_queue.get_task(task.id) == task


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"priority": -1, "max_retries": 0, "retry_delay": 0, "retry_count": 2, "args": (0,)},
        {
            "queue_name": "emails", "priority": 7, "args": (1, "two", [3.5, None]),
            "kwargs": {"k": {"n": [1]}, "s": "ü✓"}, "run_at": datetime(2030, 1, 3),
            "expires_at": datetime(2030, 2, 1, tzinfo=UTC), "max_retries": 5,
            "retry_delay": 2.5, "callbacks": {"on_success": "m.done"},
            "metadata": {"owner": "me"}, "timeout": 12.5, "result_ttl": 60,
            "task_data": {"extra": 1},
        },
        {"run_at": datetime(2000, 1, 1, tzinfo=UTC)},  # due already: not delayed
    ],
    ids=["defaults", "zeros", "every-column", "due"],
)  # fmt: skip
async def test_one_task_and_a_batch_of_one_store_the_same_row(
    backend: PostgreSQLBackend, db: Database, fields: dict[str, Any]
) -> None:
    """enqueue() of a task without dependencies or unique key calls omniq_enqueue_one_v1
    (typed arguments, migration 0018); enqueue_many sends a JSON document to omniq_enqueue_v2.
    The same task stores the same row either way, every column (delayed included)."""
    one = Task(func="m.f", **fields)
    twin = dataclasses.replace(one, id=one.id + "-twin")
    assert await backend.task_queue.enqueue(one) == one.id
    assert await backend.task_queue.enqueue_many([twin]) == [twin.id]
    first, second = await db.row("tasks", one.id), await db.row("tasks", twin.id)
    assert first is not None and second is not None
    assert {**first, "id": twin.id} == second
    assert one.status == twin.status == TaskStatus.PENDING
    assert await backend.task_queue.get_task(one.id) == one


async def test_get_task_unknown_is_none(backend: PostgreSQLBackend) -> None:
    assert await backend.task_queue.get_task("no-such-task") is None


async def test_duplicate_id_raises_and_keeps_the_original(
    backend: PostgreSQLBackend, db: Database
) -> None:
    await backend.task_queue.enqueue(Task(func="m.first", id="same-id"))
    with pytest.raises(DuplicateTaskError, match="already exists"):
        await backend.task_queue.enqueue(Task(func="m.second", id="same-id"))
    assert await db.count("tasks") == 1
    assert (await db.row("tasks", "same-id"))["func"] == "m.first"  # type: ignore[index]
    assert await db.events("same-id") == ["enqueued"]  # once, derived from the one row


async def test_enqueue_many_stores_a_batch_atomically(
    backend: PostgreSQLBackend, db: Database
) -> None:
    tasks = [Task(func="m.f", args=(i,), queue_name=f"q{i % 3}") for i in range(30)]
    assert await backend.task_queue.enqueue_many(tasks) == [t.id for t in tasks]
    assert await db.count("tasks") == 30
    assert [await db.events(t.id) for t in tasks] == [["enqueued"]] * 30
    assert await db.count("events") == 0  # 'enqueued' is derived, not stored (issue 12)
    assert await backend.task_queue.enqueue_many([]) == []
    # A duplicate inside a batch: nothing of the batch is stored.
    batch = [Task(func="m.g", id="dup"), Task(func="m.g"), Task(func="m.g", id="dup")]
    with pytest.raises(DuplicateTaskError):
        await backend.task_queue.enqueue_many(batch)
    assert await db.count("tasks") == 30
    assert await db.count("tasks", "func = 'm.g'") == 0


async def tasks_notifications(
    backend: PostgreSQLBackend, admin: asyncpg.Connection, enqueue: Awaitable[Any]
) -> list[str]:
    """The payloads of the NOTIFYs on the tasks channel while ``enqueue`` runs."""
    async with backend.acquire() as conn:
        channel = await backend.sql.migrations.channel(conn, kind="tasks")
    got: list[str] = []

    def on_notify(*args: Any) -> None:
        got.append(args[3])

    await admin.add_listener(channel, on_notify)
    try:
        await enqueue
        await asyncio.sleep(0.1)
    finally:
        await admin.remove_listener(channel, on_notify)
    return got


async def test_enqueue_many_sends_one_notify_per_queue(
    backend: PostgreSQLBackend, admin: asyncpg.Connection
) -> None:
    tasks = [Task(func="m.f", queue_name="a" if i % 2 else "b") for i in range(40)]
    got = await tasks_notifications(backend, admin, backend.task_queue.enqueue_many(tasks))
    assert sorted(got) == ["a", "b"]


async def test_enqueue_calls_stores_what_enqueue_many_of_the_same_tasks_stores(
    backend: PostgreSQLBackend,
) -> None:
    """One task per call, the template's settings on each: read back, each is the Task that
    enqueue_many would have stored, its arguments the call's (positional or keyword)."""
    queue = backend.task_queue
    template = Task(
        func="m.send",
        queue_name="mail",
        priority=5,
        max_retries=7,
        retry_delay=0.5,
        timeout=30.0,
        result_ttl=60.0,
        metadata={"tenant": "t1"},
        run_at=now() + timedelta(hours=1),
    )
    calls: list[tuple[Any, ...] | list[Any] | dict[str, Any]] = [(1, "a"), [2], {"user": 3}, ()]
    ids = await queue.enqueue_calls(template, calls)
    assert len(ids) == len(set(ids)) == 4
    stored = [await queue.get_task(i) for i in ids]
    for task, call in zip(stored, calls, strict=True):
        assert task is not None
        expected = dataclasses.replace(
            template,
            id=task.id,
            created_at=task.created_at,
            args=tuple(call) if not isinstance(call, dict) else (),
            kwargs=call if isinstance(call, dict) else {},
        )
        assert task == expected
    created = [t.created_at for t in stored if t is not None]
    assert created == sorted(created)  # in call order, as a batch of Tasks built in turn
    # A function (path or callable) is a template with every default.
    (plain,) = await queue.enqueue_calls("m.f", [(1,)])
    task = await queue.get_task(plain)
    assert task == Task(func="m.f", args=(1,), id=plain, created_at=task.created_at)  # type: ignore[union-attr]
    (by_callable,) = await queue.enqueue_calls(now, [()])
    assert (await queue.get_task(by_callable)).func == f"{__name__}.now"  # type: ignore[union-attr]
    assert await queue.enqueue_calls("m.f", []) == []
    assert await queue.enqueue_calls("m.f", iter([(1,), (2,)])) != []  # any iterable
    assert await queue.dequeue("mail") is None  # each waits for the template's run_at
    assert await queue.get_queue_size("default") == 4


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {
            "queue_name": "emails", "priority": -3, "run_at": datetime(2030, 1, 3),
            "expires_at": datetime(2030, 2, 1, tzinfo=UTC), "max_retries": 0,
            "retry_delay": 0, "retry_count": 2, "callbacks": {"on_success": "m.done"},
            "metadata": {"owner": "me"}, "timeout": 12.5, "result_ttl": 60,
            "task_data": {"extra": 1},
        },
        {"run_at": datetime(2000, 1, 1, tzinfo=UTC)},  # due already: not delayed
    ],
    ids=["defaults", "every-column", "due"],
)  # fmt: skip
async def test_enqueue_calls_and_enqueue_many_store_the_same_rows(
    backend: PostgreSQLBackend, db: Database, fields: dict[str, Any]
) -> None:
    """enqueue_calls sends typed arrays to omniq_enqueue_calls_v1 (migration 0019);
    enqueue_many sends one JSON document per task to omniq_enqueue_v2. The same tasks store
    the same rows either way, every column (delayed included) but id and created_at."""
    calls: list[tuple[Any, ...] | list[Any] | dict[str, Any]] = [(1, "a"), [], {"k": [None]}, ()]
    ids = await backend.task_queue.enqueue_calls(Task(func="m.f", **fields), calls)
    twins = [
        Task(
            func="m.f",
            args=tuple(call) if not isinstance(call, dict) else (),
            kwargs=call if isinstance(call, dict) else {},
            **fields,
        )
        for call in calls
    ]
    assert await backend.task_queue.enqueue_many(twins) == [t.id for t in twins]
    skip = ("id", "created_at")
    for task_id, twin in zip(ids, twins, strict=True):
        row, twin_row = await db.row("tasks", task_id), await db.row("tasks", twin.id)
        assert row is not None and twin_row is not None
        assert {k: v for k, v in row.items() if k not in skip} == {
            k: v for k, v in twin_row.items() if k not in skip
        }


async def test_enqueue_calls_are_taken_and_run_like_any_task(backend: PostgreSQLBackend) -> None:
    ids = await backend.task_queue.enqueue_calls("m.f", [(i,) for i in range(5)])
    taken = await backend.task_queue.dequeue_many("default", 10)
    assert [(t.id, t.args, t.status) for t in taken] == [
        (i, (n,), TaskStatus.RUNNING) for n, i in enumerate(ids)
    ]


@pytest.mark.parametrize(
    ("template", "calls", "error", "match"),
    [
        ("m.f", [(1,), "abc"], TypeError, "call 1 of m.f is 'abc': give each call as a tuple"),
        ("m.f", [(1,), 2], TypeError, "call 1 of m.f is 2"),
        ("m.f", [(1,), ({1, 2},)], TypeError, "args of call 1 of m.f cannot be stored as JSON"),
        ("m.f", [{"x": float("nan")}], TypeError, "kwargs of call 0 of m.f .* not a finite"),
        ("m.f", [{1: "x"}], TypeError, "kwargs of call 0 of m.f cannot be stored as JSON"),
        ("not a path", [()], ValueError, "func must be an import path"),
        (lambda: None, [()], ValueError, "has no import path"),
        (Task(func="m.f", args=(1,)), [()], ValueError, "takes no arguments: each call gives"),
        (Task(func="m.f", kwargs={"a": 1}), [()], ValueError, "takes no arguments"),
        (Task(func="m.f", unique_key="k"), [()], ValueError, "use enqueue_many_unique"),
        (Task(func="m.f", dependencies=["missing"]), [()], UnknownDependencyError, "missing"),
    ],
)
async def test_enqueue_calls_refuses_bad_input_and_stores_nothing(
    backend: PostgreSQLBackend, db: Database, template: Any, calls: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        await backend.task_queue.enqueue_calls(template, calls)
    assert await db.count("tasks") == 0


async def test_enqueue_calls_sends_one_notify(
    backend: PostgreSQLBackend, admin: asyncpg.Connection
) -> None:
    batch = backend.task_queue.enqueue_calls(Task(func="m.f", queue_name="q"), [()] * 50)
    assert await tasks_notifications(backend, admin, batch) == ["q"]


# -- dequeue ---------------------------------------------------------------------------


async def test_dequeue_marks_running_and_logs(backend: PostgreSQLBackend, db: Database) -> None:
    task = Task(func="m.f", args=(1, 2, 3))
    await backend.task_queue.enqueue(task)
    got = await backend.task_queue.dequeue(["default"], worker_id="w1")
    assert got is not None and got.id == task.id
    assert got.status == "running" and got.attempts == 1 and got.worker_id == "w1"
    assert got.started_at is not None and abs(got.started_at - now()) < timedelta(seconds=5)
    assert got.args == (1, 2, 3)
    row = await db.row("tasks", task.id)
    assert row["status"] == "running" and row["worker_id"] == "w1"  # type: ignore[index]
    assert sorted(await db.events(task.id)) == ["dequeued", "enqueued"]
    assert await backend.task_queue.dequeue(["default"]) is None


async def test_taking_tasks_rewrites_the_worker_row_only_when_its_heartbeat_is_a_second_old(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    """A dequeue counts as a heartbeat of the worker taking tasks, but writes its row only when
    the last heartbeat is older than a tenth of stale_after, at most 1 s (omniq_dequeue_v1)."""
    workers = f"{quote_identifier(db.schema)}.omniq_workers"
    await protocol.heartbeat(Registration("w-hb", "h", 1, ["default"], 1))
    await backend.task_queue.enqueue_many([Task(func="m.f") for _ in range(3)])

    async def worker_row() -> dict[str, Any]:
        sql = f"SELECT last_heartbeat, xmin::text AS version FROM {workers} WHERE id = 'w-hb'"  # noqa: S608
        return dict(await db.conn.fetchrow(sql))

    # Beaten "just now": a minute ahead, so that a slow machine cannot age it past the second.
    await db.execute(f"UPDATE {workers} SET last_heartbeat = now() + interval '1 minute'")  # noqa: S608
    fresh = await worker_row()
    assert await protocol.take(["default"], 1, "w-hb")
    assert await worker_row() == fresh  # not written again

    await db.execute(f"UPDATE {workers} SET last_heartbeat = now() - interval '2 seconds'")  # noqa: S608
    old = await worker_row()
    assert await protocol.take(["default"], 1, "w-hb")
    refreshed = await worker_row()
    assert refreshed["last_heartbeat"] > old["last_heartbeat"] + timedelta(seconds=1.5)

    # Nobody else's row is touched, and a worker id with no row registers nothing.
    assert await protocol.take(["default"], 1, "w-unknown")
    assert await db.conn.fetchval(f"SELECT count(*) FROM {workers}") == 1  # noqa: S608


async def test_dequeue_empty_returns_none_at_once(backend: PostgreSQLBackend) -> None:
    assert await backend.task_queue.dequeue(["default"]) is None
    assert await backend.task_queue.dequeue("default") is None
    assert await backend.task_queue.dequeue_many(["a", "b"], 5) == []
    with pytest.raises(ValueError):
        await backend.task_queue.dequeue([])
    with pytest.raises(ValueError):
        await backend.task_queue.dequeue_many(["a"], 0)


async def test_dequeue_order_priority_then_age(backend: PostgreSQLBackend) -> None:
    base = now() - timedelta(minutes=10)
    specs = [("a", 0), ("b", 5), ("c", 5), ("d", -1), ("e", 10), ("f", 0)]
    tasks = [
        Task(func="m.f", id=name, priority=prio, created_at=base + timedelta(seconds=i))
        for i, (name, prio) in enumerate(specs)
    ]
    await backend.task_queue.enqueue_many(reversed(tasks))  # insertion order must not matter
    order = []
    while (task := await backend.task_queue.dequeue(["default"])) is not None:
        order.append(task.id)
    assert order == ["e", "b", "c", "a", "f", "d"]


async def test_first_queue_is_drained_first(backend: PostgreSQLBackend) -> None:
    old = now() - timedelta(hours=1)
    await backend.task_queue.enqueue_many(
        [
            Task(func="m.f", id="low-urgent", queue_name="low", priority=100, created_at=old),
            Task(func="m.f", id="high-1", queue_name="high"),
            Task(func="m.f", id="high-2", queue_name="high"),
            Task(func="m.f", id="other", queue_name="other", priority=1000),
        ]
    )
    got = [(await take(backend, ["high", "low"])).id for _ in range(3)]
    assert got == ["high-1", "high-2", "low-urgent"]
    assert await backend.task_queue.dequeue(["high", "low"]) is None
    assert (await take(backend, ["other"])).id == "other"


async def test_dequeue_many_spans_queues_in_order(backend: PostgreSQLBackend) -> None:
    await backend.task_queue.enqueue_many(
        [Task(func="m.f", id=f"a{i}", queue_name="a") for i in range(3)]
        + [Task(func="m.f", id=f"b{i}", queue_name="b") for i in range(3)]
    )
    first = await backend.task_queue.dequeue_many(["a", "b"], 4)
    assert [t.id for t in first] == ["a0", "a1", "a2", "b0"]
    assert all(t.status == "running" for t in first)
    rest = await backend.task_queue.dequeue_many(["b", "a"], 10)
    assert [t.id for t in rest] == ["b1", "b2"]


async def test_run_at_is_respected(backend: PostgreSQLBackend, db: Database) -> None:
    later = Task(func="m.f", id="later", run_at=naive_utc_now() + timedelta(hours=1))
    due = Task(func="m.f", id="due", run_at=naive_utc_now() - timedelta(seconds=1))
    await backend.task_queue.enqueue_many([later, due])
    assert (await take(backend)).id == "due"
    assert await backend.task_queue.dequeue(["default"]) is None
    assert await backend.task_queue.get_queue_size("default") == 1  # delayed still counts
    due_at = await backend.task_queue.next_due_at(["default"])
    assert due_at == later.run_at
    await db.execute("UPDATE {tasks} SET run_at = now() - interval '1 second' WHERE id = 'later'")
    assert (await take(backend)).id == "later"
    assert await backend.task_queue.next_due_at("default") is None


async def test_expired_task_is_never_handed_out(backend: PostgreSQLBackend, db: Database) -> None:
    stale = Task(func="m.f", id="stale", expires_at=now() - timedelta(seconds=1))
    fresh = Task(func="m.f", id="fresh", expires_at=now() + timedelta(hours=1))
    await backend.task_queue.enqueue_many([stale, fresh])
    assert (await take(backend)).id == "fresh"
    assert await backend.task_queue.dequeue(["default"]) is None
    row = await db.row("tasks", "stale")
    assert row["status"] == "expired" and row["finished_at"] is not None  # type: ignore[index]
    result = await backend.result_storage.get("stale")
    assert result is not None and result.status == "expired"
    assert result.error_type == "TaskExpired"
    assert "expired" in await db.events("stale")
    assert "dequeued" not in await db.events("stale")


async def test_get_queue_size_counts_pending_only(backend: PostgreSQLBackend) -> None:
    q = backend.task_queue
    await q.enqueue_many([Task(func="m.f") for _ in range(4)])
    await q.enqueue_many([Task(func="m.f", queue_name="other") for _ in range(2)])
    await q.enqueue(Task(func="m.f", run_at=now() + timedelta(hours=1)))
    assert await q.get_queue_size("default") == 5
    assert await q.get_queue_size() == 5
    await q.dequeue(["default"])
    assert await q.get_queue_size("default") == 4
    assert await q.get_queue_size("other") == 2
    assert await q.get_queue_size("nothing-here") == 0


# -- dependencies and callbacks --------------------------------------------------------


async def test_dependency_waits_until_completed(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    first = Task(func="m.first")
    second = Task(func="m.second", dependencies=[first])
    await backend.task_queue.enqueue(first)
    await backend.task_queue.enqueue(second)
    assert second.status == "waiting"
    assert (await db.row("tasks", second.id))["status"] == "waiting"  # type: ignore[index]
    running = await take(backend)
    assert running.id == first.id
    assert await backend.task_queue.dequeue(["default"]) is None  # second still waiting
    done = await protocol.finish([outcome(running, "success", result=1)], None)
    assert done == {first.id: "completed"}
    assert (await db.row("tasks", second.id))["status"] == "pending"  # type: ignore[index]
    assert (await take(backend)).id == second.id


async def test_dependency_in_same_batch_and_already_completed(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    a = Task(func="m.a")
    b = Task(func="m.b", dependencies=[a.id])
    await backend.task_queue.enqueue_many([a, b])
    assert b.status == "waiting"
    got = await take(backend)
    await protocol.finish([outcome(got, "success")], None)
    c = Task(func="m.c", dependencies=[a.id])  # depends on a task that already completed
    await backend.task_queue.enqueue(c)
    assert c.status == "pending"
    assert (await db.row("tasks", c.id))["status"] == "pending"  # type: ignore[index]


async def test_failed_dependency_cancels_dependents(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    parent = Task(func="m.parent", max_retries=0)
    child = Task(func="m.child", dependencies=[parent])
    grandchild = Task(func="m.grandchild", dependencies=[child])
    await backend.task_queue.enqueue_many([parent, child, grandchild])
    running = await take(backend)
    answer = await protocol.finish(
        [outcome(running, "failure", error="boom", error_type="ValueError")], "w"
    )
    assert answer == {parent.id: "failed"}
    for dependent in (child, grandchild):
        assert (await db.row("tasks", dependent.id))["status"] == "cancelled"  # type: ignore[index]
        result = await backend.result_storage.get(dependent.id)
        assert result is not None and result.status == "cancelled"
    late = Task(func="m.late", dependencies=[parent])  # depends on an already failed task
    await backend.task_queue.enqueue(late)
    assert late.status == "cancelled"
    assert await backend.task_queue.dequeue(["default"]) is None


async def test_unknown_dependency_raises_and_stores_nothing(
    backend: PostgreSQLBackend, db: Database
) -> None:
    ok = Task(func="m.ok")
    orphan = Task(func="m.orphan", dependencies=["missing-task"])
    with pytest.raises(UnknownDependencyError, match="missing-task"):
        await backend.task_queue.enqueue_many([ok, orphan])
    with pytest.raises(UnknownDependencyError):
        await backend.task_queue.enqueue(orphan)
    assert await db.count("tasks") == 0
    assert await db.count("events") == 0


async def test_finish_enqueues_callbacks_as_tasks(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    ok = Task(
        func="m.ok",
        queue_name="cb",
        callbacks={"on_success": "m.on_ok", "on_failure": "m.on_bad", "on_complete": "m.on_all"},
    )
    bad = Task(func="m.bad", queue_name="cb", max_retries=0, callbacks={"on_failure": "m.on_bad"})
    await backend.task_queue.enqueue_many([ok, bad])
    first, second = await backend.task_queue.dequeue_many(["cb"], 2)
    outcomes = [
        outcome(first, "success", result={"answer": 42}),
        outcome(second, "failure", error="nope", error_type="RuntimeError"),
    ]
    assert await protocol.finish(outcomes, "w") == {
        ok.id: "completed",
        bad.id: "failed",
    }
    callbacks = await db.rows("tasks", "metadata ? 'callback_of'")
    seen = {(r["func"], r["metadata"]["callback_of"]) for r in callbacks}
    assert seen == {("m.on_ok", ok.id), ("m.on_all", ok.id), ("m.on_bad", bad.id)}
    by_func = {r["func"]: r for r in callbacks}
    assert by_func["m.on_ok"]["args"] == [
        {"task_id": ok.id, "status": "success", "result": {"answer": 42}, "error": None,
         "error_type": None}
    ]  # fmt: skip
    assert by_func["m.on_bad"]["args"][0]["error"] == "nope"
    assert all(r["status"] == "pending" and r["queue_name"] == "cb" for r in callbacks)
    assert await backend.task_queue.get_queue_size("cb") == 3


# -- finishing, retries ----------------------------------------------------------------


async def test_success_writes_result_and_events(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    task = Task(func="m.f", result_ttl=3600)
    await backend.task_queue.enqueue(task)
    got = await take(backend, worker_id="w9")
    started = now()
    answer = await protocol.finish(
        [
            outcome(
                got, "success", result=[1, 2], started_at=started.isoformat(), execution_time=0.25
            )
        ],
        "w9",
    )
    assert answer == {task.id: "completed"}
    row = await db.row("tasks", task.id)
    assert row["status"] == "completed" and row["finished_at"] is not None  # type: ignore[index]
    result = await backend.result_storage.get(task.id)
    assert result is not None and result.status == "success" and result.result == [1, 2]
    assert result.worker_id == "w9" and result.execution_time == 0.25
    assert result.expires_at is not None and result.completed_at is not None
    assert timedelta(minutes=59) < result.expires_at - result.completed_at <= timedelta(hours=1)
    assert await db.events(task.id) == ["enqueued", "executing", "completed"]
    assert await db.stored_events(task.id) == []  # all three derived from the task and result


async def test_retry_with_backoff_then_failure(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    task = Task(func="m.flaky", max_retries=2, retry_delay=10)
    await backend.task_queue.enqueue(task)
    delays = []
    for attempt in range(1, 3):
        got = await take(backend)
        assert got.attempts == attempt
        before = now()
        answer = await protocol.finish(
            [outcome(got, "failure", error=f"try {attempt}", error_type="IOError")], None
        )
        assert answer == {task.id: "pending"}
        row = await db.row("tasks", task.id)
        assert row["status"] == "pending" and row["retry_count"] == attempt  # type: ignore[index]
        delays.append((row["run_at"] - before).total_seconds())  # type: ignore[index]
        assert await backend.task_queue.dequeue(["default"]) is None  # backoff: not yet
        assert await backend.result_storage.get(task.id) is None  # no final result yet
        await db.execute("UPDATE {tasks} SET run_at = now() WHERE id = $1", task.id)
    # retry_delay * 2**retry_count * [0.75, 1.25): the second wait is the longer one.
    assert 7 <= delays[0] <= 12.6, delays
    assert 14 <= delays[1] <= 25.1, delays
    got = await take(backend)
    answer = await protocol.finish(
        [outcome(got, "failure", error="final", error_type="IOError", traceback="tb")], None
    )
    assert answer == {task.id: "failed"}
    result = await backend.result_storage.get(task.id)
    assert result is not None and result.status == "failure"
    assert (result.error, result.error_type, result.traceback) == ("final", "IOError", "tb")
    events = await db.events(task.id)
    assert events.count("retry") == 2 and events[-1] == "failed"


async def test_finish_ignores_stale_attempts_and_expires(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    task = Task(func="m.f")
    await backend.task_queue.enqueue(task)
    got = await take(backend)
    stale = dataclasses.replace(outcome(got, "success"), attempt=got.attempts + 5)
    assert await protocol.finish([stale], None) == {}
    assert (await db.row("tasks", task.id))["status"] == "running"  # type: ignore[index]
    assert await protocol.finish([outcome(got, "expired")], None) == {task.id: "expired"}
    result = await backend.result_storage.get(task.id)
    assert result is not None and result.status == "expired"
    assert await protocol.finish([outcome(got, "success")], None) == {}


async def test_release_tasks_returns_them_without_a_retry(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    await backend.task_queue.enqueue_many([Task(func="m.f", id="r1"), Task(func="m.f", id="r2")])
    await backend.task_queue.dequeue_many(["default"], 2, worker_id="w1")
    assert await protocol.release(["r1", "r2"], "someone-else", "x") == 0
    assert await protocol.release(["r1"], "w1", "shutting down") == 1
    row = await db.row("tasks", "r1")
    assert row["status"] == "pending" and row["retry_count"] == 0  # type: ignore[index]
    assert row["worker_id"] is None  # type: ignore[index]
    released = await db.rows("events", "task_id = 'r1' AND event_type = 'requeued'")
    assert [r["message"] for r in released] == ["shutting down"]
    assert (await db.row("tasks", "r2"))["status"] == "running"  # type: ignore[index]
    assert (await take(backend)).id == "r1"


async def test_requeue_stalled(backend: PostgreSQLBackend, db: Database) -> None:
    await backend.task_queue.enqueue_many([Task(func="m.f", id="s1"), Task(func="m.f", id="s2")])
    await backend.task_queue.dequeue_many(["default"], 2)
    await db.execute("UPDATE {tasks} SET started_at = now() - interval '2 hours' WHERE id = 's1'")
    assert await backend.task_queue.requeue_stalled(timedelta(hours=1)) == 1
    assert (await db.row("tasks", "s1"))["status"] == "pending"  # type: ignore[index]
    assert (await db.row("tasks", "s2"))["status"] == "running"  # type: ignore[index]
    assert "requeued" in await db.events("s1")
    assert await backend.task_queue.requeue_stalled(timedelta(hours=1)) == 0


# -- update, delete, cancel, retry -----------------------------------------------------


async def test_update_task(backend: PostgreSQLBackend, db: Database) -> None:
    task = Task(func="m.f", priority=1)
    await backend.task_queue.enqueue(task)
    task.priority = 9
    task.metadata = {"edited": True}
    task.run_at = datetime(2040, 1, 1)  # naive: UTC
    task.kwargs = {"x": [1]}
    assert await backend.task_queue.update_task(task) is True
    row = await db.row("tasks", task.id)
    assert row["priority"] == 9 and row["metadata"] == {"edited": True}  # type: ignore[index]
    assert row["run_at"] == datetime(2040, 1, 1, tzinfo=UTC)  # type: ignore[index]
    assert row["kwargs"] == {"x": [1]}  # type: ignore[index]
    task.status = "completed"  # type: ignore[assignment]
    assert await backend.task_queue.update_task(task) is True
    row = await db.row("tasks", task.id)
    assert row["status"] == "completed" and row["finished_at"] is not None  # type: ignore[index]
    assert await backend.task_queue.update_task(Task(func="m.f", id="ghost")) is False
    assert await db.count("tasks") == 1
    task.args = (object(),)
    with pytest.raises(TypeError):
        await backend.task_queue.update_task(task)
    assert (await db.row("tasks", task.id))["args"] == []  # type: ignore[index]


async def test_delete_task(backend: PostgreSQLBackend, db: Database) -> None:
    task = Task(func="m.f")
    await backend.task_queue.enqueue(task)
    assert await backend.task_queue.delete_task(task.id) is True
    assert await backend.task_queue.delete_task(task.id) is False
    assert await backend.task_queue.get_task(task.id) is None
    assert await db.count("tasks") == 0


async def test_cancel_task(backend: PostgreSQLBackend, db: Database) -> None:
    a, b, c = Task(func="m.a"), Task(func="m.b"), Task(func="m.c")
    dependent = Task(func="m.d", dependencies=[a])
    await backend.task_queue.enqueue_many([a, b, c, dependent])
    assert await backend.task_queue.cancel_task(a.id, "not needed") is True
    assert await backend.task_queue.cancel_task(a.id) is False  # already cancelled
    row = await db.row("tasks", a.id)
    assert row["status"] == "cancelled" and row["finished_at"] is not None  # type: ignore[index]
    result = await backend.result_storage.get(a.id)
    assert result is not None and result.status == "cancelled" and result.error == "not needed"
    assert "cancelled" in await db.events(a.id)
    assert (await db.row("tasks", dependent.id))["status"] == "cancelled"  # type: ignore[index]
    running = await take(backend)
    assert running.id == b.id
    assert await backend.task_queue.cancel_tasks([b.id, c.id, "unknown"]) == 1  # b runs
    assert (await db.row("tasks", b.id))["status"] == "running"  # type: ignore[index]
    assert (await db.row("tasks", c.id))["status"] == "cancelled"  # type: ignore[index]


async def test_retry_tasks(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    specs = [("f1", "q1", "m.x"), ("f2", "q1", "m.y"), ("f3", "q2", "m.x"), ("f4", "q2", "m.y")]
    await backend.task_queue.enqueue_many(
        [Task(func=func, id=i, queue_name=q, max_retries=0) for i, q, func in specs]
    )
    for queue in ("q1", "q2"):
        running = await backend.task_queue.dequeue_many([queue], 2)
        await protocol.finish([outcome(t, "failure") for t in running], None)
    assert await db.count("tasks", "status = 'failed'") == 4
    assert await backend.task_queue.retry_tasks(queue_name="q1", func="m.x") == 1
    assert await backend.task_queue.retry_tasks(func="m.y") == 2
    row = await db.row("tasks", "f1")
    assert row["status"] == "pending" and row["retry_count"] == 0  # type: ignore[index]
    assert await backend.result_storage.get("f1") is None  # the failure is forgotten
    assert "requeued" in await db.events("f1")
    # By ids: cancelled tasks count too; pending ones don't.
    cancelled = Task(func="m.z", id="c1")
    await backend.task_queue.enqueue(cancelled)
    await backend.task_queue.cancel_task("c1")
    assert await backend.task_queue.retry_tasks(["c1", "f3", "f1"]) == 2
    assert await db.count("tasks", "status = 'pending'") == 5
    assert await backend.task_queue.retry_tasks() == 0


async def test_list_tasks_filters_and_pages(backend: PostgreSQLBackend) -> None:
    base = datetime(2030, 1, 1, 12, 0)  # naive: UTC
    tasks = [
        Task(
            func="m.even" if i % 2 == 0 else "m.odd",
            id=f"t{i:02d}",
            queue_name="qa" if i < 6 else "qb",
            created_at=base + timedelta(minutes=i),
        )
        for i in range(10)
    ]
    await backend.task_queue.enqueue_many(tasks)
    await backend.task_queue.dequeue(["qa"])  # t00 runs
    q = backend.task_queue

    def ids(found: list[Task]) -> list[str]:
        return [t.id for t in found]

    assert ids(await q.list_tasks()) == [f"t{i:02d}" for i in range(9, -1, -1)]  # newest first
    assert ids(await q.list_tasks(queue_name="qb")) == ["t09", "t08", "t07", "t06"]
    assert ids(await q.list_tasks(status="running")) == ["t00"]
    assert len(await q.list_tasks(status=["pending", "running"])) == 10
    assert await q.list_tasks(status="failed") == []
    assert ids(await q.list_tasks(func="m.odd", queue_name="qa")) == ["t05", "t03", "t01"]
    after = await q.list_tasks(created_after=base + timedelta(minutes=8))
    assert ids(after) == ["t09", "t08"]
    before = await q.list_tasks(created_before=(base + timedelta(minutes=2)).replace(tzinfo=UTC))
    assert ids(before) == ["t01", "t00"]
    window = await q.list_tasks(
        created_after=base + timedelta(minutes=3), created_before=base + timedelta(minutes=6)
    )
    assert ids(window) == ["t05", "t04", "t03"]
    assert ids(await q.list_tasks(limit=3)) == ["t09", "t08", "t07"]
    assert ids(await q.list_tasks(limit=3, offset=3)) == ["t06", "t05", "t04"]
    assert ids(await q.list_tasks(limit=5, offset=8)) == ["t01", "t00"]
    assert await q.list_tasks(limit=0) == []
    with pytest.raises(ValueError):
        await q.list_tasks(limit=-1)
    with pytest.raises(ValueError):
        await q.list_tasks(offset=-1)


# -- cleanup ---------------------------------------------------------------------------


async def test_cleanup_expired_tasks_returns_rows_deleted(
    backend: PostgreSQLBackend, db: Database
) -> None:
    past, future = naive_utc_now() - timedelta(minutes=1), now() + timedelta(hours=1)
    await backend.task_queue.enqueue_many(
        [Task(func="m.f", id=f"old{i}", expires_at=past) for i in range(3)]
        + [Task(func="m.f", id="keep", expires_at=future), Task(func="m.f", id="plain")]
    )
    assert await backend.task_queue.cleanup_expired_tasks() == 3
    assert sorted(r["id"] for r in await db.rows("tasks")) == ["keep", "plain"]
    assert await backend.task_queue.cleanup_expired_tasks() == 0
    # Their results stay, marked expired, until result cleanup.
    result = await backend.result_storage.get("old0")
    assert result is not None and result.status == "expired"


async def test_purge_finished_tasks(
    backend: PostgreSQLBackend, db: Database, protocol: WorkerProtocol
) -> None:
    old = now() - timedelta(days=3)
    await backend.task_queue.enqueue_many(
        [
            Task(func="m.f", id="old-done", created_at=old),
            Task(func="m.f", id="old-needed", created_at=old - timedelta(seconds=1)),
            Task(func="m.f", id="old-pending", created_at=old, run_at=now() + timedelta(days=1)),
            Task(func="m.f", id="new-done"),
        ]
    )
    running = await backend.task_queue.dequeue_many(["default"], 3)
    assert {t.id for t in running} == {"old-done", "old-needed", "new-done"}
    await protocol.finish([outcome(t, "success") for t in running], None)
    # A dependent that is still waiting (on another task too) keeps old-needed alive.
    blocker = Task(func="m.f", id="blocker", run_at=now() + timedelta(days=1))
    await backend.task_queue.enqueue(blocker)
    waiting = Task(func="m.f", id="waiting", dependencies=["old-needed", "blocker"])
    await backend.task_queue.enqueue(waiting)
    assert await backend.task_queue.purge_finished_tasks(timedelta(days=1)) == 1
    remaining = {r["id"] for r in await db.rows("tasks")}
    assert remaining == {"old-needed", "old-pending", "new-done", "blocker", "waiting"}
    assert await backend.task_queue.purge_finished_tasks(timedelta(days=1)) == 0
    assert await backend.task_queue.purge_finished_tasks(timedelta(0)) == 1  # new-done


# -- the same API, blocking ------------------------------------------------------------


def test_queue_sync_methods(sync_backend: PostgreSQLBackend) -> None:
    q = sync_backend.task_queue
    task = Task(func="mymodule.my_function", args=(1, 2, 3), queue_name="default")
    assert q.enqueue_sync(task) == task.id
    later = Task(func="m.f", id="later", run_at=now() + timedelta(hours=1))
    gone = Task(func="m.f", id="gone", expires_at=now() - timedelta(seconds=1))
    assert q.enqueue_many_sync([Task(func="m.f", id="s2"), later, gone]) == ["s2", "later", "gone"]
    assert q.get_queue_size_sync("default") == 4
    assert q.get_task_sync(task.id) == task
    got = q.dequeue_sync(["default"])
    assert got is not None and got.id == task.id and got.status == "running"
    assert q.next_due_at_sync(["default"]) == later.run_at
    got.priority = 3
    assert q.update_task_sync(got) is True
    running = q.list_tasks_sync(queue_name="default", limit=10, status="running")
    assert [t.id for t in running] == [task.id]
    got.status = TaskStatus.COMPLETED  # ends it as a worker's success would
    assert q.update_task_sync(got) is True
    more = q.dequeue_many_sync(["default"], 5, worker_id="w")
    assert [t.id for t in more] == ["s2"]
    assert q.requeue_stalled_sync(timedelta(0)) == 1  # s2 back to pending
    assert q.dequeue_sync("default", timeout=0.05) is not None
    assert q.requeue_stalled_sync(timedelta(0)) == 1
    assert q.cancel_task_sync("s2") is True
    assert q.cancel_tasks_sync(["s2"]) == 0
    assert q.retry_tasks_sync(["s2"]) == 1
    assert q.cleanup_expired_tasks_sync() == 1  # `gone` expired before it ran
    assert q.purge_finished_tasks_sync(timedelta(0)) == 1  # the completed one
    assert q.delete_task_sync("s2") is True
    assert [t.id for t in q.list_tasks_sync()] == ["later"]


async def test_dequeue_never_predates_the_enqueue(backend, db, pg_dsn) -> None:
    queue = backend.task_queue
    stale = Task(
        func="tests.support.jobs.noop", queue_name="q", expires_at=utcnow() - timedelta(seconds=1)
    )
    await queue.enqueue(stale)
    locker = await asyncpg.connect(pg_dsn)
    try:
        tx = locker.transaction()
        await tx.start()
        # Hold the row omniq_dequeue's expiry step must update: the dequeue starts, then waits.
        lock = f"SELECT 1 FROM {db.table('tasks')} WHERE id = $1 FOR UPDATE"  # noqa: S608
        await locker.execute(lock, stale.id)
        dequeue = asyncio.ensure_future(queue.dequeue_many(["q"], 5, worker_id="w"))
        await asyncio.sleep(0.2)
        fresh = Task(
            func="tests.support.jobs.noop", queue_name="q"
        )  # created while the dequeue waits
        await queue.enqueue(fresh)
        await tx.commit()
        taken = await asyncio.wait_for(dequeue, 10)
    finally:
        await locker.close()
    assert [t.id for t in taken] == [fresh.id]
    row = await db.row("tasks", fresh.id)
    assert row["started_at"] >= row["created_at"], (row["created_at"], row["started_at"])
    assert await db.events(fresh.id) == ["enqueued", "dequeued"]
