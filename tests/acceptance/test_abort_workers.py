"""Aborting tasks run by real ``python -m omniq worker`` processes (issue 13, part 4): from
Python, from ``omniq abort`` (its output read as a person reads it), from SQL, and on the
dashboard's task page (its button: tests/acceptance/test_dashboard_browser.py), with the
latency from the request to the task's end printed (run with ``-s``; scripts/bench_abort
measures it on a quiet machine). The database side and the in-process worker:
tests/integration/test_abort.py.
"""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from omniq import Task
from omniq.backend.postgres.protocol import WorkerProtocol
from omniq.identifiers import quote_identifier
from omniq.models._common import utcnow
from tests.support.abort_jobs import abort_latencies, started, summary
from tests.support.dashboard import start
from tests.support.processes import Processes, wait_until

pytestmark = pytest.mark.timeout(120)

JOBS = "tests.support.abort_jobs"


async def violations(db: Any) -> list[dict[str, Any]]:
    sql = f"SELECT * FROM {quote_identifier(db.schema)}.omniq_check_invariants()"  # noqa: S608
    return [dict(r) for r in await db.conn.fetch(sql)]


async def run_command(omniq: Processes, *args: str, code: int = 0) -> str:
    """``omniq <args>`` to its end; its output (stdout and stderr)."""
    process = omniq.start(*args)
    assert await process.exited(60) == code, process.output()
    return process.output()


async def until_started(path: Path, task_id: str) -> None:
    await wait_until(lambda: any(s["id"] == task_id for s in started(path)), 60, f"{task_id} runs")


async def test_aborts_reach_worker_processes_and_take_effect_promptly(
    backend, db, omniq: Processes, tmp_path: Path
) -> None:
    """Two workers run 30 async tasks that would sleep an hour; each is aborted from Python in
    turn and ends cancelled, naming who asked; then thread tasks that check should_abort()."""
    for _ in range(2):
        await omniq.worker("--concurrency", "20", "--prefetch", "0")
    latencies = await abort_latencies(backend, str(tmp_path / "async"), 30)
    print(f"\nabort latency, async tasks, request to stored result: {summary(latencies)}")
    threads = await abort_latencies(backend, str(tmp_path / "threads"), 10, "polite")
    print(f"abort latency, thread tasks polling every 10 ms: {summary(threads)}")
    cancelled = await db.rows(
        "results", "status = 'cancelled' AND error = 'aborted by bench: latency'"
    )
    assert len(cancelled) == 40
    assert len({s["worker_id"] for s in started(tmp_path / "async")}) == 2  # both workers took some
    assert await violations(db) == []


async def test_omniq_abort_on_the_command_line(
    backend, db, omniq: Processes, tmp_path: Path
) -> None:
    """What a person sees: a running task aborted and waited for, a pending one cancelled, a
    finished one refused (exit 1), an unknown id (exit 3); and the SQL form."""
    await omniq.worker("--concurrency", "4")
    path = tmp_path / "started"
    running = Task(func=f"{JOBS}.sleeper", args=(str(path),))
    later = Task(func=f"{JOBS}.quick", args=(str(path),), run_at=utcnow() + timedelta(hours=1))
    await backend.task_queue.enqueue_many([running, later])
    await until_started(path, running.id)

    out = await run_command(omniq, "abort", running.id, "--reason", "deploy", "--by", "ops")
    assert out.startswith(f"aborted task {running.id}: cancelled after "), out
    print(f"\n$ omniq abort {running.id} --reason deploy --by ops\n{out}", end="")
    result = await db.row("results", running.id)
    assert result["status"] == "cancelled" and result["error"] == "aborted by ops: deploy"

    out = await run_command(omniq, "abort", later.id)
    assert out == f"cancelled task {later.id} (it was pending; it never ran)\n", out
    assert (await db.row("results", later.id))["error"].startswith("aborted by ")
    out = await run_command(omniq, "abort", later.id, code=1)
    assert out == f"omniq: task {later.id} is cancelled; nothing to abort\n", out
    out = await run_command(omniq, "abort", "no-such-task", code=3)
    assert out == "omniq: no task with id 'no-such-task'\n", out

    by_sql = Task(func=f"{JOBS}.sleeper", args=(str(path),))
    await backend.task_queue.enqueue(by_sql)
    await until_started(path, by_sql.id)
    schema = quote_identifier(db.schema)
    assert await db.conn.fetchval(f"SELECT {schema}.omniq_abort_task($1, 'from psql')", by_sql.id)
    result = await backend.result_storage.wait(by_sql.id, 60)
    user = await db.conn.fetchval("SELECT session_user")
    assert result.status == "cancelled" and result.error == f"aborted by {user}: from psql"
    assert await violations(db) == []


async def test_an_aborted_task_whose_worker_dies_is_not_run_again(
    backend, db, omniq: Processes, tmp_path: Path
) -> None:
    """The rescue guard with real processes: a thread task that never looks at should_abort()
    keeps running after the request; its worker is killed (SIGKILL); the other worker's rescue
    ends the task cancelled instead of running it again."""
    liveness = ("--heartbeat", "0.5", "--worker-timeout", "2")
    doomed = await omniq.worker("--concurrency", "1", *liveness)
    path = tmp_path / "started"
    task = Task(func=f"{JOBS}.ignorer", args=(str(path), 3600.0), max_retries=5)
    await backend.task_queue.enqueue(task)
    await until_started(path, task.id)
    await omniq.worker("--concurrency", "1", *liveness)
    assert await backend.task_queue.abort_task(task.id, requested_by="ops") is True
    await doomed.logged("aborting")  # the request reached it; the function runs on regardless
    doomed.send(signal.SIGKILL)
    result = await backend.result_storage.wait(task.id, 60)
    assert result is not None and result.status == "cancelled", result
    assert result.error == "aborted by ops"
    assert len(started(path)) == 1  # never run again
    assert await violations(db) == []


async def test_the_dashboard_shows_a_request_its_task_has_not_obeyed_yet(
    backend, omniq: Processes
) -> None:
    """A running task whose function has not stopped yet (here: no worker listens) shows the
    request on its page: who asked, when, why."""
    task = Task(func="app.slow.crunch")
    await backend.task_queue.enqueue(task)
    (running,) = await WorkerProtocol(backend).take(["default"], 1, "w-away")
    assert await backend.task_queue.abort_task(running.id, "stuck", requested_by="ops") is True
    url = await start(omniq)
    async with httpx.AsyncClient(timeout=30) as client:
        page = (await client.get(f"{url}/tasks/{task.id}")).text
    assert 'data-status="running"' in page
    assert (
        "requested by ops" in page and ": stuck; it ends cancelled once its function stops" in page
    )
