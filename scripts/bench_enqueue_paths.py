"""Where a single enqueue's time goes, path by path, against pgqueuer's in the same rounds.

    scripts/bench_enqueue_paths [--rounds 9] [--jobs 2000] [--json FILE]

scripts/bench gives the single enqueue as one ratio to pgqueuer, the median of 3 rounds, which
this machine's noise moves by ±10-46%. This script takes the call apart instead. It starts its
own durable PostgreSQL, installs OmniQ and pgqueuer (.bench-venv/peers, as ``bench --peers``)
in databases of their own, and in each round enqueues ``--jobs`` no-op jobs one at a time,
each its own transaction, through every path in turn (each round starting one path later):

- pgqueuer's driver (``Queries.enqueue``, scripts/bench_peers/pgqueuer_driver.py);
- ``enqueue(Task(...))``, what an application calls;
- ``omniq_enqueue_one_v1`` as a prepared statement: the same call without OmniQ's Python;
- the same function body as a plain PL/pgSQL function (no SECURITY DEFINER, no pinned
  ``search_path``), created from ``pg_get_functiondef`` of the real one;
- the same row and NOTIFY as one top-level prepared statement: no function at all;
- the bench's ceiling, a one-row INSERT into a bare table whose trigger sends a NOTIFY.

It prints each path's median rate, its ratio to pgqueuer's round by round (median and range),
and the paired median of its µs per call over the top-level statement's. About 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: the server, the systems and the peers' drivers)

from omniq import Task  # noqa: E402
from omniq.backend.postgres.rows import one_task_params  # noqa: E402

# omniq_enqueue_one_v1's arguments, in order, and its body's INSERT and NOTIFY as one statement.
ARGS = (
    "id func created_at queue_name priority args kwargs run_at expires_at retry_count "
    "max_retries retry_delay callbacks metadata task_data"
).split()
PLACEHOLDERS = "$1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11, $12, $13::jsonb, $14::jsonb, $15::jsonb"
TOP_LEVEL = """
WITH i AS (
    INSERT INTO tasks (id, queue_name, priority, status, delayed, func, args, kwargs,
        created_at, run_at, expires_at, retry_count, max_retries, retry_delay, callbacks,
        metadata, task_data)
    VALUES (omniq_checked_task_id($1, false), omniq_checked_queue_name($4), $5, 'pending',
        coalesce($8 > now(), false), $2, $6::jsonb, $7::jsonb, $3, $8, $9, $10, $11, $12,
        $13::jsonb, $14::jsonb, $15::jsonb)
    RETURNING id, queue_name)
SELECT i.id, pg_notify(omniq_channel_of('tasks', current_schema()), i.queue_name) FROM i
"""

Run = Callable[[], Awaitable[float]]  # enqueues --jobs through one path; returns seconds


async def plain_copy(conn: asyncpg.Connection) -> None:
    """bench_enqueue_one_plain: omniq_enqueue_one_v1's definition without SECURITY DEFINER and
    its SET clause (pg_get_functiondef prints each on a line of its own)."""
    ddl = await conn.fetchval("SELECT pg_get_functiondef('omniq_enqueue_one_v1'::regproc)")
    lines = [
        line
        for line in ddl.splitlines()
        if line.strip() != "SECURITY DEFINER" and not line.strip().startswith("SET search_path")
    ]
    ddl = "\n".join(lines).replace(".omniq_enqueue_one_v1(", ".bench_enqueue_one_plain(", 1)
    await conn.execute(ddl)


async def paths(
    omniq: bench.OmniQ, pgqueuer: bench.PgQueuer, ceiling: asyncpg.Connection, jobs: int
) -> dict[str, Run]:
    """Each path: a coroutine function enqueueing ``jobs`` one at a time, returning seconds."""
    conn = omniq.db
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=lambda v: v, decoder=json.loads, format="text"
    )
    await plain_copy(conn)
    function = await conn.prepare(f"SELECT omniq_enqueue_one_v1({PLACEHOLDERS})")
    plain = await conn.prepare(f"SELECT bench_enqueue_one_plain({PLACEHOLDERS})")
    top = await conn.prepare(TOP_LEVEL)
    bare = await ceiling.prepare(bench.CEILING_INSERT)

    def statement(prepared: asyncpg.prepared_stmt.PreparedStatement) -> Run:
        async def run() -> float:
            t0 = time.perf_counter()
            for _ in range(jobs):
                params = one_task_params(Task(func=omniq.noop))
                await prepared.fetchval(*(params[name] for name in ARGS))
            return time.perf_counter() - t0

        return run

    async def bare_insert() -> float:
        t0 = time.perf_counter()
        for _ in range(jobs):
            await bare.fetchval("default")
        return time.perf_counter() - t0

    return {
        "pgqueuer (its driver)": lambda: pgqueuer.enqueue_single(jobs),
        "enqueue(Task(...))": lambda: omniq.enqueue_single(jobs),
        "omniq_enqueue_one_v1, prepared": statement(function),
        "the same, plain PL/pgSQL": statement(plain),
        "the same row, top-level statement": statement(top),
        "bare INSERT + NOTIFY (ceiling)": bare_insert,
    }


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    await asyncio.to_thread(bench.ensure_peers_venv)
    server = bench.EmbeddedPostgres(durable=True)
    await asyncio.to_thread(server.start)
    logdir = bench.RESULTS / f"enqueue-paths-{time.strftime('%Y%m%d-%H%M%S')}-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    dsn = f"postgresql://postgres@127.0.0.1:{server.port}"
    admin = await asyncpg.connect(f"{dsn}/postgres")
    systems: list[bench.System] = []
    ceiling: asyncpg.Connection | None = None
    try:
        for name in ("omniq", "pgqueuer", "ceiling"):
            await admin.execute(f'CREATE DATABASE "paths_{name}"')
        omniq = bench.OmniQ(f"{dsn}/paths_omniq", logdir)
        pgqueuer = bench.PgQueuer(f"{dsn}/paths_pgqueuer", logdir)
        systems = [omniq, pgqueuer]
        for system in systems:
            await system.open()
            await system.install()
        ceiling = await asyncpg.connect(f"{dsn}/paths_ceiling")
        await ceiling.execute(bench.CEILING_SCHEMA)
        runs = await paths(omniq, pgqueuer, ceiling, args.jobs)
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for n in range(args.rounds):
            # Each round starts one path later: no path always follows pgqueuer's process exit.
            for name in names[n % len(names) :] + names[: n % len(names)]:
                seconds[name].append(await runs[name]())
            for system in systems:
                await system.reset()
            await ceiling.execute("TRUNCATE jobs")
            rates = ", ".join(f"{args.jobs / s[-1]:,.0f}" for s in seconds.values())
            print(f"round {n + 1}/{args.rounds}: {rates} jobs/s", flush=True)
    finally:
        if ceiling is not None:
            await ceiling.close()
        for system in systems:
            await system.close()
        await admin.close()
        await asyncio.to_thread(server.stop)
    return {"jobs": args.jobs, "rounds": args.rounds, "seconds": seconds}


def render(report: dict[str, Any]) -> str:
    jobs, seconds = report["jobs"], report["seconds"]
    peer = seconds["pgqueuer (its driver)"]
    top = seconds["the same row, top-level statement"]
    lines = [
        f"{'path':36} {'jobs/s':>8}  {'/ pgqueuer, per round':>26}  {'µs/call over top-level':>22}"
    ]
    for name, runs in seconds.items():
        ratios = sorted(p / s for s, p in zip(runs, peer, strict=True))
        extra = statistics.median((s - t) / jobs * 1e6 for s, t in zip(runs, top, strict=True))
        lines.append(
            f"{name:36} {statistics.median(jobs / s for s in runs):8,.0f}  "
            f"{statistics.median(ratios):9.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}x)      "
            f"{extra:+18.0f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="rounds of every path (default 9)")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per path and round")
    parser.add_argument("--json", type=Path, help="also write the seconds to this file")
    args = parser.parse_args()
    report = asyncio.run(amain(args))
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
