"""What a job costs on disk, measured deterministically: WAL bytes and table + index bytes per job.

    scripts/bench_storage [--jobs 2000] [--peers] [--json FILE]

Unlike the throughput figures of scripts/bench, these do not depend on the machine's load, so
this runs anywhere, any time (about 20 s). It starts its own durable PostgreSQL with autovacuum
off (a vacuum in the middle would add WAL of its own), then for each system: empties its
tables, CHECKPOINTs, enqueues ``--jobs`` no-op jobs in one batch (OmniQ ``enqueue_many``,
pgqueuer ``Queries.enqueue`` with lists), and runs one burst worker process until the queue
is empty. It prints, per job:

- WAL bytes (``pg_current_wal_lsn()`` before and after, the whole server; nothing else runs),
  for the enqueue and for the processing, and by record type (pg_walinspect, where the
  server has it): heap inserts, updates and locks, index inserts, commits, full-page images;
- rows left in each table, and bytes on disk (heap, indexes, TOAST), dead rows included: what
  the jobs leave until vacuum and retention;
- statements executed (pg_stat_statements, where the server has it);
- for OmniQ, the events stored, by type.

scripts/bench reports the same two figures (``wal_per_job``, ``bytes_per_job``) for its
10,000-job, 1-process run, next to pgqueuer's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: the systems, their drivers and worker commands)

SETTINGS = {"autovacuum": "off", "checkpoint_timeout": "1h", "max_wal_size": "4GB"}


async def measure(admin: asyncpg.Connection, system: bench.System, jobs: int) -> dict[str, Any]:
    """Enqueue ``jobs`` no-ops, process them with one burst worker; what it wrote."""
    await system.reset()
    await admin.execute("CHECKPOINT")
    walinspect = await admin.fetchval(
        "SELECT count(*) > 0 FROM pg_extension WHERE extname = 'pg_walinspect'"
    )
    statements = await admin.fetchval(
        "SELECT count(*) > 0 FROM pg_extension WHERE extname = 'pg_stat_statements'"
    )
    if statements:
        await admin.execute("SELECT pg_stat_statements_reset()")
    start = await bench.wal_lsn(admin)
    await system.fill(jobs)
    enqueued = await bench.wal_lsn(admin)
    workers = bench.Workers(system.worker(burst=True), 1, system.logdir / f"{system.name}-storage")
    await workers.start()
    codes = await workers.wait(300)
    if any(codes):
        raise SystemExit(f"{system.name}: worker exited {codes}: {workers.log_tail()}")
    left = await system.unfinished()
    if left:
        raise SystemExit(f"{system.name}: {left} jobs unfinished after the burst worker exited")
    end = await bench.wal_lsn(admin)
    wal = {"enqueue": enqueued - start, "process": end - enqueued}
    out: dict[str, Any] = {
        "jobs": jobs,
        "wal_per_job": {k: round(float(v) / jobs) for k, v in wal.items()},
        "tables": await system.storage(),
    }
    out["wal_per_job"]["total"] = sum(out["wal_per_job"].values())
    disk = sum(t["heap"] + t["indexes"] + t["toast"] for t in out["tables"].values())
    out["bytes_per_job"] = round(disk / jobs)
    out["rows_per_job"] = {k: round(t["rows"] / jobs, 2) for k, t in out["tables"].items()}
    if walinspect:
        rows = await admin.fetch(
            'SELECT "resource_manager/record_type" AS resource_manager, count, record_size, '
            "fpi_size "
            "FROM pg_get_wal_stats($1::text::pg_lsn, $2::text::pg_lsn, true) WHERE count > 0 "
            "ORDER BY record_size + fpi_size DESC",
            _lsn(start),
            _lsn(end),
        )
        out["wal_by_rmgr_per_job"] = {
            r["resource_manager"]: {
                "records": round(r["count"] / jobs, 2),
                "bytes": round((r["record_size"] + r["fpi_size"]) / jobs),
                "fpi_bytes": round(r["fpi_size"] / jobs),
            }
            for r in rows
        }
    if statements:
        calls = await admin.fetchval(
            "SELECT sum(s.calls) FROM pg_stat_statements AS s "
            "JOIN pg_database AS d ON d.oid = s.dbid WHERE d.datname = $1",
            system.dsn.rsplit("/", 1)[1],
        )
        out["statements_per_job"] = round(float(calls or 0) / jobs, 3)
    if isinstance(system, bench.OmniQ):
        kinds = await system.db.fetch(
            "SELECT event_type, count(*) AS n FROM events GROUP BY 1 ORDER BY 2 DESC, 1"
        )
        out["events_per_job"] = {r["event_type"]: round(r["n"] / jobs, 2) for r in kinds}
    return out


def _lsn(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def render(report: dict[str, Any]) -> str:
    lines = []
    for name, r in report["systems"].items():
        w = r["wal_per_job"]
        lines.append(
            f"{name}: {r['jobs']:,} jobs; WAL/job {w['total']:,} B (enqueue {w['enqueue']:,}, "
            f"process {w['process']:,}); on disk/job {r['bytes_per_job']:,} B"
            + (f"; statements/job {r['statements_per_job']}" if "statements_per_job" in r else "")
        )
        for table, t in r["tables"].items():
            lines.append(
                f"  {table:22} rows/job {t['rows'] / r['jobs']:5.2f}  heap {t['heap'] / r['jobs']:7,.0f}"
                f"  indexes {t['indexes'] / r['jobs']:7,.0f}  toast {t['toast'] / r['jobs']:5,.0f} B/job"
            )
        for rmgr, b in r.get("wal_by_rmgr_per_job", {}).items():
            lines.append(
                f"  WAL {rmgr:24} records/job {b['records']:5.2f}  {b['bytes']:6,} B/job"
                f" (full-page images {b['fpi_bytes']:,})"
            )
        if "events_per_job" in r:
            lines.append(f"  events/job {r['events_per_job']}")
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    classes: list[type[bench.System]] = [bench.OmniQ]
    if args.peers:
        await asyncio.to_thread(bench.ensure_peers_venv)
        classes.append(bench.PgQueuer)
    server = bench.EmbeddedPostgres(durable=True, extra_settings=SETTINGS)
    await asyncio.to_thread(server.start)
    logdir = bench.RESULTS / f"storage-{time.strftime('%Y%m%d-%H%M%S')}-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    dsn = f"postgresql://postgres@127.0.0.1:{server.port}"
    admin = await asyncpg.connect(f"{dsn}/postgres")
    report: dict[str, Any] = {"settings": SETTINGS, "systems": {}}
    try:
        for ext in ("pg_walinspect", "pg_stat_statements"):
            try:
                await admin.execute(f"CREATE EXTENSION IF NOT EXISTS {ext}")
            except asyncpg.PostgresError as exc:
                print(f"(no {ext}: {exc})", file=sys.stderr)
        report["server_version"] = await admin.fetchval("SHOW server_version")
        for cls in classes:
            await admin.execute(f'CREATE DATABASE "storage_{cls.name}"')
            system = cls(f"{dsn}/storage_{cls.name}", logdir)
            await system.open()
            try:
                await system.install()
                if isinstance(system, bench.PgQueuer):
                    system.version = bench.PEERS_VENV.name
                report["systems"][cls.name] = await measure(admin, system, args.jobs)
            finally:
                await system.close()
    finally:
        await admin.close()
        await asyncio.to_thread(server.stop)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs enqueued and processed")
    parser.add_argument("--peers", action="store_true", help="also pgqueuer (.bench-venv/peers)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    report = asyncio.run(amain(args))
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
