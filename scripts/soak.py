"""OmniQ soak: producers and two worker processes run for a long while; memory and connections
must stay flat and every task must end exactly once.

Run it with ``scripts/soak`` (which sets up .venv first, then runs this file):

    scripts/soak                    # 10 minutes, 100 tasks/s
    scripts/soak --minutes 60 --rate 200
    scripts/soak --help

What it does:

- starts a throwaway, durable PostgreSQL (omniq.embedded) and installs OmniQ in a schema;
- starts ``--workers`` (2) ``python -m omniq worker --concurrency 8 -q`` processes;
- runs ``--producers`` (2) producers in this process for ``--minutes`` (10), together about
  ``--rate`` (100) tasks per second, alternating single ``enqueue`` and ``enqueue_many``
  batches; the tasks mix ``async def`` (``asyncio.sleep``), plain functions run in threads
  (``operator.add``) and failures without retries (``math.sqrt(-1)``), with payloads from a
  few bytes to 20 kB;
- every ``--sample`` (10) seconds prints one row: the RSS of each worker process (from
  /proc), the server's connection count in pg_stat_activity, and the queue's progress;
- at the end waits for the queue to drain, stops the workers with SIGTERM and checks that
  every enqueued task has exactly one final result (success, or failure for the failing
  kind), exactly one ``completed``/``failed`` event, and that nothing is left pending or
  running.

It fails (exit 1) when a worker's RSS grew by more than ``--rss-tolerance`` (25%) plus
``--rss-slack-mb`` (10 MiB) between the warm-up sample (after ``--warmup`` seconds, default
60) and the median of the last three samples; when the connection count ever exceeds what
the pools can open, when the LISTEN connections are ever not one per worker, or when the
median of the last third of the samples exceeds the peak of the first half by more than ``--connection-slack`` (2); or when any task was lost, finished twice,
or stayed behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # omniq from this checkout even without the editable install
from omniq.backend.postgres import PostgreSQLBackend  # noqa: E402
from omniq.embedded import EmbeddedPostgres  # noqa: E402
from omniq.identifiers import quote_identifier  # noqa: E402
from omniq.models.config import PostgresConfig  # noqa: E402
from omniq.models.task import Task  # noqa: E402

SCHEMA = "omniq_soak"
CONCURRENCY = 8
WORKER_POOL = max(4, min(CONCURRENCY, 20))  # what `omniq worker` gives its pool
PRODUCER_POOL = 4
T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", flush=True)


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def make_task(rng: random.Random) -> tuple[Task, str]:
    """A task and the final status it must reach."""
    size = rng.choice([0, 10, 100, 1000, 20_000])
    payload = {"blob": "x" * size, "n": rng.randrange(1_000_000)}
    kind = rng.random()
    if kind < 0.6:
        return Task(
            func="asyncio.sleep", args=(rng.choice([0, 0.001, 0.01]),), metadata=payload
        ), "success"
    if kind < 0.95:
        return Task(
            func="operator.add", args=(rng.randrange(100), rng.randrange(100)), metadata=payload
        ), "success"
    return Task(func="math.sqrt", args=(-1,), max_retries=0, metadata=payload), "failure"


class Soak:
    def __init__(self, args: argparse.Namespace, dsn: str, logdir: Path) -> None:
        self.args = args
        self.dsn = dsn
        self.logdir = logdir
        self.expected: dict[str, str] = {}  # task id -> final result status
        self.workers: list[subprocess.Popen[bytes]] = []
        self.samples: list[dict[str, Any]] = []
        self.producer_errors = 0

    def start_workers(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "OMNIQ_"))}
        for i in range(self.args.workers):
            log = (self.logdir / f"worker-{i}.log").open("wb")
            self.workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "omniq",
                        "worker",
                        "--dsn",
                        self.dsn,
                        "--schema",
                        SCHEMA,
                        "--concurrency",
                        str(CONCURRENCY),
                        "--no-scheduler",
                        "-q",
                    ],  # fmt: skip
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    async def produce(self, backend: PostgreSQLBackend, seed: int, until: float) -> None:
        rng = random.Random(seed)
        per_second = self.args.rate / self.args.producers
        next_at = time.monotonic()
        while time.monotonic() < until:
            batch = [make_task(rng) for _ in range(1 if rng.random() < 0.5 else 20)]
            try:
                if len(batch) == 1:
                    await backend.task_queue.enqueue(batch[0][0])
                else:
                    await backend.task_queue.enqueue_many([t for t, _ in batch])
            except (ConnectionError, TimeoutError) as exc:
                self.producer_errors += 1
                progress(f"enqueue failed ({exc}); nothing recorded for that batch")
                await asyncio.sleep(0.5)
                continue
            for task, status in batch:
                self.expected[task.id] = status
            next_at += len(batch) / per_second
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def sample(self, monitor: asyncpg.Connection, tasks_table: str) -> dict[str, Any]:
        connections, listeners = await monitor.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE application_name LIKE '%-listener') "
            "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        counts = dict(
            await monitor.fetch(f"SELECT status, count(*) FROM {tasks_table} GROUP BY status")  # noqa: S608
        )
        row = {
            "t": time.monotonic() - T0,
            "rss": [rss_mib(w.pid) for w in self.workers],
            "connections": connections,
            "listeners": listeners,
            "pushed": len(self.expected),
            "done": counts.get("completed", 0) + counts.get("failed", 0),
            "backlog": counts.get("pending", 0) + counts.get("running", 0),
        }
        self.samples.append(row)
        rss = "  ".join(f"{r:7.1f}" for r in row["rss"])
        print(f"{row['t']:8.0f}  {rss}  {connections:11d}  {listeners:9d}  {row['pushed']:9d}  "
              f"{row['done']:9d}  {row['backlog']:7d}", flush=True)  # fmt: skip
        return row

    def header(self) -> None:
        rss = "  ".join(f"{'w' + str(i) + ' MiB':>7}" for i in range(len(self.workers)))
        print(
            f"\n{'time s':>8}  {rss}  {'connections':>11}  {'listeners':>9}  {'pushed':>9}  {'done':>9}  {'backlog':>7}"
        )

    async def run(self) -> list[str]:
        config = PostgresConfig(dsn=self.dsn, schema=SCHEMA, max_connections=PRODUCER_POOL,
                                application_name="omniq-soak-producer")  # fmt: skip
        backend = PostgreSQLBackend(config)
        await backend.connect()
        monitor = await asyncpg.connect(self.dsn)
        tasks_table = f"{quote_identifier(SCHEMA)}.{quote_identifier('tasks')}"
        problems: list[str] = []
        try:
            self.start_workers()
            until = time.monotonic() + self.args.minutes * 60
            producers = [
                asyncio.create_task(self.produce(backend, seed, until))
                for seed in range(self.args.producers)
            ]
            self.header()
            while time.monotonic() < until:
                await asyncio.sleep(min(self.args.sample, max(0.0, until - time.monotonic())))
                await self.sample(monitor, tasks_table)
                for i, w in enumerate(self.workers):
                    if w.poll() is not None:
                        problems.append(f"worker {i} exited with {w.returncode} during the soak")
                if problems:
                    break
            await asyncio.gather(*producers)
            progress(f"producers stopped after {len(self.expected):,} tasks; draining")
            deadline = time.monotonic() + self.args.drain_timeout
            while time.monotonic() < deadline:
                left = await monitor.fetchval(
                    f"SELECT count(*) FROM {tasks_table} WHERE status IN ('pending', 'running')"  # noqa: S608
                )
                if left == 0:
                    break
                await asyncio.sleep(1)
            final = await self.sample(monitor, tasks_table)
            problems += self.check_flat(final)
            for w in self.workers:
                w.send_signal(signal.SIGTERM)
            for i, w in enumerate(self.workers):
                try:
                    code = w.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    w.kill()
                    code = w.wait()
                if code != 0:
                    problems.append(f"worker {i} exited with {code} after SIGTERM")
            problems += await self.check_tasks(monitor)
        finally:
            for w in self.workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
            await monitor.close()
            await backend.close()
        return problems

    def check_flat(self, final: dict[str, Any]) -> list[str]:
        problems = []
        args = self.args
        warm = [
            s for s in self.samples if s["t"] - self.samples[0]["t"] >= args.warmup - args.sample
        ]
        baseline = warm[0] if warm else self.samples[0]
        last = self.samples[-4:-1] or self.samples[-1:]  # the final (drained) sample excluded
        for i in range(len(self.workers)):
            start = baseline["rss"][i]
            end = statistics.median(s["rss"][i] for s in last)
            allowed = start * (1 + args.rss_tolerance / 100) + args.rss_slack_mb
            print(f"worker {i}: RSS {start:.1f} MiB after warm-up, {end:.1f} MiB at the end "
                  f"(allowed {allowed:.1f})")  # fmt: skip
            if end > allowed:
                problems.append(f"worker {i} RSS grew from {start:.1f} to {end:.1f} MiB")
        # Pools open connections on demand up to their size, so the count may step up a little
        # under bursts. A leak shows as a count beyond what the pools can open, as more LISTEN
        # connections than workers, or as a count that keeps climbing: the last third's median
        # above the first half's peak + slack.
        cap = args.workers * (WORKER_POOL + 1) + PRODUCER_POOL + 1 + 2  # +1 listener each, +2 spare
        counts = [s["connections"] for s in self.samples]
        third = max(1, len(counts) // 3)
        peak, early_peak = max(counts), max(counts[: max(1, len(counts) // 2)])
        late = statistics.median(counts[-third:])
        listeners = sorted({s["listeners"] for s in self.samples})
        print(
            f"LISTEN connections: {listeners} (one per worker: {args.workers})\n"
            f"connections: peak {peak}, first half's peak {early_peak}, last third's median "
            f"{late:g}, at the end {final['connections']}, pools can open {cap}"
        )
        if peak > cap:
            problems.append(f"{peak} connections, more than the pools can open ({cap})")
        if listeners != [args.workers]:
            problems.append(f"LISTEN connections seen: {listeners}, expected {args.workers}")
        if late > early_peak + args.connection_slack:
            problems.append(
                f"connections climbed from a peak of {early_peak} to a median of {late:g}"
            )
        return problems

    async def check_tasks(self, monitor: asyncpg.Connection) -> list[str]:
        q = quote_identifier(SCHEMA)
        rows = await monitor.fetch(
            f"SELECT t.id, t.status, r.status AS result, "  # noqa: S608
            f"  (SELECT count(*) FROM {q}.events e WHERE e.task_id = t.id "
            f"     AND e.event_type IN ('completed', 'failed')) AS finals "
            f"FROM {q}.tasks t LEFT JOIN {q}.results r ON r.task_id = t.id"
        )
        seen = {r["id"]: r for r in rows}
        lost = [i for i in self.expected if i not in seen or seen[i]["result"] is None]
        wrong = [
            i
            for i, want in self.expected.items()
            if i in seen and seen[i]["result"] not in (None, want)
        ]
        twice = [r["id"] for r in rows if r["finals"] > 1]
        left = [r["id"] for r in rows if r["status"] in ("pending", "running")]
        extra = [r["id"] for r in rows if r["id"] not in self.expected]
        outcome = {
            s: sum(1 for v in self.expected.values() if v == s) for s in ("success", "failure")
        }
        print(f"tasks: {len(self.expected):,} pushed ({outcome['success']:,} to succeed, "
              f"{outcome['failure']:,} to fail), {len(rows) - len(left):,} finished, "
              f"{len(lost)} lost, {len(wrong)} wrong status, {len(twice)} finished twice, "
              f"{len(left)} left pending/running, {self.producer_errors} producer errors")  # fmt: skip
        problems = []
        for what, ids in (("lost", lost), ("with a wrong result", wrong), ("finished twice", twice),
                          ("left pending or running", left), ("not enqueued by us", extra)):  # fmt: skip
            if ids:
                problems.append(f"{len(ids)} task(s) {what}, e.g. {ids[:3]}")
        return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long producers run (10)")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="tasks per second, all producers (100)"
    )
    parser.add_argument("--producers", type=int, default=2, help="producer coroutines (2)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples (10)")
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds before the RSS baseline (60)"
    )
    parser.add_argument(
        "--rss-tolerance", type=float, default=25.0, help="allowed RSS growth in %% (25)"
    )
    parser.add_argument(
        "--rss-slack-mb", type=float, default=10.0, help="allowed RSS growth in MiB on top (10)"
    )
    parser.add_argument(
        "--connection-slack", type=int, default=2, help="allowed connection growth (2)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="seconds to drain at the end (300)"
    )
    args = parser.parse_args(argv)
    args.warmup = min(args.warmup, args.minutes * 60 / 3)  # short runs: baseline in the first third
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="omniq-soak-"))
    progress(f"starting a throwaway durable PostgreSQL; worker logs in {logdir}")
    server = EmbeddedPostgres(durable=True, extra_settings={"shared_preload_libraries": ""})
    dsn = server.start()
    try:
        problems = asyncio.run(Soak(args, dsn, logdir).run())
    finally:
        with contextlib.suppress(Exception):
            server.stop()
    if problems:
        for problem in problems:
            print(f"FAIL: {problem}", flush=True)
        print(f"worker logs: {logdir}")
        return 1
    print(f"soak passed: {args.minutes:g} min, memory and connections flat, every task once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
