"""Several processes dequeue one queue at once: every task is handed out exactly once."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

from omniq.backend.postgres import PostgreSQLBackend
from omniq.models.task import Task
from tests.support.db import Database

REPO = Path(__file__).resolve().parents[2]

CONSUMER = """
import asyncio, json, os, sys
from omniq.backend.postgres import create_async_postgres_backend

async def main(dsn, schema):
    backend = create_async_postgres_backend(dsn=dsn, schema=schema, max_connections=2)
    async with backend:
        print("ready", flush=True)
        sys.stdin.readline()  # start together
        got, n = [], 0
        while True:
            n += 1
            if n % 2:
                task = await backend.task_queue.dequeue(["default"], worker_id=str(os.getpid()))
                batch = [task] if task else []
            else:
                batch = await backend.task_queue.dequeue_many(["default"], 5)
            if not batch:
                break
            got += [t.id for t in batch]
        print(json.dumps(got), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_three_processes_each_task_once(
    backend: PostgreSQLBackend, db: Database, pg_dsn: str
) -> None:
    tasks = [Task(func="m.f", args=(i,)) for i in range(600)]
    await backend.task_queue.enqueue_many(tasks)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CONSUMER,
            pg_dsn,
            backend.config.schema,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        for _ in range(3)
    ]
    try:
        for proc in procs:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)  # type: ignore[union-attr]
            assert line.strip() == b"ready", line
        for proc in procs:
            proc.stdin.write(b"go\n")  # type: ignore[union-attr]
            await proc.stdin.drain()  # type: ignore[union-attr]
        outputs = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert [p.returncode for p in procs] == [0, 0, 0]
    per_process = [json.loads(out) for out, _ in outputs]
    handed_out = Counter(i for got in per_process for i in got)
    assert sum(handed_out.values()) == 600
    assert set(handed_out) == {t.id for t in tasks}
    assert max(handed_out.values()) == 1  # nobody got a task twice
    print("\ntasks per process:", [len(g) for g in per_process])
    assert sum(1 for got in per_process if got) >= 2, [len(g) for g in per_process]
    assert await db.count("tasks", "status = 'running' AND attempts = 1") == 600
    assert await db.count("events") == 0  # handing out stores no event (issue 12)
