"""The dashboard at scale: page timings over HTTP with 1,000,000 finished tasks, and the plans.

Run it as ``scripts/bench_dashboard`` (it sets up .venv first):

    scripts/bench_dashboard                    # 1,000,000 finished tasks, about 3-4 minutes
    scripts/bench_dashboard --finished 100000  # a quicker look
    scripts/bench_dashboard --requests 50      # more requests per page (default 20)

It starts its own throwaway durable PostgreSQL, installs OmniQ, and generates in SQL
(generate_series): ``--finished`` tasks finished over the last 30 days in 5 queues and 20
funcs (2% failed, 1% cancelled), each with its result and 3 events (enqueued, executing, the
end); 10,000 pending tasks (a tenth of them delayed), 64 running ones held by 8 workers, 500
waiting ones and 100 schedules. Then VACUUM ANALYZE, and a real ``omniq dashboard`` process.

Each page is fetched 3 times to warm up, then ``--requests`` times with one keep-alive HTTP
client; the table gives the median and the 95th percentile of the whole request (query,
rendering, HTTP on loopback). Then 100,000 more tasks finish within the last hour (a busy
hour: 28 per second) and a new dashboard process is timed on the overview (its first view
reads the whole hour of results; later ones only the last two minutes) and /metrics. Last, EXPLAIN (ANALYZE, BUFFERS) of the queries behind the
overview and the filtered task page, with the parameters the dashboard passes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.monitor import ALL_STATUSES, SCAN
from omniq.backend.postgres.sqlfiles import SQLFiles
from omniq.dashboard.filters import encode_cursor
from omniq.embedded import EmbeddedPostgres
from omniq.models.config import PostgresConfig

ROOT = Path(__file__).resolve().parents[1]

LOAD = """
INSERT INTO tasks (id, queue_name, priority, status, func, args, kwargs, created_at, task_data,
    started_at, finished_at, worker_id, attempts)
SELECT 'done-' || g, 'q' || (g % 5), g % 3,
       CASE WHEN g % 50 = 0 THEN 'failed' WHEN g % 97 = 0 THEN 'cancelled' ELSE 'completed' END,
       'app.jobs.work_' || (g % 20), jsonb_build_array(g, 'payload ' || g), '{"flag": true}',
       now() - interval '30 days' + (g::float8 / $1) * interval '30 days' - interval '2 seconds',
       '{}',
       now() - interval '30 days' + (g::float8 / $1) * interval '30 days' - interval '1 second',
       now() - interval '30 days' + (g::float8 / $1) * interval '30 days',
       'w-' || (g % 8), 1
FROM generate_series(1, $1::int) AS g;
"""
RESULTS = """
INSERT INTO results (task_id, status, result, error, error_type, created_at, started_at,
    completed_at, worker_id, execution_time, result_data)
SELECT t.id, CASE t.status WHEN 'completed' THEN 'success' WHEN 'failed' THEN 'failure'
             ELSE t.status END,
       CASE WHEN t.status = 'completed' THEN jsonb_build_object('answer', 42) END,
       CASE WHEN t.status = 'failed' THEN 'disk full on /var/lib/app' END,
       CASE WHEN t.status = 'failed' THEN 'OSError' END,
       t.finished_at, t.started_at, t.finished_at, t.worker_id, 1.0, '{}'
FROM tasks AS t WHERE t.id LIKE $1 AND t.status IN ('completed', 'failed', 'cancelled');
"""
EVENTS = """
INSERT INTO events (task_id, event_type, timestamp, queue_name, worker_id)
SELECT t.id, e.kind, e.at, t.queue_name, t.worker_id
FROM tasks AS t
CROSS JOIN LATERAL (VALUES ('enqueued', t.created_at), ('executing', t.started_at),
                           (t.status, t.finished_at)) AS e(kind, at)
WHERE t.id LIKE $1;
"""
LIVE = """
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data, run_at,
    delayed)
SELECT 'todo-' || g, 'q' || (g % 5), 'pending', 'app.jobs.work_' || (g % 20), '[]', '{}',
       now() - g * interval '100 milliseconds', '{}',
       CASE WHEN g % 10 = 0 THEN now() + g * interval '1 second' END, g % 10 = 0
FROM generate_series(1, 10000) AS g;
INSERT INTO omniq_workers (id, hostname, pid, queues, concurrency)
SELECT 'w-' || g, 'host-' || g, 1000 + g, ARRAY['q0', 'q1', 'q2', 'q3', 'q4'], 8
FROM generate_series(0, 7) AS g;
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data,
    started_at, worker_id, attempts)
SELECT 'run-' || g, 'q' || (g % 5), 'running', 'app.jobs.work', '[]', '{}',
       now() - interval '2 minutes', '{}', now() - interval '1 minute', 'w-' || (g % 8), 1
FROM generate_series(1, 64) AS g;
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data, dependencies)
SELECT 'wait-' || g, 'q' || (g % 5), 'waiting', 'app.jobs.after', '[]', '{}',
       now() - interval '1 hour', '{}', jsonb_build_array('todo-' || g)
FROM generate_series(1, 500) AS g;
INSERT INTO schedules (id, schedule_type, func, queue_name, interval_seconds, status,
    created_at, next_run, schedule_data)
SELECT 'sched-' || g, 'interval', 'app.jobs.tick', 'q' || (g % 5), 60,
       CASE WHEN g % 10 = 0 THEN 'paused' ELSE 'active' END, now() - interval '1 day',
       now() + g * interval '1 minute', '{}'
FROM generate_series(1, 100) AS g;
"""
BUSY_HOUR = """
INSERT INTO tasks (id, queue_name, status, func, args, kwargs, created_at, task_data,
    started_at, finished_at, worker_id, attempts)
SELECT 'busy-' || g, 'q' || (g % 5), CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'completed' END,
       'app.jobs.work_' || (g % 20), '[]', '{}', now() - interval '1 hour' + g * interval '35 ms',
       '{}', now() - interval '1 hour' + g * interval '35 ms',
       now() - interval '1 hour' + g * interval '35 ms', 'w-' || (g % 8), 1
FROM generate_series(1, 100000) AS g;
"""


def stamp(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def load(dsn: str, finished: int) -> SQLFiles:
    backend = PostgreSQLBackend(PostgresConfig(dsn=dsn, max_connections=2))
    await backend.connect()  # installs the schema
    await backend.close()
    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        await conn.execute(LOAD.replace("$1", str(finished)))
        await conn.execute(RESULTS.replace("$1", "'done-%'"))
        await conn.execute(EVENTS.replace("$1", "'done-%'"))
        await conn.execute(LIVE)
        await conn.execute("VACUUM ANALYZE")
        sizes = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM tasks) AS tasks, (SELECT count(*) FROM results) AS results,"
            " (SELECT count(*) FROM events) AS events,"
            " pg_size_pretty(pg_database_size(current_database())) AS size"
        )
        stamp(f"loaded {dict(sizes)} in {time.monotonic() - started:.0f} s")
    finally:
        await conn.close()
    return backend.sql


def start_dashboard(dsn: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    out = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "omniq", "dashboard", "--dsn", dsn, "--bind", "127.0.0.1:0"],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (found := re.search(r"on (http://\S+)/ ", log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the dashboard did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return process, found.group(1)


def timed(client: httpx.Client, url: str, requests: int) -> tuple[float, float, int]:
    """Median and p95 in ms of ``requests`` GETs after 3 warm-ups; the response size."""
    for _ in range(3):
        response = client.get(url)
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code}\n{response.text[:500]}")
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return (
        statistics.median(times),
        times[max(0, int(len(times) * 0.95) - 1)],
        len(response.content),
    )


def pages(finished: int) -> dict[str, str]:
    middle = finished // 2
    at = datetime.now(UTC) - timedelta(days=30) + timedelta(days=30) * (middle / finished)
    cursor = encode_cursor((at - timedelta(seconds=2), f"done-{middle}"))
    day = (datetime.now(UTC) - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%S")
    day_end = (datetime.now(UTC) - timedelta(days=9)).strftime("%Y-%m-%dT%H:%M:%S")
    return {
        "overview": "/",
        "tasks, completed in one queue": "/tasks?status=completed&queue=q3",
        "tasks, failed in a queue with none": "/tasks?status=failed&queue=q3",
        "tasks, completed, queue + func": "/tasks?status=completed&queue=q3&func=app.jobs.work_8",
        "tasks, all statuses": "/tasks",
        "tasks, completed, page at 15 days": f"/tasks?status=completed&before={cursor}",
        "tasks, completed, one day": f"/tasks?status=completed&since={day}&until={day_end}",
        "tasks, search an error": "/tasks?status=failed&q=disk+full",
        "tasks, search, no match": "/tasks?q=no+such+text",
        "task detail": f"/tasks/done-{middle}",
        "schedules": "/schedules",
        "workers": "/workers",
        "/metrics": "/metrics",
    }


def table(rows: list[tuple[str, float, float, int]]) -> str:
    lines = [f"{'page':38} {'median ms':>10} {'p95 ms':>8} {'bytes':>9}"]
    lines += [f"{name:38} {med:10.1f} {p95:8.1f} {size:9,}" for name, med, p95, size in rows]
    return "\n".join(lines)


async def explain(dsn: str, files: SQLFiles) -> None:
    sql = files.monitor  # type: ignore[attr-defined]
    cases: list[tuple[str, Any, dict[str, Any]]] = [
        ("overview: queue_gauges", sql.queue_gauges, {}),
        ("overview: finished_per_minute", sql.finished_per_minute,
         {"since": datetime.now(UTC) - timedelta(hours=1)}),
        ("overview: workers", sql.workers, {}),
        ("overview: schedules", sql.schedules, {"limit": 5, "runs": 1}),
        ("tasks page: completed in q3 (a filtered page)", sql.task_page, {
            "statuses": ["completed"], "queue_name": "q3", "func": None, "created_after": None,
            "created_before": None, "search": None, "scan": SCAN, "before_created_at": None,
            "before_id": None, "limit": 51}),
        ("tasks page: failed in q3 (a filter no task matches)", sql.task_page, {
            "statuses": ["failed"], "queue_name": "q3", "func": None, "created_after": None,
            "created_before": None, "search": None, "scan": SCAN, "before_created_at": None,
            "before_id": None, "limit": 51}),
        ("tasks page: search, no match", sql.task_page, {
            "statuses": list(ALL_STATUSES), "queue_name": None, "func": None,
            "created_after": None, "created_before": None, "search": "no such text",
            "scan": SCAN, "before_created_at": None, "before_id": None, "limit": 51}),
        ("tasks page: all statuses", sql.task_page, {
            "statuses": list(ALL_STATUSES), "queue_name": None, "func": None,
            "created_after": None, "created_before": None, "search": None, "scan": 51,
            "before_created_at": None, "before_id": None, "limit": 51}),
    ]  # fmt: skip
    conn = await asyncpg.connect(dsn)
    try:
        for title, query, params in cases:
            async with conn.transaction():
                await sql.without_jit(conn)  # as the dashboard reads the throughput
                rows = await conn.fetch(
                    "EXPLAIN (ANALYZE, BUFFERS) " + query.sql, *query.args(params)
                )
            print(f"\n-- {title}\n" + "\n".join(r[0] for r in rows))
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    with EmbeddedPostgres(durable=True) as server:
        stamp(f"PostgreSQL at {server.dsn}; loading {args.finished:,} finished tasks")
        files = asyncio.run(load(server.dsn, args.finished))
        log = Path(tempfile.mkdtemp(prefix="omniq-bench-dashboard-")) / "dashboard.log"
        process, url = start_dashboard(server.dsn, log)
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                rows = [
                    (n, *timed(client, p, args.requests)) for n, p in pages(args.finished).items()
                ]
                print(f"\nWith {args.finished:,} finished tasks ({args.requests} requests each):")
                print(table(rows))
        finally:
            process.terminate()
            process.wait(timeout=30)

        async def busy() -> None:
            conn = await asyncpg.connect(server.dsn)
            await conn.execute(BUSY_HOUR)
            await conn.execute(RESULTS.replace("$1", "'busy-%'"))
            await conn.execute("VACUUM ANALYZE tasks, results")
            await conn.close()

        asyncio.run(busy())
        process, url = start_dashboard(server.dsn, log)  # a fresh process: nothing cached
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                began = time.perf_counter()
                client.get("/").raise_for_status()
                first = (time.perf_counter() - began) * 1000
                rows = [(n, *timed(client, p, args.requests))
                        for n, p in (("overview", "/"), ("/metrics", "/metrics"))]  # fmt: skip
                print("\nAfter 100,000 more tasks finished within the last hour:")
                print(
                    f"first overview of a new dashboard process (reads the whole hour): {first:.1f} ms"
                )
                print(table(rows))
        finally:
            process.terminate()
            process.wait(timeout=30)
        asyncio.run(explain(server.dsn, files))


if __name__ == "__main__":
    main()
