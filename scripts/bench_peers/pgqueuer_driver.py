"""pgqueuer side of scripts/bench.py; runs with the peers' virtualenv python.

    python pgqueuer_driver.py install | enqueue-single N | enqueue-batch N | fill N
    python pgqueuer_driver.py latency N INTERVAL
    python pgqueuer_driver.py worker BATCH_SIZE continuous|drain

The worker is what `pgq run pgqueuer_driver:factory --batch-size 10 [--mode drain]` runs:
the CLI's own event loop (uvloop) and supervisor, ``pgqueuer.run()``. The CLI itself is not
used because `pgq run` of pgqueuer 1.6.0 dies at start with typer 0.29 (its --log-level
option reaches setup_fancy_logger as a str: "AttributeError: 'str' object has no attribute
'name'"); going around it also leaves pgqueuer's log level at WARNING (Python's default).

$BENCH_DSN names the database. Commands print one JSON line. The ``stamp`` job appends
"<enqueued_at> <started_at>" to $BENCH_STAMP_FILE (pgqueuer keeps no job results).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pgqueuer
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.adapters.cli.cli import asyncio_run
from pgqueuer.domain.types import QueueExecutionMode
from pgqueuer.models import Job

DSN = os.environ["BENCH_DSN"]


@asynccontextmanager
async def factory() -> AsyncIterator[QueueManager]:
    """The consumer `pgq run` starts: one asyncpg connection, as pgqueuer's docs do.

    A QueueManager alone, not a PgQueuer: the benchmark has no schedules, and PgQueuer's
    SchedulerManager would poll for them once a second (10 statements per idle 10 s).
    """
    conn = await asyncpg.connect(DSN)
    pgq = QueueManager(Queries(AsyncpgDriver(conn)))
    stamps = os.open(
        os.environ.get("BENCH_STAMP_FILE", os.devnull), os.O_WRONLY | os.O_APPEND | os.O_CREAT
    )

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        pass

    @pgq.entrypoint("stamp")
    async def stamp(job: Job) -> None:
        started = time.time()
        os.write(stamps, f"{(job.payload or b'').decode()} {started!r}\n".encode())

    try:
        yield pgq
    finally:
        os.close(stamps)
        await conn.close()


async def main(cmd: str, *args: str) -> dict[str, object]:
    conn = await asyncpg.connect(DSN)
    try:
        q = Queries(AsyncpgDriver(conn))
        if cmd == "install":
            await q.install()
            return {}
        n = int(args[0])
        t0 = time.perf_counter()
        if cmd == "enqueue-single":
            for _ in range(n):
                await q.enqueue("noop", None, 0)
        elif cmd in ("enqueue-batch", "fill"):
            await q.enqueue(["noop"] * n, [None] * n, [0] * n)
        elif cmd == "latency":
            for _ in range(n):
                await q.enqueue("stamp", repr(time.time()).encode(), 0)
                await asyncio.sleep(float(args[1]))
        else:
            raise SystemExit(f"unknown command {cmd!r}")
        return {"seconds": time.perf_counter() - t0}
    finally:
        await conn.close()


def worker(batch_size: str, mode: str) -> None:
    asyncio_run(pgqueuer.run(factory, batch_size=int(batch_size), mode=QueueExecutionMode(mode)))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        sys.exit(worker(*sys.argv[2:]))
    print(json.dumps(asyncio.run(main(*sys.argv[1:]))))
