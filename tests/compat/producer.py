"""Enqueue the compatibility test's tasks with whichever OmniQ runs this script (either release),
through the public API only (create_async_postgres_backend, Task, enqueue).

    python producer.py DSN SCHEMA SIDE [PARENT_ID ...]

Each PARENT_ID (a task the other release enqueued) gets a child that depends on it. Prints one
JSON object: the tasks enqueued ({id, key, kind, queue}) and the ids offered as parents to the
other release.
"""

from __future__ import annotations

import asyncio
import json
import sys

from omniq.backend.postgres import create_async_postgres_backend
from omniq.models.task import Task

QUEUES = ("compat-old", "compat-new", "compat-shared")  # old worker, HEAD worker, both


async def main(dsn: str, schema: str, side: str, parents: list[str]) -> None:
    tasks: list[tuple[str, Task]] = []

    def add(kind: str, func: str, **settings: object) -> Task:
        key = f"{side}-{kind}-{len(tasks)}"
        queue = QUEUES[len(tasks) % len(QUEUES)]
        task = Task(func=f"compat_jobs.{func}", args=[key], queue_name=queue, **settings)  # type: ignore[arg-type]
        tasks.append((kind, task))
        return task

    for _ in range(30):
        add("plain", "plain")
    for _ in range(10):
        parent = add("parent", "plain")
        add("child", "plain", dependencies=[parent.id])
    for _ in range(10):
        add("with-callback", "plain", callbacks={"on_success": "compat_jobs.callback"})
    for _ in range(10):
        add("retried", "flaky", max_retries=3, retry_delay=0.1)
    for parent_id in parents:  # the other release's tasks
        add("child-of-other", "plain", dependencies=[parent_id])

    backend = create_async_postgres_backend(dsn=dsn, schema=schema, max_connections=2)
    async with backend:
        for _, task in tasks:
            await backend.task_queue.enqueue(task)
    plain = [t.id for kind, t in tasks if kind == "plain"]
    print(
        json.dumps(
            {
                "tasks": [
                    {"id": t.id, "key": t.args[0], "kind": kind, "queue": t.queue_name}
                    for kind, t in tasks
                ],
                "parents": plain[:5],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
