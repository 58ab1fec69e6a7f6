"""Photograph each dashboard screen into scripts/screenshots/*.png (run it as scripts/screenshots/take).

A throwaway embedded PostgreSQL gets a week of finished tasks and a busy last hour (generated
in SQL, so the chart has something to show), then live demo tasks through the API: retries
that succeed, a failure that cancels its dependents, a dependency chain with a callback,
delayed and backlogged work, schedules. A real worker runs them (and holds a few slow ones),
`omniq dashboard` serves them, and headless Chromium takes the pictures.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.async_api import async_playwright

from omniq.backend.postgres import PostgreSQLBackend
from omniq.embedded import EmbeddedPostgres
from omniq.models.config import PostgresConfig
from omniq.models.schedule import Schedule
from omniq.models.task import Task

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHROMIUM = os.environ.get("OMNIQ_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
EX = "omniq.examples"

# A week of history (12,000 tasks), then the last hour minute by minute at a changing rate
# with a burst of failures, in four queues; each finished task has its result and 3 events.
HISTORY = """
WITH spec AS (
    SELECT g, now() - interval '7 days' + g * interval '50 seconds' AS at,
           (ARRAY['emails', 'reports', 'images', 'default'])[1 + g % 4] AS queue,
           (ARRAY['word_count', 'sha256', 'primes_below', 'fetch_later'])[1 + g % 4] AS fn,
           g % 41 = 0 AS failed
    FROM generate_series(1, 12000) AS g
    WHERE now() - interval '7 days' + g * interval '50 seconds' < now() - interval '1 hour'
    UNION ALL
    SELECT 100000 + m * 1000 + k,
           now() - interval '60 minutes' + m * interval '1 minute'
               + k * interval '1 minute' / (34 + 20 * sin(m / 6.0)),
           (ARRAY['emails', 'reports', 'images', 'default'])[1 + k % 4],
           (ARRAY['word_count', 'sha256', 'primes_below', 'fetch_later'])[1 + k % 4],
           (m BETWEEN 38 AND 41 AND k % 4 = 1) OR k % 53 = 0
    FROM generate_series(0, 58) AS m
    CROSS JOIN LATERAL generate_series(1, (34 + 20 * sin(m / 6.0))::int) AS k
), new_tasks AS (
    INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data,
        started_at, finished_at, worker_id, attempts, max_retries)
    SELECT 'hist-' || s.g, s.queue, CASE WHEN s.failed THEN 'failed' ELSE 'completed' END,
           'omniq.examples.' || s.fn, jsonb_build_array(s.g), '{}', s.at - interval '2 seconds',
           '{}', s.at - interval '1 second', s.at, 'web-1-' || (s.g % 3), 1, 0
    FROM spec AS s
    RETURNING id, status, created_at, started_at, finished_at, worker_id, queue_name
), new_results AS (
    INSERT INTO results (task_id, status, result, error, error_type, traceback, created_at,
        started_at, completed_at, worker_id, execution_time, result_data)
    SELECT t.id, CASE t.status WHEN 'completed' THEN 'success' ELSE 'failure' END,
           CASE WHEN t.status = 'completed' THEN '{"ok": true}'::jsonb END,
           CASE WHEN t.status = 'failed' THEN '[Errno 111] Connection refused' END,
           CASE WHEN t.status = 'failed' THEN 'ConnectionRefusedError' END,
           CASE WHEN t.status = 'failed' THEN 'Traceback (most recent call last):' || chr(10)
                || '  File "app/storage.py", line 42, in upload' || chr(10)
                || 'ConnectionRefusedError: [Errno 111] Connection refused' END,
           t.finished_at, t.started_at, t.finished_at, t.worker_id, 1.0, '{}'
    FROM new_tasks AS t
)
INSERT INTO events (task_id, event_type, timestamp, queue_name, worker_id)
SELECT t.id, e.kind, e.at, t.queue_name, t.worker_id
FROM new_tasks AS t
CROSS JOIN LATERAL (VALUES ('enqueued', t.created_at), ('executing', t.started_at),
                           (t.status, t.finished_at)) AS e(kind, at);
"""


def python(*args: str) -> subprocess.Popen[bytes]:
    log = open(HERE / f".{args[0]}.log", "wb")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "omniq", *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip


async def demo(backend: PostgreSQLBackend) -> dict[str, str]:
    """Live tasks through the public API; returns the ids worth a picture."""
    async with backend.acquire() as conn:
        await conn.execute(HISTORY)
    q = backend.task_queue
    key = f"screenshots-{os.getpid()}"
    flaky = Task(func=f"{EX}.flaky", args=(key, 2), queue_name="emails", max_retries=3,
                 retry_delay=0.2, callbacks={"on_success": f"{EX}.notify"})  # fmt: skip
    broken = Task(func=f"{EX}.always_fails", args=("the invoice template is missing",),
                  queue_name="reports", max_retries=1, retry_delay=0.2)  # fmt: skip
    after_broken = Task(func=f"{EX}.summarize", args=("total",), queue_name="reports",
                        dependencies=[broken])  # fmt: skip
    count = Task(func=f"{EX}.word_count", args=("the quick brown fox jumps over the lazy dog",))
    digest = Task(func=f"{EX}.sha256", args=("omniq",), dependencies=[count])
    summary = Task(func=f"{EX}.summarize", args=("chain",), dependencies=[count, digest],
                   callbacks={"on_complete": f"{EX}.notify"})  # fmt: skip
    await q.enqueue_many([flaky, broken, after_broken, count, digest, summary])
    await q.enqueue_many(
        [Task(func=f"{EX}.fetch_later", args=(f"thumbnail-{i}", 900), queue_name="images")
         for i in range(3)]
        + [Task(func=f"{EX}.primes_below", args=(10_000 * i,), queue_name="backfill",
                created_at=datetime.now(UTC) - timedelta(minutes=7, seconds=i))
           for i in range(1, 38)]
        + [Task(func=f"{EX}.word_count", args=("later",), queue_name="emails",
                run_at=datetime.now(UTC) + timedelta(minutes=10 + i)) for i in range(5)]
    )  # fmt: skip
    storage = backend.schedule_storage
    await storage.save_schedule(Schedule(id="hourly-digest", func=f"{EX}.tick",
                                         args=("digest",), cron_expression="0 * * * *",
                                         queue_name="emails"))  # fmt: skip
    await storage.save_schedule(Schedule(id="heartbeat-check", func=f"{EX}.tick",
                                         args=("ping",), interval_seconds=2))  # fmt: skip
    await storage.save_schedule(Schedule(id="nightly-export", func=f"{EX}.tick",
                                         args=("export",), cron_expression="30 2 * * *",
                                         queue_name="reports"))  # fmt: skip
    await storage.pause_schedule("nightly-export")
    return {"flaky": flaky.id, "broken": broken.id, "summary": summary.id}


async def main() -> None:
    server = EmbeddedPostgres(durable=False)
    dsn = server.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        async with PostgreSQLBackend(PostgresConfig(dsn=dsn)) as backend:
            ids = await demo(backend)
            processes.append(python("worker", "--dsn", dsn, "--queues",
                                    "emails,reports,images,default", "--concurrency", "6"))  # fmt: skip
            for task_id in (ids["flaky"], ids["broken"], ids["summary"]):
                result = await backend.result_storage.wait(task_id, timeout=60)
                assert result is not None, f"the worker did not finish {task_id}"
            await asyncio.sleep(5)  # the interval schedule fires a few times
            dashboard = python("dashboard", "--dsn", dsn, "--bind", "127.0.0.1:0")
            processes.append(dashboard)
            log = HERE / ".dashboard.log"
            deadline = time.monotonic() + 60
            while not (found := re.search(r"on (http://\S+)/ ", log.read_text())):
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)
            url = found.group(1)
            await photograph(url, ids)
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        server.stop()
        for log in HERE.glob(".*.log"):
            log.unlink()


async def photograph(url: str, ids: dict[str, str]) -> None:
    shots = {
        "overview": "/",
        "tasks": "/tasks",
        "tasks-failed": "/tasks?status=failed",
        "task": f"/tasks/{ids['flaky']}",
        "task-failed": f"/tasks/{ids['broken']}",
        "schedules": "/schedules",
        "workers": "/workers",
    }
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page(viewport={"width": 1360, "height": 860})
        for name, path in shots.items():
            await page.goto(url + path)
            await page.wait_for_function("document.getElementById('live').textContent === 'live'")
            await page.wait_for_timeout(1200)  # one live refresh has landed
            whole = name not in ("tasks", "tasks-failed")  # long lists: the first screenful
            await page.screenshot(path=str(HERE / f"{name}.png"), full_page=whole)
            print(f"scripts/screenshots/{name}.png  {path}")
        await browser.close()


if __name__ == "__main__":
    asyncio.run(main())
