"""backend.monitor, the dashboard's read model, against real PostgreSQL: what each view counts,
keyset pages that visit every task once, task details with attempts and links, and plans that
use the indexes their comments name (no sequential scan of tasks, results or events)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres import monitor as monitor_module
from omniq.backend.postgres.protocol import OutcomeKind, Registration, WorkerProtocol
from omniq.identifiers import quote_identifier
from omniq.models.schedule import Schedule
from omniq.models.task import Task
from tests.support.outcomes import outcome as make_outcome
from tests.support.plans import (
    BigInstallation,
    big_installation,
    check,
    expected_indexes,
    explain,
    logged_plans,
    scans,
)

NOW = datetime.now(UTC)


async def finish(backend: PostgreSQLBackend, queue: str, kind: OutcomeKind, **fields: Any) -> str:
    """Take one task of ``queue`` as worker w-1 and record an outcome of ``kind`` for it."""
    (task,) = await backend.task_queue.dequeue_many(queue, 1, worker_id="w-1")
    await WorkerProtocol(backend).finish([make_outcome(task, kind, **fields)], "w-1")
    return task.id


async def test_gauges_count_each_live_state_per_queue(backend: PostgreSQLBackend) -> None:
    q = backend.task_queue
    first = Task(func="app.a", queue_name="mail")
    await q.enqueue_many([
        first,
        Task(func="app.b", queue_name="mail", run_at=NOW + timedelta(hours=1)),
        Task(func="app.c", queue_name="mail", dependencies=[first.id]),
        Task(func="app.d", queue_name="mail", max_retries=0),
        Task(func="app.e", queue_name="mail"),
        Task(func="app.f", queue_name="other"),
    ])  # fmt: skip
    protocol = WorkerProtocol(backend)
    await protocol.heartbeat(Registration("w-1", "h", 1, ["mail"], 1))
    await protocol.heartbeat(Registration("w-gone", "h", 2, ["mail"], 1, timedelta(0)))
    # first runs and stays running; app.d fails for good.
    taken = await q.dequeue_many("mail", 3, worker_id="w-1")
    assert [t.func for t in taken] == ["app.a", "app.d", "app.e"]
    await protocol.finish(
        [make_outcome(taken[1], "failure", error="no"), make_outcome(taken[2], "success")], "w-1"
    )

    gauges = await backend.monitor.gauges()
    mail, other = gauges.queues["mail"], gauges.queues["other"]
    assert (mail.ready, mail.later, mail.waiting, mail.running, mail.failed) == (0, 1, 1, 1, 1)
    assert (other.ready, other.later, other.waiting, other.running, other.failed) == (1, 0, 0, 0, 0)
    assert mail.next_later_at is not None and mail.oldest_ready_at is None
    assert other.oldest_ready_seconds(gauges.at) is not None
    assert (gauges.workers_alive, gauges.workers_stale) == (1, 1)

    overview = await backend.monitor.overview()
    mail = next(s for s in overview.queues if s.queue == "mail")
    assert (mail.done_recently, mail.failed_recently) == (1, 1)
    assert sum(m["completed"] for m in overview.minutes) == 1
    assert sum(m["failed"] for m in overview.minutes) == 1
    assert 60 <= len(overview.minutes) <= 62
    assert {w["id"]: w["held"] for w in overview.workers} == {"w-1": 1, "w-gone": 0}
    assert [w["stuck_threads"] for w in overview.workers] == [0, 0]
    assert next(w for w in overview.workers if w["id"] == "w-1")["held_ids"] == [first.id]


async def test_pages_visit_every_task_once_newest_first(backend: PostgreSQLBackend) -> None:
    """Keyset pages over live and finished tasks, ties on created_at included, in order."""
    tie = NOW - timedelta(minutes=5)
    tasks = [
        Task(func=f"app.job_{i % 3}", queue_name=f"q{i % 2}", max_retries=0,
             created_at=tie if i % 4 == 0 else NOW - timedelta(seconds=i))
        for i in range(60)
    ]  # fmt: skip
    await backend.task_queue.enqueue_many(tasks)
    for _ in range(10):
        await finish(backend, "q0", "success")
    for _ in range(5):
        await finish(backend, "q1", "failure", error="disk full", error_type="OSError")
    await backend.task_queue.cancel_tasks([tasks[1].id, tasks[3].id])  # two new ones in q1

    expected = sorted(tasks, key=lambda t: (t.created_at, t.id), reverse=True)
    seen, before = [], None
    while True:
        page = await backend.monitor.task_page(before=before, limit=7)
        seen += [r["id"] for r in page.rows]
        if page.next_before is None:
            break
        before = page.next_before
    assert seen == [t.id for t in expected]

    failed = await backend.monitor.task_page(status="failed", limit=50)
    assert len(failed.rows) == 5 and {r["error"] for r in failed.rows} == {"disk full"}
    q1 = await backend.monitor.task_page(queue_name="q1", status=["pending"], limit=100)
    assert {r["queue_name"] for r in q1.rows} == {"q1"} and len(q1.rows) == 30 - 5 - 2
    by_func = await backend.monitor.task_page(func="app.job_2", limit=100)
    assert len(by_func.rows) == 20
    recent = await backend.monitor.task_page(created_after=NOW - timedelta(seconds=9.5), limit=100)
    assert {r["id"] for r in recent.rows} == {
        t.id for t in tasks if t.created_at >= NOW - timedelta(seconds=9.5)
    }
    # Search: a piece of the func or of the final error, any case.
    assert len((await backend.monitor.task_page(search="JOB_1", limit=100)).rows) == 20
    assert len((await backend.monitor.task_page(search="disk FULL", limit=100)).rows) == 5
    assert (await backend.monitor.task_page(search="nothing like it")).rows == []
    with pytest.raises(ValueError, match="unknown task status 'done'"):
        await backend.monitor.task_page(status="done")


async def test_a_narrowed_page_reads_a_bounded_number_of_tasks(
    backend: PostgreSQLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rare match past SCAN tasks: pages stop at the bound and carry on, losing nothing."""
    monkeypatch.setattr(monitor_module, "SCAN", 10)
    needles = [
        Task(func="app.needle", created_at=NOW - timedelta(days=1, seconds=i)) for i in range(3)
    ]
    hay = [Task(func="app.hay", created_at=NOW - timedelta(seconds=i)) for i in range(25)]
    await backend.task_queue.enqueue_many(needles + hay)
    await backend.task_queue.cancel_tasks([t.id for t in hay[::2]])  # two statuses to merge
    pages, before = [], None
    while True:
        page = await backend.monitor.task_page(search="NEEDLE", before=before, limit=2)
        pages.append(page)
        if page.next_before is None:
            break
        before = page.next_before
    assert [r["id"] for p in pages for r in p.rows] == [t.id for t in needles]
    assert pages[0].rows == [] and pages[0].reached is not None and pages[0].scanned == 10
    assert len(pages) <= 1 + 25 // 5 + 2  # no page read more than its bound
    by_queue = await backend.monitor.task_page(queue_name="default", limit=100)
    assert by_queue.reached is None and len(by_queue.rows) == 28  # under the bound: all of them


async def test_task_detail_has_attempts_links_and_callbacks(
    backend: PostgreSQLBackend, db_of: object
) -> None:
    q = backend.task_queue
    parent = Task(func="app.parent", queue_name="d", max_retries=1, retry_delay=0.0,
                  callbacks={"on_complete": "app.notify"})  # fmt: skip
    child = Task(func="app.child", queue_name="d", dependencies=[parent.id])
    await q.enqueue_many([parent, child])
    await finish(backend, "d", "failure", error="flaky", error_type="IOError",
                 traceback="Traceback (most recent call last):\nIOError: flaky")  # fmt: skip
    await finish(backend, "d", "success", result={"rows": 3})

    d = await backend.monitor.task_detail(parent.id)
    assert d is not None and d.stored and d.task["status"] == "completed"
    assert d.result is not None and d.result["result"] == {"rows": 3}
    assert [a["outcome"] for a in d.attempts] == ["failed, retried", "completed"]
    assert d.attempts[0]["error"] == "flaky" and "IOError" in d.attempts[0]["traceback"]
    assert [e["event_type"] for e in d.events][0] == "enqueued"
    assert [(c["id"], c["status"]) for c in d.children] == [(child.id, "pending")]
    assert [(c["func"], c["callback"]) for c in d.callbacks] == [("app.notify", "on_complete")]

    c = await backend.monitor.task_detail(child.id)
    assert c is not None and [(p["id"], p["status"]) for p in c.parents] == [
        (parent.id, "completed")
    ]

    await q.delete_task(parent.id)  # purged: the result and events remain
    gone = await backend.monitor.task_detail(parent.id)
    assert gone is not None and not gone.stored and gone.result["status"] == "success"
    assert await backend.monitor.task_detail("no-such-task") is None
    assert await backend.monitor.task_states([child.id, "nope"]) == {
        child.id: {"id": child.id, "status": "pending", "attempts": 0, "worker_id": None,
                   "started_at": None, "finished_at": None}
    }  # fmt: skip


async def test_schedules_show_their_last_runs(backend: PostgreSQLBackend) -> None:
    storage = backend.schedule_storage
    await storage.save_schedule(Schedule(id="tick", func="app.tick", interval_seconds=60,
                                         next_run=NOW - timedelta(seconds=1)))  # fmt: skip
    await storage.save_schedule(Schedule(id="later", func="app.later", cron_expression="0 3 * * *"))
    await storage.pause_schedule("later")
    assert await storage.fire_due_schedules() == 1
    rows = await backend.monitor.schedules()
    assert [(s["id"], s["status"]) for s in rows] == [("tick", "active"), ("later", "paused")]
    (run,) = rows[0]["runs"]
    assert run["status"] == "pending" and run["id"].startswith("tick@")
    assert rows[1]["runs"] == []


def test_sync_twins(sync_backend: PostgreSQLBackend) -> None:
    sync_backend.task_queue.enqueue_sync(Task(func="app.sync", queue_name="s"))
    assert sync_backend.monitor.gauges_sync().queues["s"].ready == 1
    assert len(sync_backend.monitor.task_page_sync(queue_name="s").rows) == 1


# -- plans at volume -----------------------------------------------------------------------

# 100,000 finished tasks over ~29 days (the last hour holds ~140), results stored when they
# finished, one event each; live tasks; dependents, callbacks and schedule runs.
LOAD = """
INSERT INTO tasks (id, queue_name, priority, status, func, args, kwargs, created_at,
    task_data, started_at, finished_at, worker_id, attempts, dependencies, metadata)
SELECT 'done-' || g, 'q' || (g % 5), 0,
       CASE WHEN g % 50 = 0 THEN 'failed' WHEN g % 97 = 0 THEN 'cancelled' ELSE 'completed' END,
       'app.jobs.work_' || (g % 20), '[]', '{}',
       now() - interval '100000 seconds' * 25 + g * interval '25 seconds', '{}',
       now() - interval '100000 seconds' * 25 + g * interval '25 seconds',
       now() - interval '100000 seconds' * 25 + g * interval '25 seconds' + interval '1 second',
       'w-' || (g % 4), 1,
       CASE WHEN g % 200 = 0 THEN jsonb_build_array('done-' || (g - 1)) ELSE '[]' END,
       CASE WHEN g % 100 = 1 THEN jsonb_build_object('callback_of', 'done-' || (g - 1), 'callback', 'on_complete')
            WHEN g % 100 = 2 THEN jsonb_build_object('schedule_id', 'sched-' || (g % 10))
            ELSE '{}' END
FROM generate_series(1, 100000) AS g;
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data, run_at,
    delayed)
SELECT 'todo-' || g, 'q' || (g % 5), 'pending', 'app.jobs.work', '[]', '{}',
       now() - g * interval '1 second', '{}', CASE WHEN g % 10 = 0 THEN now() + interval '1 hour' END,
       g % 10 = 0
FROM generate_series(1, 3000) AS g;
INSERT INTO omniq_workers (id, hostname, pid, queues, concurrency)
SELECT 'w-' || g, 'host', g, ARRAY['q0', 'q1'], 8 FROM generate_series(0, 3) AS g;
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data,
    started_at, worker_id, attempts)
SELECT 'run-' || g, 'q' || (g % 5), 'running', 'app.jobs.work', '[]', '{}', now(), '{}', now(),
       'w-' || (g % 4), 1
FROM generate_series(1, 32) AS g;
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data, dependencies)
SELECT 'wait-' || g, 'q1', 'waiting', 'app.jobs.after', '[]', '{}', now(), '{}',
       jsonb_build_array('todo-' || g)
FROM generate_series(1, 200) AS g;
INSERT INTO results (task_id, status, error, created_at, started_at, completed_at, result_data)
SELECT t.id, CASE t.status WHEN 'completed' THEN 'success' WHEN 'failed' THEN 'failure'
             ELSE t.status END,
       CASE WHEN t.status = 'failed' THEN 'disk full' END, t.finished_at, t.started_at,
       t.finished_at, '{}'
FROM tasks AS t WHERE t.status IN ('completed', 'failed', 'cancelled');
INSERT INTO events (id, task_id, event_type, timestamp, queue_name)
SELECT t.id || '/0', t.id, 'enqueued', t.created_at, t.queue_name FROM tasks AS t;
INSERT INTO schedules (id, schedule_type, func, queue_name, interval_seconds, status,
    created_at, next_run, schedule_data)
SELECT 'sched-' || g, 'interval', 'app.jobs.tick', 'q0', 60, 'active', now(),
       now() + g * interval '1 minute', '{}'
FROM generate_series(0, 9) AS g;
"""

MID = "done-50000"
PAGE = dict(queue_name=None, func=None, created_after=None, created_before=None, search=None,
            scan=51, before_created_at=None, before_id=None, limit=51)  # fmt: skip
LIVE = ["pending", "waiting", "running"]
CASES = {
    "gauges": ("queue_gauges", {}),
    "throughput": ("finished_per_minute", {"since": NOW - timedelta(hours=1)}),
    "workers": ("workers", {}),
    "schedules": ("schedules", {"limit": 100, "runs": 5}),
    "all tasks": ("task_page", {**PAGE, "statuses": LIVE + ["completed", "failed",
                                                            "cancelled", "expired"]}),
    "failed of a queue": ("task_page", {**PAGE, "statuses": ["failed"], "queue_name": "q1"}),
    "completed, deep": ("task_page", {**PAGE, "statuses": ["completed"],
                                      "before_created_at": NOW - timedelta(days=14),
                                      "before_id": MID}),
    "pending": ("task_page", {**PAGE, "statuses": ["pending"]}),
    "search": ("task_page", {**PAGE, "statuses": ["completed", "failed"], "search": "full",
                             "scan": 5_000}),
    "rare queue": ("task_page", {**PAGE, "statuses": ["completed", "failed"], "queue_name": "q9",
                                 "scan": 5_000}),
    "page rows": ("task_rows", {"ids": ["done-7", "todo-7", "run-7"]}),
    "a day": ("task_page", {**PAGE, "statuses": ["completed"],
                            "created_after": NOW - timedelta(days=3),
                            "created_before": NOW - timedelta(days=2)}),
    "detail": ("task_detail", {"id": MID}),
    "related": ("related_tasks", {"id": "done-199", "limit": 100}),
    "states": ("task_states", {"ids": ["done-7", "todo-7", "run-7"]}),
}  # fmt: skip


@pytest.fixture(scope="module")
async def volume(pg_dsn: str) -> AsyncIterator[BigInstallation]:
    vacuum = "VACUUM ANALYZE tasks, results, events, schedules, omniq_workers"
    async with big_installation(pg_dsn, "monplans", LOAD, then=[vacuum]) as installation:
        yield installation


@pytest.mark.parametrize("case", list(CASES))
async def test_monitor_queries_read_their_indexes(volume: BigInstallation, case: str) -> None:
    name, params = CASES[case]
    query = getattr(volume.files.monitor, name)
    expected = expected_indexes(query)
    assert expected, f"monitor.{name}: its comment names no index"
    check([await explain(volume, query, params)], expected, f"EXPLAIN monitor.{name}")
    if volume.auto_explain:  # the generic plan too, after the fifth execution
        for i, plans in enumerate(await logged_plans(volume, query, params), start=1):
            check(plans, expected, f"monitor.{name}, execution {i}")


async def test_a_page_reads_a_page_not_the_history(volume: BigInstallation) -> None:
    """The finished part of a page stops after one page per status: rows read stay small."""
    query = volume.files.monitor.task_page
    params = CASES["completed, deep"][1]
    text = await volume.conn.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + query.sql, *query.args(params)
    )
    plan = json.loads(text)[0]["Plan"]
    finished = [n for n in scans(plan) if n.get("Index Name") == "tasks_finished_idx"]
    assert finished, "the page did not read tasks_finished_idx"
    assert max(n["Actual Rows"] * n.get("Actual Loops", 1) for n in finished) <= 200


async def test_the_volume_holds_a_month_of_history(volume: BigInstallation) -> None:
    s = quote_identifier(volume.schema)
    finished = await volume.conn.fetchval(
        f"SELECT count(*) FROM {s}.tasks WHERE status IN ('completed', 'failed', 'cancelled')"  # noqa: S608
    )
    assert finished == 100_000
