"""The bare queue of scripts/bench.py: a job queue reduced to its two commits, whose
enqueue-to-start latency is the floor the real systems are measured against.

    python bench_floor.py DSN STAMP_FILE

It works on the ``jobs`` table of the benchmark's ceiling database (bench.CEILING_SCHEMA:
an INSERT's per-statement trigger sends NOTIFY 'jobs'). It LISTENs on one asyncpg connection
and, once listening and whenever woken, takes jobs one by one on another: a prepared ``DELETE ... FOR UPDATE SKIP
LOCKED ... RETURNING``, its own durable commit, the least a dequeue that two workers cannot
both win can be. Each job's payload is the time it was enqueued (``time.time()``); for each
job taken it appends "<enqueued_at> <started_at>" to STAMP_FILE. No pool, no retries, no
results, no events, no heartbeats. It prints "ready" once listening and runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg

TAKE = """
DELETE FROM jobs
WHERE id = (SELECT id FROM jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING payload::text
"""


async def main(dsn: str, stamp_file: str) -> None:
    listening = await asyncpg.connect(dsn)
    working = await asyncpg.connect(dsn)
    take = await working.prepare(TAKE)
    woken = asyncio.Event()
    await listening.add_listener("jobs", lambda *_: woken.set())
    woken.set()  # listening now: take what was enqueued before (the bench does not wait for us)
    print("ready", flush=True)
    with open(stamp_file, "a") as stamps:
        while True:
            await woken.wait()
            woken.clear()
            while (payload := await take.fetchval()) is not None:
                stamps.write(f"{payload} {time.time()!r}\n")
                stamps.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
