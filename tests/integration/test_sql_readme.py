"""Every ```sql example of sql/README.md runs in psql, in order, in one session, against a real
installation holding a few tasks of every kind. (```psql blocks are shown, not run: \\watch
loops forever, role creation needs passwords.)
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import Registration, WorkerProtocol
from omniq.embedded import find_bindir
from omniq.identifiers import quote_identifier
from omniq.models.config import PostgresConfig
from omniq.models.schedule import Schedule
from omniq.models.task import Task
from tests.support.contrib import server_has
from tests.support.db import ExternalServer, drop_schemas, unique_schema
from tests.support.outcomes import outcome

README = Path(__file__).resolve().parents[2] / "sql" / "README.md"
SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list[str]:
    """The ```sql blocks; not the auto_explain one where the server has no auto_explain (it runs
    on PostgreSQL 15: tests/support/contrib.py)."""
    blocks = SQL_BLOCK.findall(README.read_text())
    return [b for b in blocks if server_has("auto_explain") or "auto_explain" not in b]


def test_the_guide_has_examples() -> None:
    blocks = examples()
    assert len(blocks) >= 15
    text = "\n".join(blocks)
    for needed in ("omniq_queue_overview", "omniq_requeue_stalled", "omniq_retry_tasks",
                   "omniq_cancel_tasks", "omniq_purge", "omniq_cleanup_expired_tasks",
                   "omniq_cleanup_expired_results", "omniq_cleanup_old_events",
                   "omniq_cleanup_expired_schedules", "omniq_pause_schedule",
                   "omniq_resume_schedule", "omniq_add_task"):  # fmt: skip
        assert needed in text, needed


@pytest.fixture
async def installation(pg_server: Any, pg_dsn: str) -> AsyncIterator[str]:
    """A schema with a failed, a stalled, an old finished task, a worker and a schedule."""
    if isinstance(pg_server, ExternalServer):
        pytest.skip("uses auto_explain and psql from the embedded server's bindir")
    name = unique_schema("readme")
    backend = PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=name, max_connections=2))
    try:
        await backend.connect()
        queue, protocol = backend.task_queue, WorkerProtocol(backend)
        failing = Task(func="app.mail.send", args=("x@example.com",), queue_name="emails",
                       max_retries=0)  # fmt: skip
        old = Task(func="app.reports.build", created_at=datetime.now(UTC) - timedelta(days=40))
        stalled = Task(func="app.slow.crunch")
        await queue.enqueue_many([failing, old, stalled])
        await protocol.heartbeat(Registration("w-readme", "db-host", 4242, ["emails"], 4))
        (taken,) = await queue.dequeue_many("emails", 1, worker_id="w-readme")
        refused = outcome(taken, "failure", error="SMTP refused", error_type="SMTPError")
        await protocol.finish([refused], "w-readme")
        for task in await queue.dequeue_many("default", 2, worker_id="w-readme"):
            if task.id == old.id:
                await protocol.finish([outcome(task, "success")], "w-readme")
        async with backend.acquire() as conn:  # the crunch has been running for two hours
            await conn.execute(
                f"UPDATE {quote_identifier(name)}.tasks SET started_at = now() - interval '2 hours'"  # noqa: S608
                " WHERE id = $1",
                stalled.id,
            )
        await backend.schedule_storage.save_schedule(
            Schedule(id="nightly-report", func="app.reports.nightly", cron_expression="0 3 * * *")
        )
    finally:
        await backend.close()
    yield name
    await drop_schemas(pg_dsn, name)


def test_every_example_runs_in_psql(installation: str, pg_dsn: str, tmp_path: Path) -> None:
    script = tmp_path / "readme.sql"
    script.write_text(
        "\\set ON_ERROR_STOP on\n"
        f"SET search_path TO {quote_identifier(installation)};\n\n" + "\n".join(examples())
    )
    proc = subprocess.run(
        [str(find_bindir() / "psql"), "-X", "-d", pg_dsn, "-f", str(script)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr, proc.stderr
    out = proc.stdout
    assert 'Asynchronous notification "omniq_tasks_' in out  # the LISTEN example
    assert "omniq_purge: deleted 1 finished tasks" in proc.stderr  # the 40-day-old task
    if server_has("auto_explain"):
        assert "tasks_pending_idx" in proc.stderr  # the auto_explain example: the ready-task query
    assert "SMTP refused" in out  # the newest failures
