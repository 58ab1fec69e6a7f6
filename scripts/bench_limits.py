"""Queue limits with real worker processes: configured against achieved.

Run it as ``scripts/bench_limits`` (it sets up .venv first):

    scripts/bench_limits                 # 2 workers, about 4 s of tasks per case
    scripts/bench_limits --workers 4 --seconds 8

It starts its own throwaway PostgreSQL, installs OmniQ, and for each case enqueues the tasks
of one queue, sets the queue's limits, starts ``--workers`` real ``omniq worker`` processes
(concurrency 8 each) and waits until every task completed. All times come from the database's
clock (the tasks' started_at, set by the dequeue, and finished_at).

* Rate cases (rate 10, 50, 200 per second; burst the default, one second's worth): no-op
  tasks, as many as the rate allows in ``--seconds`` plus the burst. Achieved rate: the tasks
  after the burst divided by the time from the first start to the last. Max excess: the most
  tasks above burst + rate * (t_j - t_i) that started in any span [t_i, t_j] (at most 0 on the
  bucket's own clock; started_at is stamped a little after the bucket's time, while the dequeue
  updates its rows, so a fraction of a task at high rates is that skew).
* max_running cases (1, 4, 16): tasks that sleep 50 ms (``omniq.examples.fetch_later``).
  Utilisation: the running time of all tasks divided by max_running times the time from the
  first start to the last end (1.0: a slot never idle). Peak: the most tasks running at once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from datetime import datetime

from omniq.backend.postgres import PostgreSQLBackend
from omniq.embedded import EmbeddedPostgres
from omniq.models.config import PostgresConfig
from omniq.models.task import Task

RATES = (10.0, 50.0, 200.0)
MAX_RUNNING = (1, 4, 16)
SLEEP = 0.05


def start_workers(dsn: str, queue: str, count: int) -> list[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "omniq", "worker", "--dsn", dsn, "--queues", queue]
    argv += ["--concurrency", "8", "--no-scheduler"]
    return [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGINT)
    for worker in workers:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def run_case(
    backend: PostgreSQLBackend,
    dsn: str,
    workers: int,
    queue: str,
    tasks: list[Task],
    **limits: float,
) -> list[tuple[datetime, datetime]]:
    """Enqueue, limit, run to completion; (started_at, finished_at) of every task."""
    q = backend.task_queue
    await q.pause_queue(queue)  # nothing starts before every worker is up
    await q.enqueue_many(tasks)
    await q.set_queue_limits(queue, **limits)  # type: ignore[arg-type]
    started = start_workers(dsn, queue, workers)
    try:
        await asyncio.sleep(2.0)  # the workers connect and settle
        await q.resume_queue(queue)
        deadline = time.monotonic() + 600
        while await q.get_queue_size(queue) or await q.list_tasks(queue, "running", limit=1):
            if time.monotonic() > deadline:
                raise SystemExit(f"{queue}: tasks still unfinished after 600 s")
            await asyncio.sleep(0.2)
    finally:
        stop_workers(started)
    done = await q.list_tasks(queue, "completed", limit=100_000)
    assert len(done) == len(tasks), (queue, len(done), len(tasks))
    return sorted((t.started_at, t.finished_at) for t in done)  # type: ignore[misc]


def bucket_excess(starts: list[datetime], rate: float, burst: int) -> float:
    """The most tasks above burst + rate * (t_j - t_i) that started in any span [t_i, t_j]."""
    n = len(starts)
    return max(
        (j - i + 1) - burst - rate * (starts[j] - starts[i]).total_seconds()
        for i in range(n)
        for j in range(i, n)
    )


def peak(windows: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(s, 1) for s, _ in windows] + [(e, -1) for _, e in windows])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


async def bench(dsn: str, workers: int, seconds: float) -> None:
    async with PostgreSQLBackend(PostgresConfig(dsn=dsn, max_connections=4)) as backend:
        print(f"{workers} worker processes of concurrency 8; times on the database clock\n")
        print(
            f"{'rate/s':>8} {'burst':>6} {'tasks':>6} {'achieved/s':>11} {'of rate':>8} {'max excess':>11}"
        )
        for rate in RATES:
            burst = max(1, int(-(-rate // 1)))
            n = int(rate * seconds) + burst
            queue = f"rate-{rate:g}"
            tasks = [
                Task(func="omniq.examples.tick", args=("x",), queue_name=queue) for _ in range(n)
            ]
            windows = await run_case(backend, dsn, workers, queue, tasks, rate=rate)
            starts = [s for s, _ in windows]
            achieved = (n - burst) / (starts[-1] - starts[0]).total_seconds()
            excess = bucket_excess(starts, rate, burst)
            print(
                f"{rate:>8g} {burst:>6} {n:>6} {achieved:>11.2f} {achieved / rate:>8.1%} {excess:>11.2f}"
            )
        print(
            f"\n{'max_running':>11} {'tasks':>6} {'peak':>5} {'utilisation':>12} {'makespan s':>11} {'ideal s':>8}"
        )
        for limit in MAX_RUNNING:
            n = int(seconds / SLEEP * limit)
            queue = f"max-{limit}"
            tasks = [
                Task(func="omniq.examples.fetch_later", args=("x", SLEEP), queue_name=queue)
                for _ in range(n)
            ]
            windows = await run_case(backend, dsn, workers, queue, tasks, max_running=limit)
            busy = sum((e - s).total_seconds() for s, e in windows)
            span = (max(e for _, e in windows) - min(s for s, _ in windows)).total_seconds()
            print(
                f"{limit:>11} {n:>6} {peak(windows):>5} {busy / (limit * span):>12.1%} "
                f"{span:>11.2f} {n * SLEEP / limit:>8.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    with EmbeddedPostgres(durable=False) as server:
        asyncio.run(bench(server.dsn, args.workers, args.seconds))


if __name__ == "__main__":
    main()
