"""OmniQ benchmark: throughput, latency and idle cost, optionally side by side with peers.

Run it (``scripts/bench`` sets up .venv first, then runs this file with .venv/bin/python):

    scripts/bench                     # OmniQ alone, about 1.5 minutes
    scripts/bench --peers             # also pgqueuer and procrastinate, about 8-14 minutes
    scripts/bench --million           # also: processing with 1,000,000 finished tasks in history
                                      # (about 1.5 minutes more)
    scripts/bench --idle-seconds 60   # the issue's idle window (default 10 s)
    scripts/bench --help              # sizes, repetitions, process counts

It starts its own throwaway PostgreSQL (omniq.embedded) with durability on (fsync,
synchronous_commit and full_page_writes on), creates one database per system under test so
they never disturb each other, and stops and deletes the server at the end. With ``--peers``
the latest pgqueuer and procrastinate from PyPI are installed once into .bench-venv/peers
(reused afterwards; delete the directory to upgrade) and driven by the small scripts in
scripts/bench_peers/, run with that virtualenv's python; their versions are printed.

Every figure is measured ``--repeat`` times (default 3), the systems taking turns within each
repetition so that noise from other work on the machine spreads over all of them; the table
shows the median and the spread (half the range between the fastest and the slowest run, as
a percentage of the median). All runs are in the JSON file bench-results/bench-<time>.json,
with the worker logs in bench-results/bench-<time>-logs/. Every subprocess has a timeout, and
``--budget-minutes`` (default 4.5, with --peers 14, plus what a longer --idle-seconds and
--million add) bounds the whole: when time runs short, processing repetitions after the
first are skipped, and the notes say so.

The figures:

- enqueue one at a time (jobs/s): one client enqueues ``--single`` (2,000) no-op jobs, each
  awaited before the next (OmniQ ``task_queue.enqueue(Task(...))``, pgqueuer
  ``Queries.enqueue(name, None, 0)``, procrastinate ``task.defer_async()``); the time
  includes building the Task objects but not connecting.
- the ceiling of enqueueing one at a time (jobs/s, in the notes): pgbench, a C client with
  prepared statements on one connection, runs ``--single`` one-row INSERTs into a bare table
  whose per-statement trigger sends a NOTIFY, each its own committed transaction; and the
  same INSERT through asyncpg (prepared, one held connection), the driver OmniQ and pgqueuer
  use. Each system's single enqueue is reported as a share of both.
- enqueue batch (jobs/s): ``--batch`` (10,000) jobs in one call, each system's batch call
  given plain data (OmniQ ``enqueue_calls(func, [(), ...])``, pgqueuer ``Queries.enqueue``
  with lists, procrastinate ``batch_defer_async``); the time includes building the call's
  arguments.
- enqueue_many of Task objects (jobs/s, OmniQ only): the same batch as ``enqueue_many`` of
  freshly built Task objects; its ratio is to pgqueuer's batch.
- process with 1/2/4 worker processes (jobs/s): ``--tasks`` (10,000) no-op jobs are enqueued,
  then that many worker processes start (OmniQ ``python -m omniq worker --burst
  --no-scheduler -q --concurrency 10``; pgqueuer what ``pgq run ... --batch-size 10 --mode
  drain`` runs, a QueueManager over one asyncpg connection (see its driver for why not the CLI
  itself); procrastinate ``procrastinate worker --concurrency 10 --one-shot``), each exiting
  once the queue is empty. The database is ANALYZEd and checkpointed between enqueueing and
  starting the workers. Time runs from starting the processes (so it includes their start-up) to
  the last completion as recorded by the system itself: OmniQ's last result row written
  (results and events are recorded as the worker normally does), pgqueuer's last
  'successful' log row, procrastinate's last 'succeeded' event. Every job must complete:
  fewer is reported as lost. The JSON also gives the steady rate (first start to last
  completion) and, for 1 process, statements executed per job (pg_stat_statements).
- PostgreSQL CPU and worker CPU per job (µs): in the first 1-process run, the CPU time of the
  server's processes (from /proc: the postmaster's exited children and its live ones) and of
  the worker processes (getrusage of the benchmark's children, start-up included), each
  divided by the jobs. A note puts the two against the machine: with every core busy all the
  time, at most cores / (both per job) jobs/s, and the 1-process figure as a share of that.
- WAL per job and table + index bytes per job (bytes): in the first 1-process run, the WAL
  the whole server wrote from before the batch enqueue of ``--tasks`` jobs to the last
  completion (``pg_current_wal_lsn()``; checkpoint and ANALYZE included), and the size on
  disk of the system's tables afterwards (heap, indexes, TOAST, dead rows included: what is
  left until vacuum), each divided by the jobs. The rows and bytes per table are in the JSON.
  scripts/bench_storage measures the same on its own, load-free, with a breakdown by record
  type.
- process with 1 process, 1M finished in history (``--million``, OmniQ only): first
  1,000,000 completed tasks with their results and 4 events each are generated in SQL
  (generate_series) and vacuumed, then the 1-process figure is measured again on top.
- enqueue-to-start latency p50/p95/p99 (ms): one long-running worker per system
  (concurrency 10; OmniQ's with its scheduler on, as by default) sits idle; one client enqueues ``--latency-tasks`` (300) jobs
  one at a time, ``--latency-interval`` (20 ms) apart, each carrying ``time.time()`` taken
  just before its enqueue call; the job records ``time.time()`` when it starts (OmniQ:
  scripts/bench_tasks.py ``stamp`` returns it as its result; the peers keep no results, so
  their stamp job appends it to a file). Latency = start - enqueue. The systems take turns;
  the other systems' workers are up meanwhile, idle.
- the commit floor (ms, in the notes): ``--latency-tasks`` one-row INSERTs with the ceiling's
  NOTIFY trigger, each its own transaction, ``--latency-interval`` apart, while the workers of
  the latency runs are up and idle. Enqueue-to-start holds two durable commits (the
  enqueue's and the dequeue's), so twice this p50 is a floor; a note gives each system's p50
  against it.
- the bare queue's latency (ms, in the notes): scripts/bench_floor.py, a queue reduced to its
  two commits (the ceiling's one-row INSERT + NOTIFY; LISTEN; one prepared DELETE ... FOR
  UPDATE SKIP LOCKED per job; asyncpg), measured like the systems, in turn with them. No
  system that records its jobs durably and lets two workers race for them starts a job sooner.
- statements while idle: the same workers, caught up (2 s after their last job), are left
  alone for ``--idle-seconds`` (default 10; the issue's target is stated for 60), all at once.
  pg_stat_statements is reset for each database first; the figure is the sum of ``calls`` in
  the worker's database afterwards (the measuring query runs from the ``postgres`` database,
  so it is not counted). The statements themselves are in the JSON.

The no-op jobs are ``async def`` in every system (scripts/bench_tasks.py for OmniQ). Numbers
are only comparable within one run: the machine is shared and noisy, which is why the peers
run side by side in the same run and the ratios matter more than the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
PEERS_SRC = SCRIPTS / "bench_peers"
PEERS_VENV = ROOT / ".bench-venv" / "peers"
PEERS_PY = PEERS_VENV / "bin" / "python"
PEER_PACKAGES = ["pgqueuer", "procrastinate", "asyncpg", "psycopg[binary]"]
RESULTS = ROOT / "bench-results"
CONCURRENCY = 10
# The ceiling for enqueueing one at a time (Bench.ceiling): a bare job table and a NOTIFY.
CEILING_SCHEMA = """
CREATE TABLE jobs (id BIGSERIAL PRIMARY KEY, queue_name TEXT NOT NULL, payload JSONB NOT NULL);
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobs', 'default');
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify();
"""
# One job into it, the queue name as $1 (the ceiling through asyncpg, the commit floor).
CEILING_INSERT = "INSERT INTO jobs (queue_name, payload) VALUES ($1, '[]')"
T0 = time.monotonic()

sys.path.insert(0, str(ROOT))  # omniq from this checkout even without the editable install
from omniq import Task, __version__  # noqa: E402
from omniq.backend.postgres import PostgreSQLBackend  # noqa: E402
from omniq.embedded import EmbeddedPostgres, find_bindir  # noqa: E402
from omniq.models.config import PostgresConfig  # noqa: E402


def progress(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", flush=True)


class BenchError(Exception):
    """One measurement failed; the figure is reported as n/a with this reason."""


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool = True
    versus: str = ""  # the pgqueuer figure the ratio compares with (default: the same key)


def metrics(args: argparse.Namespace) -> list[Metric]:
    rows = [
        Metric("enqueue_single", "enqueue one at a time", "jobs/s"),
        Metric("enqueue_batch", f"enqueue batch of {args.batch:,}", "jobs/s"),
        Metric(
            "enqueue_batch_tasks",
            f"enqueue_many of {args.batch:,} Task objects",
            "jobs/s",
            versus="enqueue_batch",
        ),
    ]
    rows += [
        Metric(f"process_{p}", f"process, {p} worker process{'es' if p > 1 else ''}", "jobs/s")
        for p in args.processes
    ]
    if args.million:
        rows.append(Metric("process_1_million", "process, 1 process, 1M done in history", "jobs/s"))
    rows += [
        Metric("statements_per_job", "statements per job (1 process)", "count", False),
        Metric("server_cpu_per_job", "PostgreSQL CPU per job (1 process)", "us", False),
        Metric("worker_cpu_per_job", "worker CPU per job (1 process)", "us", False),
        Metric("wal_per_job", "WAL per job, enqueue_many + 1 process", "bytes", False),
        Metric("bytes_per_job", "table + index bytes per job, after", "bytes", False),
        Metric("latency_p50", "enqueue-to-start p50", "ms", False),
        Metric("latency_p95", "enqueue-to-start p95", "ms", False),
        Metric("latency_p99", "enqueue-to-start p99", "ms", False),
        Metric(
            "idle_statements", f"statements while idle, {args.idle_seconds:g} s", "count", False
        ),
    ]
    return rows


# --------------------------------------------------------------------------- processes


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment minus anything that could point a system at another database."""
    drop = ("PG", "OMNIQ_", "PROCRASTINATE_", "PGQUEUER_", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return env | extra


def _kill(proc: asyncio.subprocess.Process, sig: int) -> None:
    # Each child leads its own process group (start_new_session), so helpers it spawned go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def run_json(argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> Any:
    """Run a driver command and return the JSON it prints last."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        _kill(proc, signal.SIGKILL)
        await proc.wait()
        raise BenchError(f"{Path(argv[1]).name} {argv[2]}: timed out after {timeout:g}s") from None
    if proc.returncode != 0:
        tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
        raise BenchError(f"{Path(argv[1]).name} {argv[2]} failed ({proc.returncode}): {tail}")
    return json.loads(out.decode().strip().splitlines()[-1])


class Workers:
    """Worker processes of one system, their output going to log files."""

    live: set[Workers] = set()

    def __init__(self, spec: tuple[list[str], dict[str, str], Path], count: int, log_stem: Path):
        self.argv, self.env, self.cwd = spec
        self.count = count
        self.log_stem = log_stem
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        Workers.live.add(self)
        for i in range(self.count):
            with open(f"{self.log_stem}-{i}.log", "ab") as log:
                self.procs.append(
                    await asyncio.create_subprocess_exec(
                        *self.argv,
                        cwd=self.cwd,
                        env=self.env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    async def wait(self, timeout: float) -> list[int]:
        """Wait for every process to exit by itself; kill them all after ``timeout``."""
        try:
            return list(
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in self.procs)), timeout)
            )
        except TimeoutError:
            await self.stop(grace=0)
            raise BenchError(f"workers still running after {timeout:g}s; killed") from None
        finally:
            Workers.live.discard(self)

    async def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL whatever is left after ``grace`` seconds."""
        for proc in self.procs:
            if proc.returncode is None:
                _kill(proc, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        waits = [p.wait() for p in self.procs]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), max(grace, 5.0))
        except TimeoutError:
            for proc in self.procs:
                _kill(proc, signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in self.procs))
        Workers.live.discard(self)

    def log_tail(self, lines: int = 5) -> str:
        out: list[str] = []
        for i in range(self.count):
            with contextlib.suppress(OSError):
                text = Path(f"{self.log_stem}-{i}.log").read_text(errors="replace")
                out += text.strip().splitlines()[-lines:]
        return " | ".join(out[-lines:])


# --------------------------------------------------------------------------- systems


class System:
    """One queue under test, in its own database. ``conn`` is the benchmark's own connection."""

    name = ""
    version = ""
    truncate = ""
    tables: tuple[str, ...] = ()  # where it keeps jobs and their history (bytes per job)

    def __init__(self, dsn: str, logdir: Path) -> None:
        self.dsn = dsn
        self.logdir = logdir
        self.stamp_file = logdir / f"{self.name}-stamps.txt"
        self.conn: asyncpg.Connection | None = None
        self.error: str | None = None  # set when the system cannot be benchmarked at all

    @property
    def db(self) -> asyncpg.Connection:
        assert self.conn is not None
        return self.conn

    async def open(self) -> None:
        self.conn = await asyncpg.connect(self.dsn, command_timeout=300)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def reset(self) -> None:
        """Empty the system's tables: every measurement starts from the same state."""
        await self.db.execute(self.truncate)

    # Implemented per system:
    async def install(self) -> None: ...
    async def enqueue_single(self, n: int) -> float: ...  # seconds
    async def enqueue_batch(self, n: int) -> float: ...
    async def fill(self, n: int) -> None: ...
    async def send_stamps(self, n: int, interval: float) -> None: ...
    async def stamps(self) -> list[tuple[float, float]]: ...  # (enqueued_at, started_at)
    def worker(self, burst: bool) -> tuple[list[str], dict[str, str], Path]: ...
    async def completed_since(self, t0: float) -> tuple[int, int, float | None, float | None]:
        """(jobs succeeded, jobs failed, last completion, first start) since ``t0`` (epoch)."""
        ...

    async def unfinished(self) -> int: ...

    async def storage(self) -> dict[str, dict[str, int]]:
        """Per table: rows, and bytes on disk (heap, indexes, TOAST) as they are now."""
        rows = await self.db.fetch(
            "SELECT c.relname AS name, pg_relation_size(c.oid) AS heap, "
            "pg_indexes_size(c.oid) AS indexes, "
            "pg_total_relation_size(c.oid) - pg_relation_size(c.oid) - pg_indexes_size(c.oid) "
            "AS toast FROM unnest($1::text[]) AS n(name) JOIN pg_class AS c "
            "ON c.oid = to_regclass(n.name)",
            list(self.tables),
        )
        out = {r["name"]: dict(r) for r in rows}
        for name, entry in out.items():
            del entry["name"]
            # The system's own table names (class constants), not input.
            entry["rows"] = await self.db.fetchval(f'SELECT count(*) FROM "{name}"')  # noqa: S608
        return out


def server_cpu(postmaster: int) -> float:
    """CPU seconds of the postmaster, its live processes, and those it reaped (cutime/cstime):
    the whole server's so far (Linux /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
            pid, ppid = int(stat.parent.name), int(fields[1])
            if pid == postmaster:
                total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            elif ppid == postmaster:
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of this process's children that have exited (the workers, once waited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def wal_lsn(conn: asyncpg.Connection) -> int:
    """The server's WAL insert position, in bytes (asyncpg reads a pg_lsn as an int)."""
    return int(await conn.fetchval("SELECT pg_current_wal_lsn()"))


async def wal_since(conn: asyncpg.Connection, lsn: int) -> int:
    """WAL bytes written by the whole server since ``lsn``."""
    return await wal_lsn(conn) - lsn


class OmniQ(System):
    name = "omniq"
    truncate = "TRUNCATE tasks, results, events"
    tables = ("tasks", "results", "events")
    noop = "bench_tasks.noop"

    async def install(self) -> None:
        self.version = f"{__version__} ({_git_rev()})"
        self.backend = PostgreSQLBackend(PostgresConfig(dsn=self.dsn))
        await self.backend.connect()  # creates the schema

    async def close(self) -> None:
        if hasattr(self, "backend"):
            await self.backend.close()
        await super().close()

    async def enqueue_single(self, n: int) -> float:
        queue = self.backend.task_queue
        t0 = time.perf_counter()
        for _ in range(n):
            await queue.enqueue(Task(func=self.noop))
        return time.perf_counter() - t0

    async def enqueue_batch(self, n: int) -> float:
        t0 = time.perf_counter()
        await self.backend.task_queue.enqueue_calls(self.noop, [() for _ in range(n)])
        return time.perf_counter() - t0

    async def enqueue_batch_tasks(self, n: int) -> float:
        t0 = time.perf_counter()
        await self.backend.task_queue.enqueue_many([Task(func=self.noop) for _ in range(n)])
        return time.perf_counter() - t0

    async def fill(self, n: int) -> None:
        await self.backend.task_queue.enqueue_many([Task(func=self.noop) for _ in range(n)])

    async def send_stamps(self, n: int, interval: float) -> None:
        queue = self.backend.task_queue
        for _ in range(n):
            await queue.enqueue(Task(func="bench_tasks.stamp", args=(time.time(),)))
            await asyncio.sleep(interval)

    async def stamps(self) -> list[tuple[float, float]]:
        rows = await self.db.fetch(
            "SELECT (t.args ->> 0)::float8 AS enq, (r.result #>> '{}')::float8 AS started "
            "FROM tasks AS t JOIN results AS r ON r.task_id = t.id "
            "WHERE t.func = 'bench_tasks.stamp' AND r.status = 'success'"
        )
        return [(r["enq"], r["started"]) for r in rows]

    def worker(self, burst: bool) -> tuple[list[str], dict[str, str], Path]:
        argv = [
            sys.executable,
            "-m",
            "omniq",
            "worker",
            "--dsn",
            self.dsn,
            "-q",
            "--concurrency",
            str(CONCURRENCY),
        ]
        if burst:
            argv += ["--burst", "--no-scheduler"]
        return argv, clean_env(), SCRIPTS  # cwd: bench_tasks must be importable

    async def completed_since(self, t0: float) -> tuple[int, int, float | None, float | None]:
        row = await self.db.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'success') AS ok, "
            "count(*) FILTER (WHERE status <> 'success') AS bad, "
            "extract(epoch FROM max(created_at))::float8 AS last, "
            "extract(epoch FROM min(started_at))::float8 AS first "
            "FROM results WHERE created_at >= to_timestamp($1)",
            t0,
        )
        return row["ok"], row["bad"], row["last"], row["first"]

    async def unfinished(self) -> int:
        return await self.db.fetchval("SELECT count(*) FROM tasks WHERE status <> 'completed'")

    async def load_history(self, n: int) -> None:
        """``n`` completed tasks from 30 days ago with their results: what a finished job
        leaves (its events are derived when read, none stored), plus the four events per task
        an installation upgraded from before issue 12 still holds."""
        await self.db.execute(
            """
            INSERT INTO tasks (id, queue_name, priority, status, func, args, kwargs, created_at,
                               task_data, started_at, finished_at, worker_id, attempts)
            SELECT format('%s-%s-7000-8000-%s', substr(h.hex, 1, 8), substr(h.hex, 9, 4),
                          lpad(to_hex(g), 12, '0')),
                   'default', 0, 'completed', 'bench_tasks.noop', '[]', '{}', h.at, '{}',
                   h.at + interval '1 ms', h.at + interval '2 ms', 'bench-history', 1
            FROM generate_series(1, $1::int) AS g
            CROSS JOIN LATERAL (
                SELECT now() - interval '30 days' + g * interval '1 ms' AS at
            ) AS a
            CROSS JOIN LATERAL (
                SELECT a.at, lpad(to_hex((extract(epoch FROM a.at) * 1000)::bigint), 12, '0') AS hex
            ) AS h
            """,
            n,
        )
        await self.db.execute(
            """
            INSERT INTO results (task_id, status, result, created_at, started_at, completed_at,
                                 worker_id, execution_time, result_data)
            SELECT id, 'success', 'null', finished_at, started_at, finished_at, worker_id,
                   0.0001, '{}'
            FROM tasks WHERE worker_id = 'bench-history'
            """
        )
        await self.db.execute(
            """
            INSERT INTO events (task_id, event_type, timestamp, queue_name, worker_id)
            SELECT t.id, e.kind, t.created_at + e.delay, t.queue_name, e.worker
            FROM tasks AS t
            CROSS JOIN LATERAL (VALUES
                ('enqueued', interval '0', NULL), ('dequeued', interval '1 ms', t.worker_id),
                ('executing', interval '1 ms', t.worker_id),
                ('completed', interval '2 ms', t.worker_id)
            ) AS e(kind, delay, worker)
            WHERE t.worker_id = 'bench-history'
            ORDER BY t.id, e.delay
            """
        )
        for table in ("tasks", "results", "events"):
            await self.db.execute(f"VACUUM ANALYZE {table}")


def _git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Peer(System):
    """A peer driven through scripts/bench_peers/<name>_driver.py in the peers' virtualenv."""

    timeout = 120.0

    @property
    def env(self) -> dict[str, str]:
        return clean_env(
            BENCH_DSN=self.dsn, BENCH_STAMP_FILE=str(self.stamp_file), PYTHONPATH=str(PEERS_SRC)
        )

    async def driver(self, *args: object) -> dict[str, Any]:
        argv = [str(PEERS_PY), str(PEERS_SRC / f"{self.name}_driver.py"), *map(str, args)]
        return await run_json(argv, self.env, PEERS_SRC, self.timeout)

    async def install(self) -> None:
        await self.driver("install")

    async def enqueue_single(self, n: int) -> float:
        return (await self.driver("enqueue-single", n))["seconds"]

    async def enqueue_batch(self, n: int) -> float:
        return (await self.driver("enqueue-batch", n))["seconds"]

    async def fill(self, n: int) -> None:
        await self.driver("fill", n)

    async def send_stamps(self, n: int, interval: float) -> None:
        await self.driver("latency", n, interval)

    async def stamps(self) -> list[tuple[float, float]]:
        return read_stamps(self.stamp_file)


def read_stamps(path: Path) -> list[tuple[float, float]]:
    """The (enqueued_at, started_at) lines a stamp job appends to ``path``."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [(float(a), float(b)) for a, b in (line.split() for line in lines if line.strip())]


class BareQueue:
    """scripts/bench_floor.py on the ceiling database: a queue reduced to its two commits. Not
    a System: only its latency is measured, through the systems' send_stamps/stamps."""

    name = "bare queue"

    def __init__(self, dsn: str, logdir: Path) -> None:
        self.dsn = dsn
        self.stamp_file = logdir / "bare-queue.stamps"

    def worker(self) -> tuple[list[str], dict[str, str], Path]:
        argv = [sys.executable, str(SCRIPTS / "bench_floor.py"), self.dsn, str(self.stamp_file)]
        return argv, clean_env(), SCRIPTS

    async def reset(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("TRUNCATE jobs")  # the ceiling's rows are not stamp jobs
        finally:
            await conn.close()

    async def send_stamps(self, n: int, interval: float) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            insert = await conn.prepare(
                "INSERT INTO jobs (queue_name, payload) VALUES ('default', to_jsonb($1::float8))"
            )
            for _ in range(n):
                await insert.fetch(time.time())
                await asyncio.sleep(interval)
        finally:
            await conn.close()

    async def stamps(self) -> list[tuple[float, float]]:
        return read_stamps(self.stamp_file)


class PgQueuer(Peer):
    name = "pgqueuer"
    truncate = "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics"
    tables = ("pgqueuer", "pgqueuer_log", "pgqueuer_statistics")

    def worker(self, burst: bool) -> tuple[list[str], dict[str, str], Path]:
        # What `pgq run pgqueuer_driver:factory --batch-size 10 [--mode drain]` runs (see driver).
        mode = "drain" if burst else "continuous"
        argv = [str(PEERS_PY), str(PEERS_SRC / "pgqueuer_driver.py"), "worker", "10", mode]
        return argv, self.env, PEERS_SRC

    async def completed_since(self, t0: float) -> tuple[int, int, float | None, float | None]:
        row = await self.db.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'successful') AS ok, "
            "count(*) FILTER (WHERE status IN ('exception', 'failed')) AS bad, "
            "extract(epoch FROM max(created) FILTER (WHERE status = 'successful'))::float8 AS last "
            "FROM pgqueuer_log WHERE created >= to_timestamp($1)",
            t0,
        )
        # pgqueuer deletes finished jobs and does not log 'picked': no first-start time.
        return row["ok"], row["bad"], row["last"], None

    async def unfinished(self) -> int:
        return await self.db.fetchval("SELECT count(*) FROM pgqueuer")


class Procrastinate(Peer):
    name = "procrastinate"
    truncate = (
        "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_periodic_defers CASCADE"
    )
    tables = ("procrastinate_jobs", "procrastinate_events")

    def worker(self, burst: bool) -> tuple[list[str], dict[str, str], Path]:
        argv = [
            str(PEERS_VENV / "bin" / "procrastinate"),
            "--app",
            "procrastinate_driver.app",
            "--log-level",
            "warning",
            "worker",
            "--concurrency",
            str(CONCURRENCY),
        ]
        if burst:
            argv += ["--one-shot"]
        return argv, self.env, PEERS_SRC

    async def completed_since(self, t0: float) -> tuple[int, int, float | None, float | None]:
        row = await self.db.fetchrow(
            "SELECT count(*) FILTER (WHERE type = 'succeeded') AS ok, "
            "count(*) FILTER (WHERE type = 'failed') AS bad, "
            "extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded'))::float8 AS last, "
            "extract(epoch FROM min(at) FILTER (WHERE type = 'started'))::float8 AS first "
            "FROM procrastinate_events WHERE at >= to_timestamp($1)",
            t0,
        )
        return row["ok"], row["bad"], row["last"], row["first"]

    async def unfinished(self) -> int:
        return await self.db.fetchval(
            "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"
        )


# --------------------------------------------------------------------------- peers' venv


def ensure_peers_venv() -> dict[str, str]:
    """Create .bench-venv/peers with the latest peers from PyPI unless there; their versions."""
    if not PEERS_PY.exists():
        progress(f"creating {PEERS_VENV.relative_to(ROOT)} ...")
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)], check=True, timeout=120
        )
    probe = "import pgqueuer, procrastinate, asyncpg, psycopg"
    if subprocess.run([str(PEERS_PY), "-c", probe], capture_output=True, timeout=60).returncode:
        progress(f"installing {' '.join(PEER_PACKAGES)} from PyPI ...")
        subprocess.run(
            [
                str(PEERS_PY),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                *PEER_PACKAGES,
            ],
            check=True,
            timeout=600,
        )
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({p: m.version(p) for p in ('pgqueuer', 'procrastinate', 'asyncpg', "
        "'psycopg')}))"
    )
    out = subprocess.run(
        [str(PEERS_PY), "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout)


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace, server: EmbeddedPostgres, logdir: Path):
        self.args = args
        self.server = server
        self.logdir = logdir
        self.systems: list[System] = []
        self.runs: dict[str, dict[str, list[float | None]]] = {}
        self.errors: dict[str, dict[str, str]] = {}
        self.notes: list[str] = []
        self.details: dict[str, Any] = {}  # statements seen, steady rates, ...
        self.admin: asyncpg.Connection | None = None
        self.dbids: dict[str, int] = {}
        self.started = time.monotonic()

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.server.port}/{database}"

    @property
    def db(self) -> asyncpg.Connection:
        assert self.admin is not None
        return self.admin

    def server_cpu(self) -> float:
        """The embedded server's CPU seconds so far; 0.0 where /proc cannot tell."""
        try:
            pid = int(Path(self.server.data_dir, "postmaster.pid").read_text().split()[0])
            return server_cpu(pid)
        except (OSError, ValueError, IndexError):
            return 0.0

    def note(self, message: str) -> None:
        self.notes.append(message)
        progress(f"NOTE: {message}")

    def record(self, system: System, key: str, value: float | None, error: str = "") -> None:
        self.runs.setdefault(system.name, {}).setdefault(key, []).append(value)
        if error:
            self.errors.setdefault(system.name, {})[key] = error

    def detail(self, system: System, key: str, value: Any) -> None:
        self.details.setdefault(system.name, {}).setdefault(key, []).append(value)

    def live(self) -> list[System]:
        return [s for s in self.systems if s.error is None]

    # -- setup

    async def setup(self, classes: list[type[System]]) -> None:
        self.admin = await asyncpg.connect(self.dsn("postgres"), command_timeout=300)
        settings = {
            name: await self.db.fetchval(f"SHOW {name}")
            for name in (
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "shared_buffers",
                "max_wal_size",
                "server_version",
            )
        }
        self.details["server"] = settings
        if settings["fsync"] != "on" or settings["synchronous_commit"] != "on":
            raise SystemExit(f"durability is not on: {settings}")
        await self.db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for cls in classes:
            database = f"bench_{cls.name}"
            await self.db.execute(f'CREATE DATABASE "{database}"')
            self.dbids[cls.name] = await self.db.fetchval(
                "SELECT oid FROM pg_database WHERE datname = $1", database
            )
            system = cls(self.dsn(database), self.logdir)
            self.systems.append(system)
            try:
                await system.open()
                await system.install()
                await system.reset()
            except Exception as exc:
                system.error = f"setup failed: {exc}"
                self.note(f"{system.name}: {system.error}; its figures are n/a")
        progress(
            f"PostgreSQL {settings['server_version']} on port {self.server.port}, "
            f"fsync={settings['fsync']} synchronous_commit={settings['synchronous_commit']}"
        )

    async def close(self) -> None:
        for workers in list(Workers.live):
            await workers.stop(grace=0)
        for system in self.systems:
            with contextlib.suppress(Exception):
                await system.close()
        if self.admin is not None:
            await self.admin.close()

    async def fresh(self, system: System) -> None:
        await system.reset()
        await self.db.execute("CHECKPOINT")  # no checkpoint of the previous run's writes mid-run

    async def statements(self, system: System) -> list[tuple[int, str]]:
        rows = await self.db.fetch(
            "SELECT calls, query FROM pg_stat_statements WHERE dbid = $1 ORDER BY calls DESC",
            self.dbids[system.name],
        )
        return [(r["calls"], r["query"]) for r in rows]

    async def reset_statements(self, system: System) -> None:
        await self.db.execute(
            "SELECT pg_stat_statements_reset(0, $1::oid, 0)", self.dbids[system.name]
        )

    # -- the figures

    async def enqueue(self) -> None:
        a = self.args
        for key, n, call in (
            ("enqueue_single", a.single, "enqueue_single"),
            ("enqueue_batch", a.batch, "enqueue_batch"),
            ("enqueue_batch_tasks", a.batch, "enqueue_batch_tasks"),
        ):
            for rep in range(a.repeat):
                for system in self.live():
                    if not hasattr(system, call):
                        continue  # a figure of OmniQ's own
                    await self.fresh(system)
                    try:
                        seconds = await getattr(system, call)(n)
                    except Exception as exc:
                        self.record(system, key, None, _describe(exc))
                        progress(f"{system.name:13} {key} {rep + 1}/{a.repeat}: FAILED {exc}")
                        continue
                    self.record(system, key, n / seconds)
                    progress(
                        f"{system.name:13} {key} {rep + 1}/{a.repeat}: "
                        f"{n:,} in {seconds:.2f}s = {n / seconds:,.0f} jobs/s"
                    )

    async def ceiling(self) -> None:
        """What one client can enqueue at most: pgbench (C, prepared, one connection) running a
        one-row INSERT into a bare table whose per-statement trigger sends a NOTIFY, each
        statement its own committed transaction. Single enqueues are reported as a share."""
        database = "bench_ceiling"
        await self.db.execute(f'CREATE DATABASE "{database}"')
        conn = await asyncpg.connect(self.dsn(database))
        try:
            await conn.execute(CEILING_SCHEMA)
        finally:
            await conn.close()
        script = self.logdir / "ceiling.sql"
        script.write_text("INSERT INTO jobs (queue_name, payload) VALUES ('default', '[]');\n")
        argv = [str(find_bindir() / "pgbench"), "-n", "-M", "prepared", "-c", "1"]
        argv += ["-t", str(self.args.single), "-f", str(script), self.dsn(database)]
        rates = []
        for _ in range(self.args.repeat):
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
                )
            except OSError as exc:  # no pgbench beside these server binaries
                self.note(f"pgbench ceiling: not measured ({exc})")
                return
            out = (await proc.communicate())[0].decode()
            match = re.search(r"^tps = ([\d.]+)", out, re.MULTILINE)
            if proc.returncode or match is None:
                self.note(f"pgbench ceiling: failed ({out.strip()[-300:]})")
                return
            rates.append(float(match.group(1)))
        rate = statistics.median(rates)
        self.details["ceiling_insert_notify"] = rates
        progress(f"ceiling       pgbench one-row INSERT + NOTIFY: {rate:,.0f} jobs/s")
        floor = await self.driver_ceiling(database)
        for system in self.live():
            runs = [v for v in self.runs.get(system.name, {}).get("enqueue_single", []) if v]
            if runs:
                single = statistics.median(runs)
                self.note(
                    f"{system.name} enqueues one at a time at {100 * single / rate:.0f}% of the "
                    f"ceiling (pgbench one-row INSERT + NOTIFY, C client, prepared: {rate:,.0f} "
                    f"jobs/s), at {100 * single / floor:.0f}% of the same INSERT through asyncpg "
                    f"({floor:,.0f} jobs/s)"
                )

    async def driver_ceiling(self, database: str) -> float:
        """The ceiling's INSERT + NOTIFY through asyncpg (prepared, one connection), the driver
        OmniQ and pgqueuer use: the fastest a Python client enqueues one at a time."""
        conn = await asyncpg.connect(self.dsn(database))
        try:
            insert = await conn.prepare(CEILING_INSERT)
            rates: list[float] = []
            for _ in range(self.args.repeat):
                t0 = time.perf_counter()
                for _ in range(self.args.single):
                    await insert.fetch("default")
                rates.append(self.args.single / (time.perf_counter() - t0))
        finally:
            await conn.close()
        self.details["ceiling_insert_notify_asyncpg"] = rates
        rate = statistics.median(rates)
        progress(f"ceiling       the same INSERT + NOTIFY through asyncpg: {rate:,.0f} jobs/s")
        return rate

    async def process(self, system: System, key: str, procs: int, reset: bool = True) -> None:
        """Enqueue ``--tasks`` no-ops, start ``procs`` burst workers, time until all are done."""
        n = self.args.tasks
        if reset:
            await system.reset()
        count_statements = procs == 1 and reset
        lsn = await wal_lsn(self.db)
        try:
            await system.fill(n)
        except Exception as exc:
            self.record(system, key, None, f"enqueueing failed: {_describe(exc)}")
            progress(f"{system.name:13} {key}: FAILED to enqueue: {exc}")
            return
        # Planner statistics as a live queue has them (TRUNCATE leaves none): without this the
        # first run after the enqueue figures can be several times slower than the next ones.
        await system.db.execute("ANALYZE")
        await self.db.execute("CHECKPOINT")  # the jobs are on disk; no checkpoint mid-run
        if count_statements:
            await self.reset_statements(system)
        stem = self.logdir / f"{system.name}-{key}"
        workers = Workers(system.worker(burst=True), procs, stem)
        cpu = (self.server_cpu(), children_cpu())
        t0 = time.time()
        await workers.start()
        try:
            codes = await workers.wait(self.args.run_timeout)
        except BenchError as exc:
            codes = None
            error = f"{exc} ({workers.log_tail()})"
        cpu = (self.server_cpu() - cpu[0], children_cpu() - cpu[1])
        if count_statements:
            calls = sum(c for c, _ in await self.statements(system))
            self.record(system, "statements_per_job", calls / n)
        ok, bad, last, first = await system.completed_since(t0)
        left = await system.unfinished() if reset else 0
        if codes is not None and any(codes):
            self.note(f"{system.name} {key}: worker exit codes {codes} ({workers.log_tail()})")
        if codes is None or ok < n or last is None:
            if codes is not None:
                error = f"only {ok:,} of {n:,} jobs completed ({bad} failed, {left} unfinished)"
            self.record(system, key, None, error)
            self.note(f"{system.name} {key}: {error}")
            return
        if bad or left or ok > n:
            self.note(
                f"{system.name} {key}: {ok} succeeded, {bad} failed, {left} unfinished "
                f"of {n} (duplicates or leftovers?)"
            )
        elapsed = last - t0
        self.record(system, key, n / elapsed)
        if count_statements:  # what the jobs cost: CPU, and on disk WAL and the tables left
            if cpu[0] > 0:  # 0: the server's /proc was not readable
                self.record(system, "server_cpu_per_job", cpu[0] / n * 1e6)
            self.record(system, "worker_cpu_per_job", cpu[1] / n * 1e6)
            self.record(system, "wal_per_job", await wal_since(self.db, lsn) / n)
            tables = await system.storage()
            on_disk = sum(t["heap"] + t["indexes"] + t["toast"] for t in tables.values())
            self.record(system, "bytes_per_job", on_disk / n)
            self.detail(system, "storage_tables", tables)
        if first is not None:
            self.detail(system, f"{key}_steady", n / max(last - first, 1e-6))
        progress(
            f"{system.name:13} {key}: {n:,} in {elapsed:.2f}s = {n / elapsed:,.0f} jobs/s"
            + (f" (steady {n / max(last - first, 1e-6):,.0f}/s)" if first else "")
        )

    async def processing(self) -> None:
        """Every process count, ``--repeat`` times, the systems taking turns.

        With a time budget, a repetition after the first is skipped when it would leave no
        time for the rest (one run of each remaining process count, latency and idle).
        """
        a = self.args
        rep_seconds = 0.0  # how long the last repetition took, all systems together
        for i, procs in enumerate(a.processes):
            for rep in range(a.repeat):
                later_firsts = len(a.processes) - i - 1
                if rep and self.over_budget(rep_seconds * (1 + later_firsts)):
                    self.note(
                        f"process_{procs}: {a.repeat - rep} of {a.repeat} runs skipped to stay "
                        f"within --budget-minutes {a.budget_minutes:g}; its median is of {rep}"
                    )
                    break
                t = time.monotonic()
                for system in self.live():
                    await self.process(system, f"process_{procs}", procs)
                rep_seconds = time.monotonic() - t

    def over_budget(self, upcoming: float) -> bool:
        """Whether ``upcoming`` seconds more, plus what must still run after processing,
        would end the benchmark past ``--budget-minutes``."""
        a = self.args
        if not a.budget_minutes:
            return False
        systems = len(self.live())
        latency = systems * (a.repeat + 0.2) * (a.latency_tasks * (a.latency_interval + 0.005))
        after = latency + 15 * systems + a.repeat * (a.idle_seconds + 1) + 10
        after += 120 if a.million else 0
        return time.monotonic() - self.started + upcoming + after > a.budget_minutes * 60

    async def million(self, omniq: OmniQ) -> None:
        await self.fresh(omniq)
        n = self.args.history
        progress(f"omniq: loading {n:,} finished tasks, their results and {4 * n:,} events ...")
        t = time.monotonic()
        await omniq.load_history(n)
        progress(f"omniq: history loaded and vacuumed in {time.monotonic() - t:.0f}s")
        for _ in range(self.args.repeat):
            await self.process(omniq, "process_1_million", 1, reset=False)

    async def latency_and_idle(self) -> None:
        """One long-running worker per system: latency runs (the systems taking turns), then
        the idle windows, all systems at once (each counts only its own database)."""
        a = self.args
        workers: dict[str, Workers] = {}
        systems = self.live()
        try:
            for system in systems:
                await self.fresh(system)
                workers[system.name] = Workers(
                    system.worker(burst=False), 1, self.logdir / f"{system.name}-idle"
                )
                await workers[system.name].start()
            for system in list(systems):  # warm-up: each worker is up and listening
                try:
                    await self._latency_run(system, 5, workers[system.name])
                except BenchError as exc:
                    systems.remove(system)
                    for q in (50, 95, 99):
                        self.record(system, f"latency_p{q}", None, str(exc))
                    self.record(system, "idle_statements", None, str(exc))
                    self.note(f"{system.name} latency: {exc} ({workers[system.name].log_tail()})")
            bare = await self._start_bare_queue()
            try:
                for rep in range(a.repeat):
                    for system in systems:
                        await self._latency(system, workers[system.name], rep)
                    if bare is not None:
                        await self._bare_latency(*bare, rep)
            finally:
                if bare is not None:
                    await bare[1].stop()
            await self.commit_floor()  # as the latency runs had it: every worker up, idle
            await asyncio.sleep(2.0)  # caught up: the last outcomes and heartbeats are written
            for rep in range(a.repeat):
                for system in systems:
                    await self.reset_statements(system)
                await asyncio.sleep(a.idle_seconds)
                for system in systems:
                    await self._idle(system, workers[system.name], rep)
        finally:
            for w in workers.values():
                await w.stop()

    async def _start_bare_queue(self) -> tuple[BareQueue, Workers] | None:
        """The bare queue's worker, up and listening (warmed up as the systems' are)."""
        bare = BareQueue(self.dsn("bench_ceiling"), self.logdir)
        workers = Workers(bare.worker(), 1, self.logdir / "bare-queue")
        try:
            await bare.reset()
            await workers.start()
            await self._latency_run(bare, 5, workers)
        except Exception as exc:
            await workers.stop(grace=0)
            self.note(f"bare queue: not measured ({_describe(exc)}; {workers.log_tail()})")
            return None
        return bare, workers

    async def _bare_latency(self, bare: BareQueue, workers: Workers, rep: int) -> None:
        """Enqueue-to-start of the bare queue, measured as a system's (in the notes)."""
        try:
            lat = await self._latency_run(bare, self.args.latency_tasks, workers)
        except BenchError as exc:
            self.note(f"bare queue latency: {exc} ({workers.log_tail()})")
            return
        p = self._latency_progress(bare.name, rep, lat)
        self.details.setdefault("bare_queue_latency_ms", []).append(
            {"p50": p[49], "p95": p[94], "p99": p[98]}
        )

    async def commit_floor(self) -> None:
        """How long one durable commit takes at the latency runs' pace: ``--latency-tasks``
        one-row INSERTs with the ceiling's NOTIFY trigger, ``--latency-interval`` apart, each
        its own transaction (asyncpg, prepared). Enqueue-to-start holds two (the enqueue's and
        the dequeue's), so twice its p50 is a floor no system goes below."""
        a = self.args
        try:
            conn = await asyncpg.connect(self.dsn("bench_ceiling"))
        except Exception as exc:
            self.note(f"commit floor: not measured ({_describe(exc)})")
            return
        try:
            insert = await conn.prepare(CEILING_INSERT)
            took = []
            for _ in range(a.latency_tasks):
                t0 = time.perf_counter()
                await insert.fetch("default")
                took.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(a.latency_interval)
        finally:
            await conn.close()
        p50 = statistics.median(took)
        self.details["commit_floor_ms"] = {"p50": p50, "p99": statistics.quantiles(took, n=100)[98]}
        progress(
            f"floor         one committed INSERT + NOTIFY every {a.latency_interval * 1000:g} ms: p50 {p50:.2f} ms"
        )

    def ceilings(self) -> None:
        """Notes putting the latency and the processing figures against what this machine
        allows: two durable commits per enqueue-to-start; the CPU a job costs on its cores."""
        medians = self.summary()
        floor = self.details.get("commit_floor_ms")
        runs = self.details.get("bare_queue_latency_ms", [])
        bare = {q: statistics.median(r[q] for r in runs) for q in ("p50", "p99")} if runs else None
        cores = os.cpu_count() or 1
        for system in self.live():
            figures = {k: v.get("median") for k, v in medians.get(system.name, {}).items()}
            if bare and figures.get("latency_p50"):
                self.note(
                    f"{system.name} enqueue-to-start p50 {figures['latency_p50']:.2f} ms, "
                    f"p99 {figures['latency_p99']:.2f} ms against the bare queue's "
                    f"{bare['p50']:.2f} / {bare['p99']:.2f} ms (scripts/bench_floor.py: one-row "
                    "INSERT + NOTIFY; LISTEN; one DELETE ... SKIP LOCKED per job)"
                )
            if floor and figures.get("latency_p50"):
                self.note(
                    f"{system.name} enqueue-to-start p50 {figures['latency_p50']:.2f} ms against a "
                    f"floor of {2 * floor['p50']:.2f} ms (two durable commits, "
                    f"{floor['p50']:.2f} ms each at p50 when {self.args.latency_interval * 1000:g} "
                    "ms apart)"
                )
            server, worker = figures.get("server_cpu_per_job"), figures.get("worker_cpu_per_job")
            rate = figures.get("process_1")
            if server and worker and rate:
                most = cores / ((server + worker) / 1e6)
                self.note(
                    f"{system.name} process, 1 worker process: {server:.0f} us PostgreSQL + "
                    f"{worker:.0f} us worker CPU per job, start-up included; {cores} cores busy "
                    f"all the time would do at most {most:,.0f} jobs/s, it did {rate:,.0f} "
                    f"({100 * rate / most:.0f}%)"
                )

    async def _latency(self, system: System, workers: Workers, rep: int) -> None:
        try:
            lat = await self._latency_run(system, self.args.latency_tasks, workers)
        except BenchError as exc:
            for q in (50, 95, 99):
                self.record(system, f"latency_p{q}", None, str(exc))
            self.note(f"{system.name} latency: {exc} ({workers.log_tail()})")
            return
        p = self._latency_progress(system.name, rep, lat)
        for q in (50, 95, 99):
            self.record(system, f"latency_p{q}", p[q - 1])

    def _latency_progress(self, name: str, rep: int, lat: list[float]) -> list[float]:
        """The percentiles of one latency run (p[49] is p50), printed."""
        p = statistics.quantiles(lat, n=100, method="inclusive")
        progress(
            f"{name:13} latency {rep + 1}/{self.args.repeat}: p50 {p[49]:.1f} ms, "
            f"p95 {p[94]:.1f} ms, p99 {p[98]:.1f} ms, max {max(lat):.1f} ms"
        )
        return p

    async def _idle(self, system: System, workers: Workers, rep: int) -> None:
        if workers.procs[0].returncode is not None:
            error = f"the worker exited ({workers.log_tail()})"
            self.record(system, "idle_statements", None, error)
            self.note(f"{system.name} idle: {error}")
            return
        seen = await self.statements(system)
        calls = sum(c for c, _ in seen)
        self.record(system, "idle_statements", calls)
        self.detail(system, "idle_statements_seen", [[c, q[:300]] for c, q in seen])
        progress(
            f"{system.name:13} idle {rep + 1}/{self.args.repeat}: {calls} statements in "
            f"{self.args.idle_seconds:g}s" + (f", most: {seen[0][1][:80]!r}" if seen else "")
        )

    async def _latency_run(
        self, system: System | BareQueue, n: int, workers: Workers
    ) -> list[float]:
        """Enqueue ``n`` stamp jobs ``--latency-interval`` apart; their latencies in ms."""
        since = time.time()
        await system.send_stamps(n, self.args.latency_interval)
        deadline = time.monotonic() + 30
        while True:
            got = [(s - e) * 1000 for e, s in await system.stamps() if e >= since]
            if len(got) >= n:
                return got
            if time.monotonic() > deadline or workers.procs[0].returncode is not None:
                raise BenchError(f"only {len(got)} of {n} stamp jobs started within 30s")
            await asyncio.sleep(0.1)

    async def run(self) -> None:
        await self.enqueue()
        await self.ceiling()
        await self.processing()
        await self.latency_and_idle()
        omniq = next((s for s in self.live() if isinstance(s, OmniQ)), None)
        if self.args.million and omniq is not None:
            await self.million(omniq)
        self.ceilings()

    # -- reporting

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for system in self.systems:
            for metric in metrics(self.args):
                runs = self.runs.get(system.name, {}).get(metric.key, [])
                values = [v for v in runs if v is not None]
                entry: dict[str, Any] = {"unit": metric.unit, "runs": runs}
                if values and len(values) == len(runs):
                    median = statistics.median(values)
                    entry |= {"median": median, "min": min(values), "max": max(values)}
                    entry["spread_pct"] = (
                        50 * (max(values) - min(values)) / median if median else 0.0
                    )
                else:
                    entry["error"] = (
                        system.error
                        or self.errors.get(system.name, {}).get(metric.key)
                        or ("not measured" if not runs else "a run failed")
                    )
                out.setdefault(system.name, {})[metric.key] = entry
        return out

    def table(self, summary: dict[str, dict[str, dict[str, Any]]]) -> str:
        names = ["omniq", "pgqueuer", "procrastinate"]
        versions = {s.name: s.version for s in self.systems}
        head = ["", *(f"{n} {versions.get(n, '')}".strip() for n in names), "omniq/pgqueuer"]
        rows = [head]
        for metric in metrics(self.args):
            row = [f"{metric.label} ({metric.unit})"]
            for name in names:
                entry = summary.get(name, {}).get(metric.key)
                if entry is None:
                    row.append("-")
                elif "median" not in entry:
                    row.append("n/a")
                else:
                    row.append(f"{_fmt(entry['median'], metric.unit)} ±{entry['spread_pct']:.0f}%")
            o = summary.get("omniq", {}).get(metric.key, {}).get("median")
            p = summary.get("pgqueuer", {}).get(metric.versus or metric.key, {}).get("median")
            row.append(f"{o / p:.2f}x" if o is not None and p else "-")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = []
        for i, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  ".join(cells))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.1f}"
    if unit == "count":
        return f"{value:.2f}" if value < 10 and value != int(value) else f"{value:,.0f}"
    return f"{value:,.0f}"


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="OmniQ benchmark (see the top of scripts/bench.py for what each figure means)."
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also measure pgqueuer and procrastinate (.bench-venv/peers)",
    )
    parser.add_argument(
        "--million",
        action="store_true",
        help="also process with 1,000,000 finished tasks in OmniQ's tables",
    )
    # Size of --million's history; smaller only to try the flag out quickly.
    parser.add_argument("--history", type=int, default=1_000_000, help=argparse.SUPPRESS)
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="idle window for counting statements (default 10; target: 60)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument(
        "--single", type=int, default=2000, help="jobs enqueued one at a time (default 2000)"
    )
    parser.add_argument(
        "--batch", type=int, default=10000, help="jobs in the batch enqueue (default 10000)"
    )
    parser.add_argument(
        "--tasks", type=int, default=10000, help="no-op jobs per processing run (default 10000)"
    )
    parser.add_argument(
        "--processes", default="1,2,4", help="worker process counts for processing (default 1,2,4)"
    )
    parser.add_argument(
        "--latency-tasks", type=int, default=300, help="jobs per latency run (default 300)"
    )
    parser.add_argument(
        "--latency-interval",
        type=float,
        default=0.02,
        help="seconds between latency enqueues (default 0.02)",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        help="skip processing repetitions after the first rather than run longer than this "
        "(default 4.5, with --peers 14, plus what --idle-seconds above 10 and --million add; "
        "0: no limit)",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=180.0,
        help="seconds one processing run may take (default 180)",
    )
    args = parser.parse_args(argv)
    args.processes = [int(p) for p in args.processes.split(",") if p.strip()]
    if args.budget_minutes is None:  # what --idle-seconds above 10 and --million add is extra
        extra = max(0.0, args.idle_seconds - 10) * args.repeat / 60 + (2.0 if args.million else 0)
        args.budget_minutes = (14.0 if args.peers else 4.5) + extra
    if args.repeat < 1 or not args.processes or args.latency_tasks < 2:
        parser.error("need --repeat >= 1, at least one process count and --latency-tasks >= 2")
    return args


async def amain(args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    # Bytecode for OmniQ's modules, as an installed package has it (pip compiles the peers'):
    # without it each worker process would compile them at start, whenever Python runs with
    # PYTHONDONTWRITEBYTECODE or from a read-only checkout.
    compileall.compile_dir(ROOT / "omniq", quiet=1)
    versions: dict[str, str] = {}
    classes: list[type[System]] = [OmniQ]
    if args.peers:
        try:
            versions = await asyncio.to_thread(ensure_peers_venv)
            progress("peers: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
            classes += [PgQueuer, Procrastinate]
        except (subprocess.SubprocessError, OSError, ValueError) as exc:
            progress(f"NOTE: cannot set up the peers' virtualenv ({exc}); peers are n/a")
    logdir = RESULTS / f"bench-{stamp}-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    progress("starting a throwaway PostgreSQL (durable) ...")
    server = EmbeddedPostgres(durable=True)
    await asyncio.to_thread(server.start)
    bench = Bench(args, server, logdir)
    started = time.monotonic()
    try:
        await bench.setup(classes)
        for system in bench.systems:
            if isinstance(system, Peer):
                system.version = versions.get(system.name, "")
        await bench.run()
    finally:
        await bench.close()
        progress("stopping PostgreSQL ...")
        await asyncio.to_thread(server.stop)
    summary = bench.summary()
    return {
        "started_at": stamp,
        "duration_s": round(time.monotonic() - started, 1),
        "args": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "server": bench.details.pop("server", {}),
        "versions": {s.name: s.version for s in bench.systems} | {"peer_packages": versions},
        "results": summary,
        "details": bench.details,
        "notes": bench.notes,
        "table": bench.table(summary),
    }


def main() -> int:
    args = parse_args()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    report = asyncio.run(amain(args, stamp))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print()
    print(report["table"])
    print()
    if report["notes"]:
        print("Notes:")
        for note in report["notes"]:
            print(f"  - {note}")
    print(
        f"Total {time.monotonic() - T0:.0f}s; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.1f}. Results: {path.relative_to(ROOT)}"
    )
    logdir = RESULTS / f"bench-{stamp}-logs"
    if logdir.is_dir() and not any(p.stat().st_size for p in logdir.iterdir()):
        shutil.rmtree(logdir, ignore_errors=True)  # nothing was logged
    return 0


if __name__ == "__main__":
    sys.exit(main())
