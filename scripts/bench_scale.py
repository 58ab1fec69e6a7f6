"""How far one PostgreSQL goes: processing with more worker processes, and through PgBouncer.

    scripts/bench_scale [--jobs 10000] [--processes 1,2,4,8] [--concurrency 10]
                        [--bouncer 16x4] [--pool-size 20] [--json FILE]

It starts its own durable PostgreSQL (omniq.embedded) and, for each configuration, enqueues
``--jobs`` no-op jobs (one ``enqueue_many``), ANALYZEs and CHECKPOINTs, then starts the worker
processes (``omniq worker --burst --no-scheduler``) and waits for them to drain the queue.
The configurations: each count of ``--processes`` at ``--concurrency`` each, connecting
directly; then ``--bouncer PxC`` (default 16 processes x concurrency 4) through a real PgBouncer
in transaction pooling mode (Debian's /usr/sbin/pgbouncer, ``--pool-size`` server connections),
LISTEN going directly to PostgreSQL (``--listen-dsn``, as the README's PgBouncer section says).

For each it prints:

- jobs/s: jobs over the time from starting the processes to the last result written
  (process start-up included, as in scripts/bench);
- PostgreSQL CPU seconds per 1,000 jobs: user + system time of the postmaster and all its
  processes (/proc/<pid>/stat; the time of backends that exited is in the postmaster's
  cutime/cstime), before and after;
- statements per job (pg_stat_statements, where the server has it), WAL bytes per job
  (pg_current_wal_lsn()), and the server connections at the peak.

Timings need a quiet machine: run it alone. Tiny counts (``--jobs 200 --processes 1,2
--bouncer 2x2``) only check that it works.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: the OmniQ system, worker processes, WAL, server CPU)


@dataclass(frozen=True)
class Config:
    name: str
    processes: int
    concurrency: int
    bouncer: bool = False


@contextlib.contextmanager
def pgbouncer(port: int, database: str, pool_size: int, clients: int) -> Iterator[str]:
    """A PgBouncer in transaction pooling mode in front of 127.0.0.1:``port``; its DSN."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(binary, os.X_OK):
        raise SystemExit("PgBouncer is not installed (apt-get install pgbouncer)")
    home = Path(tempfile.mkdtemp(prefix="omniq-bench-bouncer-", dir="/tmp"))
    home.chmod(0o755)
    listen = _free_port()
    (home / "userlist.txt").write_text('"postgres" ""\n')
    (home / "pgbouncer.ini").write_text(
        f"[databases]\n{database} = host=127.0.0.1 port={port} dbname={database}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {home / 'userlist.txt'}\npool_mode = transaction\n"
        f"default_pool_size = {pool_size}\nmax_client_conn = {clients}\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {home / 'pgbouncer.log'}\npidfile = {home / 'pgbouncer.pid'}\n"
    )
    root = os.geteuid() == 0  # PgBouncer refuses to run as root: it runs as postgres
    if root:
        user = pwd.getpwnam("postgres")
        for path in [home, *home.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    argv = [binary, *(["-u", "postgres"] if root else []), str(home / "pgbouncer.ini")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd="/")
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", listen), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"PgBouncer did not start: {home / 'pgbouncer.log'}")
            time.sleep(0.1)
        yield f"postgresql://postgres@127.0.0.1:{listen}/{database}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(home, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_argv(dsn: str, listen_dsn: str | None, concurrency: int) -> list[str]:
    argv = [sys.executable, "-m", "omniq", "worker", "--dsn", dsn, "-q", "--burst"]
    argv += ["--no-scheduler", "--concurrency", str(concurrency)]
    return argv + (["--listen-dsn", listen_dsn] if listen_dsn else [])


async def measure(
    admin: asyncpg.Connection,
    omniq: bench.OmniQ,
    postmaster: int,
    config: Config,
    jobs: int,
    bouncer_dsn: str | None,
) -> dict[str, Any]:
    await omniq.reset()
    await omniq.fill(jobs)
    await omniq.db.execute("ANALYZE")
    await admin.execute("CHECKPOINT")
    statements = await admin.fetchval(
        "SELECT count(*) > 0 FROM pg_extension WHERE extname = 'pg_stat_statements'"
    )
    if statements:
        await admin.execute("SELECT pg_stat_statements_reset()")
    lsn = await bench.wal_lsn(admin)
    cpu = bench.server_cpu(postmaster)
    dsn = bouncer_dsn or omniq.dsn
    argv = worker_argv(dsn, omniq.dsn if bouncer_dsn else None, config.concurrency)
    stem = omniq.logdir / f"scale-{config.name}"
    workers = bench.Workers((argv, bench.clean_env(), bench.SCRIPTS), config.processes, stem)
    t0 = time.time()
    await workers.start()
    peak = 0
    waiting = asyncio.ensure_future(workers.wait(600))
    while not waiting.done():
        peak = max(
            peak,
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ),
        )
        await asyncio.wait([waiting], timeout=0.5)
    codes = waiting.result()
    await asyncio.sleep(0.5)  # the backends of exited workers are reaped
    ok, bad, last, _ = await omniq.completed_since(t0)
    if any(codes) or ok < jobs or last is None:
        raise SystemExit(f"{config.name}: {ok} of {jobs} done, exit codes {codes}: "
                         f"{workers.log_tail()}")  # fmt: skip
    out: dict[str, Any] = {
        "config": config.name,
        "processes": config.processes,
        "concurrency": config.concurrency,
        "through_pgbouncer": config.bouncer,
        "jobs": jobs,
        "jobs_per_s": round(jobs / (last - t0)),
        "pg_cpu_s_per_1000_jobs": round((bench.server_cpu(postmaster) - cpu) * 1000 / jobs, 3),
        "wal_bytes_per_job": round(await bench.wal_since(admin, lsn) / jobs),
        "peak_server_connections": peak,
    }
    if statements:
        calls = await admin.fetchval(
            "SELECT sum(s.calls) FROM pg_stat_statements AS s "
            "JOIN pg_database AS d ON d.oid = s.dbid WHERE d.datname = 'omniq'"
        )
        out["statements_per_job"] = round(float(calls or 0) / jobs, 3)
    return out


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    configs = [Config(f"{p}x{args.concurrency}", p, args.concurrency) for p in args.processes]
    if args.bouncer:
        p, c = (int(x) for x in args.bouncer.split("x"))
        configs.append(Config(f"{p}x{c} via PgBouncer", p, c, bouncer=True))
    server = bench.EmbeddedPostgres(durable=True)
    await asyncio.to_thread(server.start)
    logdir = bench.RESULTS / f"scale-{time.strftime('%Y%m%d-%H%M%S')}-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/postgres")
    omniq = bench.OmniQ(server.dsn, logdir)
    rows = []
    try:
        with contextlib.suppress(asyncpg.PostgresError):
            await admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await omniq.open()
        await omniq.install()
        clients = max(c.processes * (c.concurrency + 4) for c in configs) + 20
        with pgbouncer(server.port, "omniq", args.pool_size, clients) as bouncer_dsn:
            for config in configs:
                row = await measure(
                    admin, omniq, postmaster, config, args.jobs,
                    bouncer_dsn if config.bouncer else None,
                )  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        await omniq.close()
        await admin.close()
        await asyncio.to_thread(server.stop)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per configuration")
    parser.add_argument("--processes", default="1,2,4,8", help="worker process counts")
    parser.add_argument("--concurrency", type=int, default=10, help="per process, direct")
    parser.add_argument(
        "--bouncer", default="16x4", help="PROCESSESxCONCURRENCY through PgBouncer ('' for none)"
    )
    parser.add_argument("--pool-size", type=int, default=20, help="PgBouncer server connections")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    args.processes = [int(p) for p in args.processes.split(",") if p.strip()]
    rows = asyncio.run(amain(args))
    head = ["config", "jobs/s", "PG CPU s/1000 jobs", "statements/job", "WAL B/job", "peak conns"]
    print("\n" + " | ".join(head))
    for r in rows:
        cells = [r["config"], r["jobs_per_s"], r["pg_cpu_s_per_1000_jobs"],
                 r.get("statements_per_job", "n/a"), r["wal_bytes_per_job"],
                 r["peak_server_connections"]]  # fmt: skip
        print(" | ".join(str(c) for c in cells))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
