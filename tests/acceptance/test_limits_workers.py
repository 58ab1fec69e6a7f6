"""Queue limits with real worker processes (issue 13, parts 2-3): several ``omniq worker``
processes on one queue never run more than max_running of its tasks at once (windows recorded
on the database's clock), max_running=1 runs them one at a time, a rate limit's starts stay
within its token bucket, and a paused queue's workers sit idle (no statement) until resume's
NOTIFY wakes them."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.identifiers import quote_identifier
from omniq.models.task import Task
from tests.acceptance.test_cli import CLI
from tests.support.dashboard import start as start_dashboard
from tests.support.db import Database, drop_schemas, run_in_thread, unique_schema
from tests.support.processes import Processes, wait_until

QUEUE = "limited"


@pytest.fixture(autouse=True)
async def _in_schema(db: Database) -> None:
    """The admin connection reads the test's schema first."""
    await db.conn.execute(f"SET search_path = {quote_identifier(db.schema)}, public")


async def windows_table(db: Database) -> None:
    await db.conn.execute(
        "CREATE TABLE windows (started TIMESTAMPTZ NOT NULL, ended TIMESTAMPTZ NOT NULL)"
    )


async def enqueue_windows(backend: PostgreSQLBackend, pg_dsn: str, n: int, seconds: float) -> None:
    job = "tests.support.limit_jobs.db_window"
    schema = backend.config.schema
    await backend.task_queue.enqueue_many(
        [Task(func=job, args=(pg_dsn, schema, seconds), queue_name=QUEUE) for _ in range(n)]
    )


async def all_done(db: Database, n: int) -> bool:
    return await db.count("tasks", "status = 'completed'") == n


def most_at_once(windows: list[tuple[datetime, datetime]]) -> int:
    """The largest number of windows open at one moment (an end before a start at a tie)."""
    edges = sorted([(s, 1) for s, _ in windows] + [(e, -1) for _, e in windows])
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


async def start_workers(omniq: Processes, count: int) -> list:
    return [await omniq.worker("--queues", QUEUE, "--concurrency", "4") for _ in range(count)]


@pytest.mark.parametrize("max_running", [2, 1])
async def test_workers_never_exceed_max_running(
    backend: PostgreSQLBackend, db: Database, omniq: Processes, pg_dsn: str, max_running: int
) -> None:
    await windows_table(db)
    await backend.task_queue.set_queue_limits(QUEUE, max_running=max_running)
    n = 12 if max_running == 2 else 8
    await enqueue_windows(backend, pg_dsn, n, 0.15)
    workers = await start_workers(omniq, 3)
    await wait_until(lambda: all_done(db, n), 120, "every task to complete", workers[0])
    rows = await db.conn.fetch("SELECT started, ended FROM windows")
    windows = [(r["started"], r["ended"]) for r in rows]
    peak = most_at_once(windows)
    span = (max(e for _, e in windows) - min(s for s, _ in windows)).total_seconds()
    print(
        f"\n3 workers x concurrency 4, max_running={max_running}: {n} tasks of 0.15 s, "
        f"at most {peak} at once, {span:.2f} s from first start to last end"
    )
    assert len(windows) == n
    assert peak <= max_running
    assert peak == max_running or max_running == 1  # the limit, not something else, held them
    invariants = await db.conn.fetch("SELECT invariant FROM omniq_check_invariants()")
    assert invariants == []


async def test_rate_limited_starts_stay_within_the_bucket(
    backend: PostgreSQLBackend, db: Database, omniq: Processes
) -> None:
    rate, burst, n = 2.0, 2, 6
    await backend.task_queue.set_queue_limits(QUEUE, rate=rate, burst=burst)
    await backend.task_queue.enqueue_many(
        [Task(func="tests.support.jobs.noop", queue_name=QUEUE) for _ in range(n)]
    )
    workers = await start_workers(omniq, 2)
    await wait_until(lambda: all_done(db, n), 120, "every task to complete", workers[0])
    starts = sorted(r["started_at"] for r in await db.rows("tasks"))
    # A token bucket lets at most burst + rate * T tasks start in any span of T seconds, on
    # the bucket's clock. started_at is stamped a little later, while the dequeue updates the
    # rows (12 ms measured on a loaded machine): a fraction of a task. A limit not enforced,
    # or a token spent twice, is a whole task or more.
    worst = max(
        (j - i + 1) - (burst + rate * (starts[j] - starts[i]).total_seconds())
        for i in range(n)
        for j in range(i, n)
    )
    achieved = (n - burst) / (starts[-1] - starts[0]).total_seconds()
    print(
        f"\nrate {rate}/s burst {burst}: {n} starts, achieved {achieved:.2f}/s after the burst, "
        f"at most {worst:+.3f} tasks beyond the bucket in any span"
    )
    assert worst < 1


async def test_paused_queue_idles_its_workers_until_resume_wakes_them(
    backend: PostgreSQLBackend, db: Database, omniq: Processes, admin: asyncpg.Connection
) -> None:
    from tests.acceptance.test_worker import _statements_started

    q = backend.task_queue
    await q.pause_queue(QUEUE)
    await q.enqueue_many([Task(func="tests.support.jobs.noop", queue_name=QUEUE) for _ in range(3)])
    workers = await start_workers(omniq, 2)

    async def settled() -> bool:  # start-up over: a second without a statement
        first = await _statements_started(admin)
        await asyncio.sleep(1.0)
        return first == await _statements_started(admin)

    await wait_until(settled, 60, "the workers' start-up queries to end", workers[0])
    before = await _statements_started(admin)
    await asyncio.sleep(2.0)
    after = await _statements_started(admin)
    assert [pid for pid, at in after.items() if before.get(pid, "new") != at] == []  # idle
    assert await db.count("tasks", "status = 'pending'") == 3  # none taken while paused
    await q.resume_queue(QUEUE)  # its NOTIFY is the only thing that can wake them
    await wait_until(lambda: all_done(db, 3), 60, "the tasks to run after resume", workers[0])


def test_queue_commands(pg_dsn: str, tmp_path: Path) -> None:
    """``omniq queue ...`` and ``omniq status`` run for real; their output read as a person would."""
    cli = CLI(pg_dsn, unique_schema("cli"), tmp_path)
    try:
        cli.install()
        shown = []

        def run(*args: str, code: int = 0) -> str:
            done = cli(*args, code=code)
            shown.append(f"$ omniq {' '.join(args)}\n{done.stdout}{done.stderr}")
            return done.stdout + done.stderr

        assert run("queue", "list") == "no queue is paused or limited\n"
        assert run("queue", "pause", "emails") == "queue 'emails' paused\n"
        assert run("queue", "pause", "emails") == "queue 'emails' was already paused\n"
        assert run("queue", "limit", "emails", "--max-running", "2", "--rate", "5") == (
            "queue 'emails': paused, max_running 2, rate 5/s (burst 5)\n"
        )
        assert "must be positive" in run("queue", "limit", "emails", "--rate", "-1", code=2)
        assert "whole number" in run("queue", "limit", "emails", "--max-running", "-1", code=2)
        with cli.backend() as backend:
            backend.task_queue.enqueue_sync(Task(func="app.jobs.mail", queue_name="emails"))
        listing = run("queue", "list").splitlines()
        assert listing[0].split() == ["QUEUE", "STATE", "LIMITS", "RUNNING", "PENDING"]
        assert listing[1].split() == ["emails", "paused", "max_running", "2,", "rate", "5/s", "(burst", "5)", "0", "1"]  # fmt: skip
        assert cli.json("queue", "list")[0]["max_running"] == 2
        status = run("status")
        assert "emails (paused)" in status
        assert "Limits: emails: max_running 2, rate 5/s (burst 5)" in status
        assert run("queue", "resume", "emails") == "queue 'emails' resumed\n"
        assert run("queue", "limit", "emails") == "queue 'emails': no limits\n"
        assert "(paused)" not in run("status")
        print("\n" + "\n".join(shown))
    finally:
        run_in_thread(lambda: drop_schemas(pg_dsn, cli.schema))


async def test_the_dashboard_marks_paused_queues(
    backend: PostgreSQLBackend, omniq: Processes
) -> None:
    q = backend.task_queue
    await q.enqueue_many([Task(func="app.jobs.mail", queue_name=n) for n in ("held", "open")])
    await q.pause_queue("held")
    url = await start_dashboard(omniq)
    async with httpx.AsyncClient(timeout=30) as client:
        page = (await client.get(url + "/")).text
    rows = {m[0]: m[1] for m in re.findall(r">(held|open)</a>( <span[^>]*>paused</span>)?", page)}
    assert rows == {"held": rows["held"], "open": ""} and "paused" in rows["held"]
    assert (await backend.monitor.gauges()).queues["held"].paused
