"""What the dashboard's HTTP and browser tests share: a running ``omniq dashboard`` and a seeded
installation to look at."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import Registration, WorkerProtocol
from omniq.models.schedule import Schedule
from omniq.models.task import Task
from tests.support.outcomes import outcome
from tests.support.processes import Processes

TOKEN = "dashboard-test-token-0123456789"


async def start(omniq: Processes, *args: str, env: dict[str, str] | None = None) -> str:
    """An ``omniq dashboard`` on a free loopback port; its base URL once it serves."""
    if env is not None:
        env = {"OMNIQ_DSN": omniq.dsn, "OMNIQ_SCHEMA": omniq.schema, **env}
    process = omniq.start("dashboard", "--bind", "127.0.0.1:0", *args, env=env)
    await process.logged("omniq dashboard on ", timeout=60)
    match = re.search(r"omniq dashboard on (http://\S+)/ ", process.output())
    assert match, process.output()
    return match.group(1)


async def seed(backend: PostgreSQLBackend) -> dict[str, str]:
    """A failed, a completed, a pending and a delayed task, a worker and a schedule."""
    q, protocol = backend.task_queue, WorkerProtocol(backend)
    failed = Task(func="app.mail.send", queue_name="mail", max_retries=0)
    done = Task(func="app.mail.send", queue_name="mail")
    await q.enqueue_many([failed, done])
    await protocol.heartbeat(Registration("w-seed", "box", 7, ["mail"], 2, version="9.8.7"))
    for task in await q.dequeue_many("mail", 2, worker_id="w-seed"):
        ended = (
            outcome(task, "failure", error="SMTP said no", error_type="SMTPError",
                    traceback="Traceback (most recent call last):\nSMTPError: SMTP said no")
            if task.id == failed.id else outcome(task, "success", {"sent": 1})
        )  # fmt: skip
        await protocol.finish([ended], "w-seed")
    pending = Task(func="app.report.build", queue_name="reports")
    later = Task(func="app.report.build", queue_name="reports",
                 run_at=datetime.now(UTC) + timedelta(hours=2))  # fmt: skip
    await q.enqueue_many([pending, later])
    await backend.schedule_storage.save_schedule(
        Schedule(id="nightly", func="app.report.nightly", cron_expression="0 3 * * *")
    )
    return {"failed": failed.id, "done": done.id, "pending": pending.id}
