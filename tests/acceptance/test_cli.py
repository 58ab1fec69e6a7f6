"""The omniq command line, run for real: ``python -m omniq ...`` in subprocesses against the
test server, each test on a schema of its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend, create_postgres_backend, schema
from omniq.backend.postgres.protocol import Registration, WorkerProtocol
from omniq.backend.postgres.sqlfiles import SQLFiles
from omniq.cli import build_parser, main
from omniq.embedded import find_bindir
from omniq.identifiers import quote_identifier
from omniq.models import Task, TaskEvent, TaskResult
from omniq.models.config import PostgresConfig
from tests.support.db import drop_schemas, run_in_thread, unique_schema
from tests.support.processes import REPO

UNREACHABLE = "postgresql://bob:s3cret-pw@127.0.0.1:1/nowhere"
LATEST = max(int(s.name.split("/")[1][:4]) for s in SQLFiles().migration_scripts)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "OMNIQ_")) or k == "PGTZ"}
    env.update(extra)
    return env


@dataclass
class CLI:
    """Runs ``python -m omniq`` with OMNIQ_DSN and OMNIQ_SCHEMA pointing at this test's schema."""

    dsn: str
    schema: str
    cwd: Path

    def env(self) -> dict[str, str]:
        return clean_env(OMNIQ_DSN=self.dsn, OMNIQ_SCHEMA=self.schema)

    def __call__(
        self, *args: str, code: int | None = 0, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "omniq", *args],
            capture_output=True,
            text=True,
            env=kw.pop("env", None) or self.env(),
            cwd=self.cwd,
            timeout=60,
            **kw,
        )
        if code is not None:
            assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
        return done

    def many(self, *commands: Any) -> list[subprocess.CompletedProcess[str]]:
        """Run independent commands at once, each ``args`` or ``(args, exit_code)``."""
        started = []
        for command in commands:
            args, code = command if isinstance(command[0], tuple) else (command, 0)
            proc = subprocess.Popen(
                [sys.executable, "-m", "omniq", *args],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env(), cwd=self.cwd,
            )  # fmt: skip
            started.append((args, code, proc))
        done = []
        for args, code, proc in started:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == code, (args, proc.returncode, out, err)
            done.append(subprocess.CompletedProcess(args, code, out, err))
        return done

    def outs(self, *commands: Any) -> list[str]:
        """The stdout of each of ``many(*commands)``."""
        return [p.stdout for p in self.many(*commands)]

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def backend(self) -> Any:
        return create_postgres_backend(dsn=self.dsn, schema=self.schema, max_connections=2)

    def install(self) -> None:
        """Create the schema's installation (read-only commands refuse to create one)."""
        with self.backend():
            pass

    def as_worker(self, act: Callable[[WorkerProtocol, PostgreSQLBackend], Awaitable[Any]]) -> Any:
        """Play a worker: ``await act(protocol, backend)`` on a backend of this schema."""

        async def main() -> Any:
            config = PostgresConfig(dsn=self.dsn, schema=self.schema, max_connections=2)
            async with PostgreSQLBackend(config) as backend:
                return await act(WorkerProtocol(backend), backend)

        return run_in_thread(main)


@pytest.fixture
def cli(pg_dsn: str, tmp_path: Path) -> Iterator[CLI]:
    runner = CLI(pg_dsn, unique_schema("cli"), tmp_path)
    yield runner
    run_in_thread(lambda: drop_schemas(pg_dsn, runner.schema))


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("omniq: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- help ------------------------------------------------------------------------------------


def command_paths() -> list[list[str]]:
    """Every command and sub-command, from the real parser."""
    paths: list[list[str]] = []

    def walk(parser: Any, prefix: list[str]) -> None:
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return paths


def test_help_of_omniq_and_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    top = subprocess.run(
        [sys.executable, "-m", "omniq", "--help"],
        capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert top.returncode == 0 and top.stderr == ""
    assert top.stdout.startswith("usage: omniq") and "Exit codes: 0 ok" in top.stdout
    paths = command_paths()
    names = {" ".join(p) for p in paths}
    for expected in (
        "enqueue", "status", "tasks", "task", "results", "events", "schedules", "retry",
        "cancel", "cleanup", "migrate", "sql", "doctor", "schedule add", "schedule pause",
        "schedule resume", "schedule remove", "worker",
    ):  # fmt: skip
        assert expected in names and expected.split()[0] in top.stdout
    for path in paths:  # in this process: the parser is the same, and it is much faster
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        out = capsys.readouterr().out
        assert exit_info.value.code == 0, path
        assert out.startswith(f"usage: omniq {' '.join(path)}"), (path, out)
        if path == ["enqueue"]:
            flat = " ".join(out.split())
            assert (
                "parsed as JSON when it is valid JSON" in flat and "else kept as a string" in flat
            )


# -- enqueue ---------------------------------------------------------------------------------


def test_enqueue_prints_the_id_and_stores_the_call(cli: CLI) -> None:
    done = cli(
        "enqueue", "app.jobs.resize", "42", "hello", '{"w": 1}', '"7"', "null", "[1, 2]",
        "--kwargs", '{"quality": 80}', "--queue", "images", "--priority", "5",
        "--max-retries", "1", "--timeout", "30", "--id", "resize-1",
    )  # fmt: skip
    assert done.stdout == "resize-1\n"
    generated, later, at = (
        out.strip()
        for out in cli.outs(
            ("enqueue", "app.jobs.ping"),
            ("enqueue", "app.jobs.ping", "--delay", "10m"),
            ("enqueue", "app.jobs.ping", "--at", "2031-02-03T04:05:06"),
        )
    )
    shown, *others = (
        json.loads(out)
        for out in cli.outs(*(("task", i, "--json") for i in ("resize-1", generated, later, at)))
    )
    task = shown["task"]
    assert task["args"] == [42, "hello", {"w": 1}, "7", None, [1, 2]]
    assert task["kwargs"] == {"quality": 80}
    assert (task["queue_name"], task["priority"], task["max_retries"]) == ("images", 5, 1)
    assert task["timeout"] == 30 and task["status"] == "pending"
    assert shown["result"] is None
    assert [e["event_type"] for e in shown["events"]] == ["enqueued"]

    assert len(generated) == 36 and others[0]["task"]["args"] == []
    run_at = datetime.fromisoformat(others[1]["task"]["run_at"])
    assert timedelta(minutes=9) < run_at - datetime.now(UTC) <= timedelta(minutes=10)
    assert others[2]["task"]["run_at"].startswith("2031-02-03T04:05:06")
    queues = {q["queue"]: q for q in cli.json("status")["queues"]}
    assert (queues["default"]["ready"], queues["default"]["scheduled_later"]) == (1, 2)


def test_enqueue_errors(cli: CLI) -> None:
    cli("enqueue", "app.jobs.ping", "--id", "twice")
    bad_json, bad_cron, bad_func, duplicate = (
        p.stderr
        for p in cli.many(
            (("enqueue", "app.jobs.ping", "--kwargs", "{not json"), 2),
            (("schedule", "add", "app.jobs.x", "--cron", "every day"), 2),
            (("enqueue", "not a function"), 1),
            (("enqueue", "app.jobs.ping", "--id", "twice"), 1),
        )
    )
    assert "omniq enqueue: error: argument --kwargs: not valid JSON" in bad_json
    assert "invalid cron expression 'every day'" in bad_cron
    assert "import path" in one_error_line(bad_func)
    assert "already exists" in one_error_line(duplicate)
    assert len(cli.json("tasks")) == 1


# -- a worker run, then everything that reads ------------------------------------------------


def test_status_lists_and_task_detail_after_a_worker_run(cli: CLI) -> None:
    ok = cli("enqueue", "operator.add", "1", "2").stdout.strip()
    bad = cli("enqueue", "json.loads", "not json", "--max-retries", "0").stdout.strip()
    cli.many(
        ("enqueue", "json.dumps", '{"a": 1}', "--queue", "other"),
        ("enqueue", "operator.add", "3", "4", "--delay", "1h"),
    )
    cli("worker", "--burst", "--queues", "default,other", "-q")

    outputs = cli.outs(
        ("status", "--json"),
        ("status",),
        ("tasks", "--status", "failed", "--json"),
        ("tasks", "--queue", "default", "--json"),
        ("tasks",),
        ("results", "--json"),
        ("results", "--status", "failure", "--json"),
        ("results",),
        ("events", "--task", ok, "--json"),
        ("events", "--type", "failed", "--json"),
        ("task", bad),
        ("task", ok, "--json"),
    )
    status, table, failed, default, listing, results, failures, result_table = outputs[:8]
    ok_events, failed_events, detail, shown = outputs[8:]

    queues = {q["queue"]: q for q in json.loads(status)["queues"]}
    assert queues["default"] | {"oldest_ready_seconds": None} == queues["default"] | {
        "ready": 0, "scheduled_later": 1, "running": 0, "failed": 1, "completed_recently": 1,
        "failed_recently": 1, "oldest_ready_seconds": None,
    }  # fmt: skip
    assert queues["other"]["completed_recently"] == 1
    assert json.loads(status)["workers"] == [] and json.loads(status)["schedules"]["next"] is None
    assert "QUEUE" in table and "DONE 1h" in table and "OLDEST READY" in table
    assert [line.split()[:7] for line in table.splitlines() if line.startswith("default")] == [
        ["default", "0", "1", "0", "0", "1", "1"]
    ]
    assert "No workers running" in table

    assert [t["id"] for t in json.loads(failed)] == [bad]
    assert {t["func"] for t in json.loads(default)} == {"operator.add", "json.loads"}
    lines = listing.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "QUEUE"] and len(lines) == 5

    by_task = {r["task_id"]: r for r in json.loads(results)}
    assert by_task[ok]["status"] == "success" and by_task[ok]["result"] == 3
    assert by_task[bad]["error_type"] == "JSONDecodeError"
    assert [r["task_id"] for r in json.loads(failures)] == [bad]
    assert "JSONDecodeError" in result_table

    assert [e["event_type"] for e in json.loads(ok_events)][0] == "completed"  # newest first
    assert {e["event_type"] for e in json.loads(failed_events)} == {"failed"}

    assert "status    failed" in detail and 'json.loads("not json")' in detail
    assert "result failure" in detail and "traceback" in detail
    history = detail[detail.index("events (oldest first)") :].splitlines()
    kinds = [line.split()[2] for line in history[2:]]
    assert kinds[0] == "enqueued" and kinds[-1] == "failed"
    assert json.loads(shown)["result"]["result"] == 3
    assert [e["event_type"] for e in json.loads(shown)["events"]][0] == "enqueued"


def test_unknown_task_is_exit_3(cli: CLI) -> None:
    cli.install()
    done = cli("task", "no-such-task", code=3)
    assert "no task with id 'no-such-task'" in one_error_line(done.stderr)
    assert done.stdout == ""


def test_filters_and_paging(cli: CLI) -> None:
    start = datetime.now(UTC) - timedelta(minutes=30)
    tasks = [
        Task(func="app.jobs.a", args=(i,), queue_name="q1", created_at=start + timedelta(minutes=i))
        for i in range(4)
    ] + [Task(func="app.jobs.b", queue_name="q2", created_at=start + timedelta(minutes=10))]
    with cli.backend() as backend:
        backend.task_queue.enqueue_many_sync(tasks)
    ids = [t.id for t in tasks[:4]]
    done = cli.many(
        ("tasks", "--queue", "q1", "--json"),
        ("tasks", "--queue", "q1", "--limit", "2", "--offset", "1", "--json"),
        ("tasks", "--limit", "2"),
        ("tasks", "--func", "app.jobs.b", "--json"),
        ("tasks", "--since", "29.5m", "--until", "2m", "--json"),
        ("tasks", "--since", start.isoformat(), "--until", "28.5m", "--json"),
        ("tasks", "--status", "failed"),
        ("events", "--task", tasks[4].id, "--queue", "q2", "--type", "enqueued", "--json"),
        ("schedules", "--json"),
        ("results",),
        ("tasks", "--offset", "10"),
    )
    assert [t["id"] for t in json.loads(done[0].stdout)] == ids[::-1]  # newest first
    assert [t["id"] for t in json.loads(done[1].stdout)] == ids[::-1][1:3]
    assert len(done[2].stdout.splitlines()) == 3 and "next page: --offset 2" in done[2].stderr
    assert [t["func"] for t in json.loads(done[3].stdout)] == ["app.jobs.b"]
    assert {t["args"][0] for t in json.loads(done[4].stdout) if t["args"]} == {1, 2, 3}
    assert [t["args"] for t in json.loads(done[5].stdout)] == [[1], [0]]
    assert done[6].stdout == "No tasks match.\n"
    assert [e["task_id"] for e in json.loads(done[7].stdout)] == [tasks[4].id]
    assert json.loads(done[8].stdout) == [] and done[9].stdout == "No results match.\n"
    assert done[10].stdout == "No tasks past offset 10.\n"


# -- retry, cancel ---------------------------------------------------------------------------


def test_retry_and_cancel(cli: CLI) -> None:
    bad = cli("enqueue", "json.loads", "nope", "--max-retries", "0").stdout.strip()
    _, later = cli.many(("worker", "--burst", "-q"), ("enqueue", "app.jobs.later", "--delay", "1h"))
    waiting = later.stdout.strip()

    done = cli("retry", bad, waiting, "missing-id", code=3)
    assert done.stdout == "retried 1 of 3 tasks\n"
    assert f"task {waiting} is pending; only failed, cancelled or expired tasks" in done.stderr
    assert "no task with id 'missing-id'" in done.stderr
    shown, every = cli.many(("task", bad, "--json"), ("retry", "--all"))
    assert json.loads(shown.stdout)["task"]["status"] == "pending"
    assert every.stdout == "retried 0 failed tasks\n"

    assert cli("cancel", waiting, bad).stdout == "cancelled 2 of 2 tasks\n"
    shown, again, missing, by_queue = cli.many(
        ("task", waiting, "--json"),
        (("cancel", waiting), 1),
        (("cancel", "missing-id"), 3),
        ("retry", "--queue", "default"),
    )
    assert json.loads(shown.stdout)["result"]["status"] == "cancelled"
    assert "is cancelled; only pending or waiting tasks can be cancelled" in again.stderr
    assert "no task with id 'missing-id'" in missing.stderr
    assert by_queue.stdout == "retried 0 failed tasks in queue default\n"
    assert cli("retry", waiting, "--func", "app.jobs.later").stdout == "retried 1 of 1 task\n"


# -- schedules -------------------------------------------------------------------------------


def test_schedule_commands(cli: CLI) -> None:
    added = cli("schedule", "add", "app.jobs.report", "1", "--cron", "0 3 1 1 *", "--id", "five")
    assert added.stdout == "five\n" and "next run" in added.stderr
    interval, _ = cli.many(
        ("schedule", "add", "app.jobs.ping", "--every", "90s", "--max-runs", "3"),
        ("schedule", "add", "app.jobs.once", "--at", "2031-01-01T00:00:00Z", "--queue", "rare"),
    )
    every = interval.stdout.strip()

    listed, crons, table, shown = cli.outs(
        ("schedules", "--json"),
        ("schedules", "--type", "cron", "--json"),
        ("schedules",),
        ("schedule", "show", "five"),
    )
    assert [s["id"] for s in json.loads(listed)][0] == every  # soonest next run first
    assert {s["schedule_type"] for s in json.loads(listed)} == {"cron", "interval", "timestamp"}
    assert [s["id"] for s in json.loads(crons)] == ["five"]
    assert "every 1m 30s" in table and "once at 2031-01-01 00:00:00" in table
    assert "cron '0 3 1 1 *'" in shown and "app.jobs.report(1)" in shown

    assert cli("schedule", "pause", "five").stdout == "schedule five paused\n"
    shown, status = cli.outs(("schedule", "show", "five", "--json"), ("status", "--json"))
    assert json.loads(shown)["status"] == "paused"
    assert json.loads(status)["schedules"]["paused"] == 1
    assert cli("schedule", "resume", "five").stdout.startswith("schedule five resumed, next run")
    assert cli("schedule", "remove", "five").stdout == "schedule five removed\n"
    *gone, status = cli.many(
        *((("schedule", action, "five"), 3) for action in ("pause", "resume", "remove", "show")),
        ("status", "--json"),
    )
    for done in gone:
        assert "no schedule with id 'five'" in one_error_line(done.stderr)
    assert json.loads(status.stdout)["schedules"]["next"]["id"] == every


def test_status_table_shows_workers_and_schedules(cli: CLI) -> None:
    cli("schedule", "add", "app.jobs.report", "--cron", "0 6 * * *", "--id", "morning")
    cli("enqueue", "app.jobs.a")
    me = Registration("worker-one", "box", 4242, ["default"], 4, version="1.2.3")
    cli.as_worker(lambda p, _: p.heartbeat(me))
    snap, text = cli.outs(("status", "--json"), ("status",))
    [worker] = json.loads(snap)["workers"]
    assert (worker["id"], worker["held"], worker["state"]) == ("worker-one", 0, "idle")
    header = next(line for line in text.splitlines() if line.startswith("WORKER"))
    assert header.split()[:4] == ["WORKER", "HOST", "PID", "VERSION"]
    row = next(line for line in text.splitlines() if line.startswith("worker-one"))
    assert row.split()[:8] == ["worker-one", "box", "4242", "1.2.3", "default", "0", "4", "idle"]
    assert "Schedules: 1 active, 0 paused, 0 due now" in text and "Next: morning" in text


def test_status_judges_each_worker_by_the_stale_after_it_registered(cli: CLI) -> None:
    """Both workers hold a task and last beat 40 s ago: the one that registered 10 s is silent
    (any worker may rescue its task now), the one that registered an hour is busy."""

    async def register(protocol: WorkerProtocol, backend: PostgreSQLBackend) -> None:
        for worker_id, stale_after in (("quick", 10), ("patient", 3600)):
            await backend.task_queue.enqueue(Task(func="app.jobs.a", queue_name=worker_id))
            me = Registration(worker_id, "box", 1, [worker_id], 1, timedelta(seconds=stale_after))
            await protocol.heartbeat(me)
            assert await backend.task_queue.dequeue(worker_id, worker_id=worker_id) is not None
        async with backend.transaction() as conn:  # both went quiet 40 s ago
            await conn.execute(
                f"UPDATE {quote_identifier(cli.schema)}.omniq_workers"  # noqa: S608
                " SET last_heartbeat = now() - interval '40 seconds'"
            )

    cli.as_worker(register)
    workers = {w["id"]: w for w in cli.json("status")["workers"]}
    assert (workers["quick"]["state"], workers["quick"]["stale_after_seconds"]) == ("silent", 10)
    assert (workers["patient"]["state"], workers["patient"]["held"]) == ("busy", 1)
    rows = {line.split()[0]: line.split() for line in cli("status").stdout.splitlines() if line}
    assert rows["quick"][7] == "silent" and rows["patient"][7] == "busy"  # VERSION: unknown


def test_status_watch_refreshes_until_ctrl_c(cli: CLI) -> None:
    cli.install()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniq", "status", "--watch", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli.env(), cwd=cli.cwd,
    )  # fmt: skip
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert proc.returncode == 0, err
    assert out.count(b"\x1b[H") >= 2 and b"refreshing every" in out and b"Traceback" not in err


def test_status_watch_json_prints_one_document_per_refresh(cli: CLI) -> None:
    cli.install()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniq", "status", "--watch", "0.2", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli.env(), cwd=cli.cwd,
    )  # fmt: skip
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    docs = [json.loads(line) for line in out.decode().splitlines()]
    assert proc.returncode == 0 and len(docs) >= 2 and all("queues" in d for d in docs)


# -- cleanup ---------------------------------------------------------------------------------


def test_cleanup_runs_all_four_and_purges_on_request(cli: CLI) -> None:
    done_id = cli("enqueue", "operator.add", "1", "1").stdout.strip()
    cli("worker", "--burst", "-q")
    old = datetime.now(UTC) - timedelta(days=40)
    with cli.backend() as backend:
        backend.event_storage.log_events_sync(
            [TaskEvent(task_id="gone", event_type="enqueued", timestamp=old) for _ in range(3)]
        )
        backend.result_storage.set_sync(
            TaskResult(task_id="stale", status="success", expires_at=old)
        )
    counts = cli.json("cleanup")
    assert counts == {
        "expired_tasks": 0, "expired_results": 1, "old_events": 3, "expired_schedules": 0,
    }  # fmt: skip
    assert cli.json("task", done_id)["task"]["status"] == "completed"

    text = cli("cleanup", "--purge-finished-older-than", "0").stdout.splitlines()
    assert text[0].split() == ["CLEANUP", "DELETED"]
    assert [line.rsplit(None, 1)[1] for line in text[1:]] == ["0", "0", "0", "0", "1"]
    assert "finished tasks older than 0 days" in text[-1]
    assert cli.json("task", done_id)["task"] is None  # its result and events stay


async def test_cleanup_reports_progress_on_long_runs(
    backend: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from omniq.backend.postgres import base
    from omniq.cli import manage
    from omniq.models.event import TaskEvent

    old = datetime.now(UTC) - timedelta(days=40)
    await backend.event_storage.log_events(
        [TaskEvent(task_id=f"t{i}", event_type="enqueued", timestamp=old) for i in range(7)]
    )
    monkeypatch.setattr(base, "CLEANUP_BATCH", 2)  # 7 rows: three full batches, then one short
    monkeypatch.setattr(manage, "PROGRESS_EVERY", 0.0)
    cutoff = datetime.now(UTC) - timedelta(days=30)
    total = await backend.event_storage.cleanup_old_events(cutoff, manage.reporter("old events"))
    assert total == 7
    assert capsys.readouterr().err.splitlines() == [
        f"omniq: old events: {n:,} deleted so far..." for n in (2, 4, 6)
    ]


# -- migrate, sql, doctor --------------------------------------------------------------------


def test_migrate_dry_run_then_apply(cli: CLI) -> None:
    dry = cli("migrate", "--dry-run").stdout.splitlines()
    assert dry[0] == "would apply migrations/0001_initial.sql"
    assert dry[-1].startswith(f'schema "{cli.schema}" is at version 0, the latest is {LATEST}')
    assert not run_in_thread(lambda: schema_exists(cli.dsn, cli.schema))  # dry: nothing created
    applied = cli("migrate").stdout.splitlines()
    assert applied[0] == "applied migrations/0001_initial.sql"
    assert applied[-1] == f'schema "{cli.schema}" is now at version {LATEST}, the latest'
    again, dry = cli.outs(("migrate",), ("migrate", "--dry-run"))
    assert (
        again == dry == f'schema "{cli.schema}" is up to date: version {LATEST}, nothing to apply\n'
    )


async def schema_exists(dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", name
        )
    finally:
        await conn.close()


def test_sql_piped_into_psql_installs_the_schema(cli: CLI) -> None:
    psql = find_bindir() / "psql"
    if not psql.exists():
        pytest.skip("no psql next to the server binaries")
    target = f"{cli.schema}_x\"y'z\\"  # a name that needs quoting, as identifier and literal
    script, fresh = cli.outs(
        ("sql", "--schema", target), ("sql", "--schema", target, "--fresh", "--dsn", UNREACHABLE)
    )
    assert script.count("BEGIN;") == 1 and script.rstrip().endswith("COMMIT;")
    assert (
        "pg_advisory_xact_lock" in script
        and f'SET LOCAL search_path TO "{cli.schema}_x""y\'z\\";' in script
    )
    assert fresh == script  # --fresh needs no server and says the same for an empty schema
    try:
        applied = subprocess.run(
            [str(psql), cli.dsn, "-q", "-X"],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert applied.returncode == 0, applied.stderr
        assert "ERROR" not in applied.stderr

        async def pending() -> list[str]:
            backend = create_postgres_backend(dsn=cli.dsn, schema=target)
            conn = await asyncpg.connect(cli.dsn)
            try:
                return [s.name for s in (await schema.plan(conn, backend.sql, target)).scripts]
            finally:
                await conn.close()

        assert run_in_thread(pending) == []
        again, migrated = cli.outs(("sql", "--schema", target), ("migrate", "--schema", target))
        assert f"is up to date (version {LATEST}): nothing to apply" in again
        assert "BEGIN" not in again
        assert migrated.endswith(f"up to date: version {LATEST}, nothing to apply\n")
        enqueued = cli("enqueue", "app.jobs.a", "--schema", target).stdout.strip()
        assert cli.json("task", enqueued, "--schema", target)["task"]["id"] == enqueued
    finally:
        run_in_thread(lambda: drop_schemas(cli.dsn, target))


def test_doctor_reports_ok_on_a_healthy_install(cli: CLI) -> None:
    cli("migrate")
    cli("enqueue", "app.jobs.a")
    out = cli("doctor").stdout
    checks = {
        line.split()[1]: line.split()[0]
        for line in out.splitlines()
        if line[:4] in ("OK  ", "WARN", "FAIL")
    }
    assert checks["connection"] == checks["schema"] == checks["listen"] == "OK"
    assert checks["privileges"] == "OK" and checks["vacuum"] == "OK" and checks["indexes"] == "OK"
    assert (
        "PostgreSQL" in out
        and "round trip of a NOTIFY" in out
        and f"version {LATEST} of {LATEST}" in out
    )
    assert out.rstrip().endswith("0 failures, 0 warnings")


def test_doctor_fails_without_privileges(cli: CLI) -> None:
    if os.environ.get("OMNIQ_TEST_DSN"):
        pytest.skip("creates a role; only on the embedded test server")
    cli("migrate")
    role = f"omniq_doctor_{uuid.uuid4().hex[:8]}"
    run_in_thread(lambda: execute(cli.dsn, f"CREATE ROLE {role} LOGIN"))
    try:
        parts = urlsplit(cli.dsn)
        as_role = parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}").geturl()
        done = cli("doctor", "--dsn", as_role, code=1)
        assert f'FAIL  privileges  no USAGE on schema "{cli.schema}"' in done.stdout
        assert f'GRANT USAGE ON SCHEMA "{cli.schema}" TO "{role}"' in done.stdout
        assert "OK    listen" in done.stdout and done.stdout.rstrip().endswith(
            "1 failure, 0 warnings"
        )
    finally:
        run_in_thread(lambda: execute(cli.dsn, f"DROP ROLE {role}"))


async def execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def test_doctor_fails_when_the_server_is_unreachable(cli: CLI) -> None:
    done = cli("doctor", "--dsn", UNREACHABLE, code=1)
    assert done.stdout.startswith(
        "FAIL  connection  cannot connect to PostgreSQL at 127.0.0.1:1/nowhere"
    )
    assert "s3cret" not in done.stdout + done.stderr


# -- connection errors and secrets -----------------------------------------------------------


def test_unreachable_server_is_one_line_without_traceback(cli: CLI) -> None:
    commands = (["status"], ["tasks"], ["enqueue", "app.jobs.a"], ["migrate"], ["sql"])
    for done in cli.many(*(((*c, "--dsn", UNREACHABLE), 1) for c in commands)):
        line = one_error_line(done.stderr)
        assert "cannot connect to PostgreSQL at 127.0.0.1:1/nowhere" in line
        assert "s3cret" not in done.stdout + done.stderr and done.stdout == ""


def test_debug_shows_the_traceback(cli: CLI) -> None:
    done = cli("--debug", "tasks", "--dsn", UNREACHABLE, code=1)
    assert "Traceback" in done.stderr
    assert "Traceback" in cli("tasks", "--debug", "--dsn", UNREACHABLE, code=1).stderr


def test_password_in_the_dsn_is_never_printed(cli: CLI) -> None:
    cli.install()
    scheme, rest = cli.dsn.split("://", 1)
    user, host = rest.split("@", 1)
    with_password = (
        f"{scheme}://{user.split(':')[0]}:hunter2-secret@{host}"  # trust auth ignores it
    )
    env = clean_env(OMNIQ_DSN=with_password, OMNIQ_SCHEMA=cli.schema)
    for args in (["status"], ["status", "--json"], ["doctor"]):
        done = cli(*args, env=env)
        assert "hunter2" not in done.stdout + done.stderr
    assert "***" in cli("status", env=env).stdout


def test_pg_variables_are_used_when_nothing_else_is_set(cli: CLI) -> None:
    cli.install()
    parts = urlsplit(cli.dsn)
    env = clean_env(
        PGHOST=parts.hostname or "", PGPORT=str(parts.port), PGUSER=parts.username or "",
        PGDATABASE=parts.path.lstrip("/"), OMNIQ_SCHEMA=cli.schema,
    )  # fmt: skip
    done = cli("status", "--json", env=env)
    assert json.loads(done.stdout)["schema"] == cli.schema
    assert json.loads(done.stdout)["server"].endswith("(from PG* variables)")
    assert "embedded" not in done.stderr


# -- issue 10, defect 9 and the migrate setting ------------------------------------------------


def test_read_only_commands_with_a_mistyped_schema_create_nothing(cli: CLI) -> None:
    cli.install()
    typo = cli.schema + "_typo"
    commands = [["status"], ["tasks"], ["results"], ["events"], ["schedules"], ["task", "x"],
                ["retry", "x"], ["cancel", "x"], ["schedule", "pause", "x"]]  # fmt: skip
    for command in commands:
        done = cli(*command, "--schema", typo, code=1)
        line = one_error_line(done.stderr)
        assert f'schema "{typo}" has no OmniQ installation' in line, (command, line)
        assert "omniq migrate" in line
    assert not run_in_thread(lambda: schema_exists(cli.dsn, typo))
    # Commands that create work install OmniQ on first use, as a worker does.
    cli("enqueue", "app.jobs.ping", "--schema", typo)
    try:
        assert cli.json("tasks", "--schema", typo)[0]["func"] == "app.jobs.ping"
    finally:
        run_in_thread(lambda: drop_schemas(cli.dsn, typo))


def test_dsn_as_a_libpq_string_and_a_malformed_one(cli: CLI) -> None:
    cli.install()
    parts = urlsplit(cli.dsn)
    dsn = f"host={parts.hostname} port={parts.port} user={parts.username} dbname={parts.path[1:]}"
    env = clean_env(OMNIQ_SCHEMA=cli.schema)
    done = cli("status", "--json", "--dsn", dsn, env=env)
    assert json.loads(done.stdout)["schema"] == cli.schema
    bad = cli("status", "--dsn", f"{dsn} sslmod=require", env=env, code=1)
    line = one_error_line(bad.stderr)
    assert "invalid dsn: unknown or unsupported setting 'sslmod'" in line


def test_task_detail_cuts_long_values_unless_full(cli: CLI) -> None:
    task = Task(func="app.jobs.big", args=("a" * 5000,))
    with cli.backend() as backend:
        backend.task_queue.enqueue_sync(task)
        backend.result_storage.set_sync(
            TaskResult(task_id=task.id, status="success", result="r" * 3_000_000)
        )
    short = cli("task", task.id).stdout
    assert len(short) < 10_000, len(short)
    assert "--full shows everything" in short and "2.9 MB in all" in short
    whole = cli("task", task.id, "--full").stdout
    assert "r" * 3_000_000 in whole and "a" * 5000 in whole


def test_burst_worker_does_not_wait_for_threads_a_task_left_running(cli: CLI) -> None:
    cli("enqueue", "tests.support.jobs.leave_thread", "600")
    done = subprocess.run(  # it would time out if the worker waited for the thread
        [sys.executable, "-m", "omniq", "worker", "--burst"], capture_output=True, text=True,
        env=cli.env(), cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "exiting without waiting for 1 thread(s) still running task code: left-by-a-task"
        in done.stderr
    )
