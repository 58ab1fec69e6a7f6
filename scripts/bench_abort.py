"""Abort latency: how long from ``abort_task()`` to the task's stored end, for async tasks.

Run it as ``scripts/bench_abort`` (it sets up .venv first):

    scripts/bench_abort                 # 50 aborts over 2 worker processes
    scripts/bench_abort --aborts 200 --workers 4

It starts its own throwaway PostgreSQL and ``--workers`` real ``omniq worker`` processes (no
prefetch, so every task taken runs at once), enqueues ``--aborts`` async tasks that would
sleep an hour (tests/support/abort_jobs.py, ``sleeper``), waits until every one runs, then
aborts them one at a time from this process: each measurement is the time from the
``abort_task`` call to the moment ``result_storage.wait`` returns the stored 'cancelled'
result (the request's commit, the NOTIFY to the worker, the cancellation, the outcome's
write, the NOTIFY of the result). Then the same for thread tasks that check
``should_abort()`` every 10 ms (``polite``). Printed: p50, p95 and max. The target of
issue 13 is 100 ms for async tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(
    0, str(ROOT)
)  # the task functions live in tests/support, as the workers import them

from omniq.backend.postgres import PostgreSQLBackend  # noqa: E402
from omniq.embedded import EmbeddedPostgres  # noqa: E402
from omniq.models.config import PostgresConfig  # noqa: E402
from tests.support.abort_jobs import abort_latencies, summary  # noqa: E402


def start_workers(
    dsn: str, count: int, concurrency: int, log_dir: Path
) -> list[subprocess.Popen[bytes]]:
    workers = []
    for i in range(count):
        log = (log_dir / f"worker-{i}.log").open("wb")
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "omniq",
                    "worker",
                    "--dsn",
                    dsn,
                    "--concurrency",
                    str(concurrency),
                    "--prefetch",
                    "0",
                    "--no-scheduler",
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        )
    return workers


async def wait_for_workers(backend: PostgreSQLBackend, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(await backend.monitor.workers()) < count:
        if time.monotonic() > deadline:
            raise SystemExit("the worker processes did not register within 60 s (see their logs)")
        await asyncio.sleep(0.1)


async def bench(dsn: str, aborts: int, workers: int, work_dir: Path) -> None:
    backend = PostgreSQLBackend(PostgresConfig(dsn=dsn, max_connections=4))
    await backend.connect()
    processes = start_workers(dsn, workers, -(-aborts // workers) + 5, work_dir)
    try:
        await wait_for_workers(backend, workers)
        await asyncio.sleep(1.0)  # their LISTEN connections are up once they wait for work
        for func, what in (("sleeper", "async tasks"), ("polite", "thread tasks, 10 ms polls")):
            latencies = await abort_latencies(backend, str(work_dir / func), aborts, func)
            print(f"{what:28} {summary(latencies)}", flush=True)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        await backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--aborts", type=int, default=50, help="tasks aborted per kind (default 50)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="omniq-bench-abort-") as tmp,
        EmbeddedPostgres() as server,
    ):
        print(f"abort latency: {args.aborts} aborts per kind, {args.workers} worker processes")
        asyncio.run(bench(server.dsn, args.aborts, args.workers, Path(tmp)))


if __name__ == "__main__":
    main()
