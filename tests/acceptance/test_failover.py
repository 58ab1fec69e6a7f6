"""Failover to a streaming standby under load, with a multi-host DSN (issue 9, defect 10).

A PostgreSQL 15 primary and a synchronous streaming standby (``pg_basebackup -R``); a producer
enqueues one task at a time while two worker processes run them, all through
``postgresql://...@primary,standby/omniq?target_session_attrs=read-write``. The primary is
stopped with ``-m immediate`` and the standby promoted. The producer follows the README's retry
policy; the workers reconnect by themselves. Every acknowledged enqueue must complete exactly
once (one success result, one ``completed`` status), and no task may stay held.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.embedded import EmbeddedPostgres
from omniq.models.config import PostgresConfig
from tests.support.db import Database, unique_schema
from tests.support.fault_jobs import runs
from tests.support.faults import produce_through, report, server_base
from tests.support.processes import Processes, wait_until

pytestmark = pytest.mark.timeout(240)

LIVENESS = ("--heartbeat", "0.5", "--worker-timeout", "5")


@pytest.fixture
def pair() -> Iterator[tuple[EmbeddedPostgres, EmbeddedPostgres]]:
    """A primary and its synchronous streaming standby, both running."""
    base = server_base("omniq-failover-")
    primary = EmbeddedPostgres(base / "primary", durable=True)
    standby: EmbeddedPostgres | None = None
    try:
        primary.start()
        standby = primary.standby(base / "standby")
        standby.start()
        asyncio.run(_make_synchronous(primary.dsn))
        yield primary, standby
    finally:
        for server in (standby, primary):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


async def _make_synchronous(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        await conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while (
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"
            )
            != 1
        ):
            assert time.monotonic() < deadline, "the standby never became synchronous"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def test_failover_to_a_promoted_standby_completes_every_acknowledged_task_once(
    pair: tuple[EmbeddedPostgres, EmbeddedPostgres], tmp_path: Path, record_property
) -> None:
    primary, standby = pair
    dsn = (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/omniq"
        "?target_session_attrs=read-write"
    )
    total, fail_over_after = 250, 80
    path = str(tmp_path / "runs.log")
    config = PostgresConfig(dsn=dsn, schema=unique_schema("failover"), max_connections=2,
                            connect_timeout=3.0, acquire_timeout=10.0)  # fmt: skip
    producer = PostgreSQLBackend(config)
    await producer.connect()
    processes = Processes(dsn, config.schema, tmp_path)
    try:
        workers = [
            await processes.worker("--concurrency", "4", "--no-scheduler", *LIVENESS)
            for _ in range(2)
        ]

        def fail_over() -> None:
            primary.stop("immediate")
            standby.promote()

        acked, errors, replies_lost, switch = await produce_through(
            producer, path, total, fail_over_after, fail_over
        )
        assert errors, "the producer never noticed the failover"
        assert all(isinstance(e, ConnectionError) for e in errors), errors

        async with contextlib.AsyncExitStack() as stack:
            admin = await asyncpg.connect(standby.dsn)
            stack.push_async_callback(admin.close)
            db = Database(admin, config)

            async def done() -> bool:
                return await db.count("results", "status = 'success'") >= len(acked)

            await wait_until(done, 120, "every acknowledged task to complete", workers[0], 0.5)
            assert all(w.alive() for w in workers), [w.output()[-3000:] for w in workers]
            results = {r["task_id"]: r for r in await db.rows("results")}
            lost = [i for i in acked if results.get(i, {}).get("status") != "success"]
            assert lost == []
            assert {r["id"] for r in await db.rows("tasks")} == set(acked)
            assert Counter(r["status"] for r in await db.rows("tasks")) == {"completed": len(acked)}
            # a worker's success stores no event (issue 12): its result row is the record
            assert await db.count("events", "event_type = 'completed'") == 0
            logs = "".join(w.output() for w in workers)
            assert "ValueError" not in logs and "Port could not be cast" not in logs
            assert "discarded" not in logs
            ran = runs(path)
            report(record_property, "failover", pushed=len(acked), completed=len(acked),
                   lost=len(lost), duplicated_runs=sum(len(p) - 1 for p in ran.values()),
                   producer_errors=len(errors), replies_lost_then_duplicate=replies_lost,
                   switch_seconds=round(switch, 1),
                   outcome_retries=logs.count("outcome(s) failed"),
                   first_error=f"{type(errors[0]).__name__}: {errors[0]}"[:160])  # fmt: skip
    finally:
        processes.kill_all()
        await producer.close()
