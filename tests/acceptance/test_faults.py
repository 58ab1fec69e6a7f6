"""Faults for real: SIGKILLed workers, PostgreSQL crashing under load, LISTEN connections killed or
stalled, pools and statements timing out, 100,000 tasks, and data surviving an immediate shutdown.

Real worker processes (``python -m omniq worker``, tests/processes.py) and real PostgreSQL. Tests
that restart or kill the server use a server of their own (``own_server``), never the session's.
Every scenario is bounded in time and stops by itself; timings are reported (run with ``-s``),
and asserted only against generous bounds, since the machine is shared.

Figures of each scenario (tasks pushed, completed, duplicated runs, lost) are printed and stored
with ``record_property``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.listener import Listener
from omniq.embedded import EmbeddedPostgres
from omniq.errors import (
    DatabaseConnectionError,
    PoolExhaustedError,
    QueryTimeoutError,
)
from omniq.identifiers import quote_identifier
from omniq.models.config import PostgresConfig
from omniq.models.task import Task
from omniq.worker import AsyncWorker
from tests.support.db import Database, unique_schema
from tests.support.fault_jobs import runs
from tests.support.faults import produce_through, report, server_base, tasks_of
from tests.support.processes import Processes, wait_until
from tests.support.waits import LONG

pytestmark = pytest.mark.timeout(300)

# Rescue after 5 s of silence: quick enough for the tests, slow enough that a live worker on
# a busy machine never misses it (heartbeats are sent from the event loop every 0.5 s).
LIVENESS = ("--heartbeat", "0.5", "--worker-timeout", "5")


def worker_pid(worker_id: str) -> int:
    """The pid in a default worker id, ``<hostname>-<pid>-<random>``."""
    return int(worker_id.rsplit("-", 2)[1])


def with_netloc(dsn: str, *, user: str | None = None, host: str | None = None,
                port: int | None = None) -> str:  # fmt: skip
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        pytest.skip("needs a URL-style DSN")
    netloc = (user or parts.username or "postgres") + (
        f":{parts.password}" if parts.password else ""
    )
    netloc += f"@{host or parts.hostname or 'localhost'}:{port or parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


async def status_counts(db: Database) -> Counter[str]:
    return Counter(r["status"] for r in await db.rows("tasks"))


# -- a server of our own, for the tests that crash it --------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[EmbeddedPostgres]:
    """A durable PostgreSQL only these tests use; it may be restarted or killed."""
    # An explicit data dir, not a throwaway one: a failed start after kill -9 must not delete it.
    base = server_base("omniq-faults-")
    server = EmbeddedPostgres(base / "data", durable=True)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


@contextlib.asynccontextmanager
async def own_backend(
    server: EmbeddedPostgres, **settings: Any
) -> AsyncIterator[PostgreSQLBackend]:
    settings.setdefault("schema", unique_schema("fault"))
    settings.setdefault("connect_timeout", 3.0)
    settings.setdefault("acquire_timeout", 10.0)
    backend = PostgreSQLBackend(PostgresConfig(dsn=server.dsn, **settings))
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.close()


@contextlib.asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def superuser(pg_dsn: str, admin: asyncpg.Connection) -> AsyncIterator[tuple[str, str]]:
    """(role, dsn) of a login role of its own: its connections are easy to tell apart."""
    role = f"omniq_fault_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    yield role, with_netloc(pg_dsn, user=role)
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
    )
    await asyncio.sleep(0.2)
    await admin.execute(f"DROP ROLE {role}")


async def connections_of(admin: asyncpg.Connection, **where: str) -> list[asyncpg.Record]:
    """pg_stat_activity rows of one role (usename=) or one application (application_name=)."""
    ((column, value),) = where.items()
    assert column in ("usename", "application_name")
    return await admin.fetch(
        f"SELECT pid, application_name, state, query FROM pg_stat_activity WHERE {column} = $1",  # noqa: S608
        value,
    )


# -- worker SIGKILL, repeatedly, under load ------------------------------------------------------


async def test_sigkill_workers_repeatedly_under_load(
    backend: PostgreSQLBackend, db: Database, omniq: Processes, tmp_path: Path, record_property
) -> None:
    """500 tasks, 3 workers, a random busy worker SIGKILLed every second and replaced.

    Every task ends completed with one success result and one 'completed' event. Runs are
    counted in a side file: a task runs more than once only when its earlier runs were cut
    short by a SIGKILL (at-least-once), and its result comes from a worker that ran it.
    """
    n = 500
    path = str(tmp_path / "runs.log")
    tasks = tasks_of([f"t{i}" for i in range(n)], path, 0.2, max_retries=50)
    key_of = {t.id: t.args[1] for t in tasks}
    await backend.task_queue.enqueue_many(tasks)
    args = ("--concurrency", "4", "--no-scheduler", "--shutdown-grace", "2", *LIVENESS)
    workers = [await omniq.worker(*args) for _ in range(3)]
    started = time.monotonic()

    async def succeeded() -> int:
        return await db.count("results", "status = 'success'")

    killed: set[int] = set()
    rng = random.Random(6)
    while len(killed) < 10 and time.monotonic() - started < 120:
        await asyncio.sleep(1.0)
        if await succeeded() >= n - 40:
            break
        busy = [w for w in workers if w.alive() and time.time() - w.started_at > 1.5]
        if not busy:
            continue
        victim = rng.choice(busy)
        killed.add(victim.pid)
        victim.kill()  # SIGKILL: no shutdown, no release; its tasks wait for the rescue
        workers.remove(victim)
        workers.append(omniq.start("worker", *args))

    async def all_done() -> bool:
        return await succeeded() == n

    await wait_until(all_done, 180, f"{n} success results", workers[-1], interval=0.5)
    elapsed = time.monotonic() - started

    assert await status_counts(db) == {"completed": n}  # none pending, none left running
    results = await db.rows("results")
    assert len(results) == n and {r["status"] for r in results} == {"success"}
    assert {r["task_id"] for r in results} == key_of.keys()  # one result row per task

    ran = runs(path)
    assert set(ran) == set(key_of.values())
    duplicated_runs = tasks_with_duplicates = 0
    for result in results:
        pids = ran[key_of[result["task_id"]]]
        survivors = [pid for pid in pids if pid not in killed]
        assert len(survivors) <= 1, (result["task_id"], pids, killed)  # only killed runs repeat
        assert worker_pid(result["worker_id"]) in pids  # recorded by a worker that ran it
        duplicated_runs += len(pids) - 1
        tasks_with_duplicates += len(pids) > 1
    rescued = await db.count("events", "event_type = 'rescued'")
    assert len(killed) >= 3, "the tasks finished before enough workers were killed"
    assert rescued >= 1
    report(record_property, "sigkill", pushed=n, completed=n, lost=0, workers_killed=len(killed),
           rescued=rescued, duplicated_runs=duplicated_runs,
           tasks_run_twice_or_more=tasks_with_duplicates, seconds=round(elapsed, 1))  # fmt: skip


# -- PostgreSQL restarted (immediate) while producing and working -------------------------------


async def test_postgres_restart_immediate_while_producing_and_working(
    own_server: EmbeddedPostgres, tmp_path: Path, record_property
) -> None:
    """A producer enqueues one task at a time while 2 workers run; PostgreSQL crashes
    (``pg_ctl stop -m immediate``) and comes back. The producer sees DatabaseConnectionError
    (a ConnectionError) and retries; the workers reconnect on their own and LISTEN again;
    every acknowledged task is completed."""
    total, crash_after = 300, 80
    path = str(tmp_path / "runs.log")
    async with own_backend(own_server, max_connections=2) as producer:
        schema = producer.config.schema
        processes = Processes(own_server.dsn, schema, tmp_path)
        try:
            workers = [
                await processes.worker("--concurrency", "4", "--no-scheduler", *LIVENESS)
                for _ in range(2)
            ]
            acked, errors, replies_lost, outage = await produce_through(
                producer, path, total, crash_after, lambda: own_server.restart("immediate")
            )
            assert errors, "the producer never noticed the crash"
            assert all(isinstance(e, ConnectionError) for e in errors)
            assert all(own_server.dsn.split("@")[1].split("/")[0] in str(e) for e in errors), errors

            async with connected(own_server.dsn) as admin:
                db = Database(admin, producer.config)

                async def done() -> bool:
                    return await db.count("results", "status = 'success'") >= len(acked)

                await wait_until(done, 120, "every acknowledged task to complete", workers[0], 0.5)
                assert all(w.alive() for w in workers), [w.output()[-2000:] for w in workers]

                # Both workers LISTEN again, on fresh connections.
                async def listening() -> bool:
                    rows = await connections_of(admin, application_name="omniq-listener")
                    return len([r for r in rows if r["query"].startswith("LISTEN")]) == 2

                await wait_until(listening, 30, "both workers to LISTEN again", workers[0], 0.2)
                # ... and wake on NOTIFY: an idle worker picks up a new task at once.
                (late,) = tasks_of(["late"], path, 0)
                await producer.task_queue.enqueue(late)
                result = await producer.result_storage.wait(late.id, timeout=30)
                assert result is not None and result.status == "success"

                results = {r["task_id"]: r for r in await db.rows("results")}
                lost = [i for i in acked if i not in results or results[i]["status"] != "success"]
                assert lost == []
                stored = {r["id"] for r in await db.rows("tasks")}
                assert stored == set(acked) | {late.id}  # nothing unacknowledged slipped in
                assert await status_counts(db) == {"completed": len(acked) + 1}
                ran = runs(path)
                duplicated = sum(len(pids) - 1 for key, pids in ran.items() if key != "late")
                reconnected = sum(
                    w.output().count("LISTEN connection re-established") for w in workers
                )
                report(record_property, "pg_restart", pushed=len(acked), completed=len(acked),
                       lost=len(lost), duplicated_runs=duplicated, producer_errors=len(errors),
                       replies_lost_then_duplicate=replies_lost, restart_seconds=round(outage, 1),
                       listen_reconnects=reconnected,
                       worker_dequeue_retries=sum(w.output().count("taking tasks failed") for w in workers),
                       first_error=f"{type(errors[0]).__name__}: {errors[0]}"[:160])  # fmt: skip
        finally:
            processes.kill_all()


# -- the LISTEN connection: killed, or stalled ---------------------------------------------------


async def test_worker_listen_connections_killed_repeatedly(
    backend: PostgreSQLBackend, db: Database, admin: asyncpg.Connection, superuser: tuple[str, str],
    tmp_path: Path, record_property,
) -> None:  # fmt: skip
    """tests/test_listen.py kills an in-process listener once; here the LISTEN connections of
    two real worker processes are killed three times over, and a result waiter's too: each
    time they come back and the next task wakes a worker within seconds."""
    role, dsn = superuser
    processes = Processes(dsn, backend.config.schema, tmp_path)
    try:
        workers = [await processes.worker("--concurrency", "2", "--no-scheduler") for _ in range(2)]
        path = str(tmp_path / "runs.log")

        async def listener_pids() -> set[int]:
            rows = await connections_of(admin, usename=role)
            return {r["pid"] for r in rows if r["application_name"] == "omniq-listener"}

        await wait_until(lambda: _len_is(listener_pids, 2), 15, "2 worker LISTEN connections")
        latencies = []
        for round_ in range(3):
            old = await listener_pids()
            killed = await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM unnest($1::int[]) AS pid",
                list(old),
            )
            assert killed == 2

            async def replaced(old: set[int] = old) -> bool:
                now = await listener_pids()
                return len(now) == 2 and not now & old

            await wait_until(replaced, 20, "new LISTEN connections", workers[0], 0.05)
            (task,) = tasks_of([f"r{round_}"], path, 0)
            t0 = time.monotonic()
            await backend.task_queue.enqueue(task)
            result = await backend.result_storage.wait(task.id, timeout=20)
            latencies.append(time.monotonic() - t0)
            assert result is not None and result.status == "success"

        # A result waiter whose LISTEN connection dies mid-wait still gets its result.
        listener = await backend.listener()
        (task,) = tasks_of(["waited"], path, 1.0)
        await backend.task_queue.enqueue(task)
        waiting = asyncio.ensure_future(backend.result_storage.wait(task.id, timeout=30))
        await asyncio.sleep(0.2)
        await admin.execute("SELECT pg_terminate_backend($1)", listener.backend_pid)
        result = await asyncio.wait_for(waiting, 30)
        assert result is not None and result.status == "success"
        assert all(w.alive() for w in workers)
        assert all(len(v) == 1 for v in runs(path).values())
        report(record_property, "listen_killed", rounds=3, connections_killed=6,
               wakeup_after_kill_ms=[round(x * 1000) for x in latencies], lost=0)  # fmt: skip
    finally:
        processes.kill_all()


async def _len_is(get: Any, n: int) -> bool:
    return len(await get()) == n


class StallingProxy:
    """A TCP proxy in the test process whose existing connections can be frozen: bytes stop
    flowing both ways, yet every socket stays open (so TCP itself sees nothing wrong). New
    connections are forwarded normally."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.server: asyncio.Server | None = None
        self.pairs: list[dict[str, Any]] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        pair: dict[str, Any] = {"frozen": False, "writers": [writer, up_writer]}
        pair["pumps"] = [
            asyncio.ensure_future(self._pump(reader, up_writer, pair)),
            asyncio.ensure_future(self._pump(up_reader, writer, pair)),
        ]
        self.pairs.append(pair)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    pair: dict[str, Any]) -> None:  # fmt: skip
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                while pair["frozen"]:
                    await asyncio.sleep(3600)  # stalled: hold the bytes, keep the socket
                writer.write(data)
                await writer.drain()
        writer.close()

    def freeze(self) -> None:
        for pair in self.pairs:
            pair["frozen"] = True

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for pair in self.pairs:
            for pump in pair["pumps"]:
                pump.cancel()
            for writer in pair["writers"]:
                writer.close()
        await asyncio.gather(
            *(p for pair in self.pairs for p in pair["pumps"]), return_exceptions=True
        )


async def test_stalled_listen_connection_is_detected_and_wakeups_resume(
    pg_dsn: str, make_backend, monkeypatch: pytest.MonkeyPatch, record_property
) -> None:
    """The LISTEN connection goes through a proxy (``listen_dsn``) that is then frozen: a NOTIFY
    sent meanwhile never arrives. TCP keepalives could not see this (the proxy's kernel still
    acknowledges), so the listener pings while someone waits; an unanswered ping drops the
    connection, it reconnects, and the waiter finds the task.

    Defaults: a ping every 15 s, 5 s to answer (Listener.ping_interval/ping_timeout), so a
    stalled link is noticed within 20 s; this test shortens both to 1 s."""
    monkeypatch.setattr(Listener, "ping_interval", 1.0)
    monkeypatch.setattr(Listener, "ping_timeout", 1.0)
    parts = urlsplit(pg_dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        pytest.skip("needs a URL-style DSN")
    proxy = StallingProxy(parts.hostname or "localhost", parts.port or 5432)
    proxy_port = await proxy.start()
    try:
        consumer = await make_backend(
            listen_dsn=with_netloc(pg_dsn, host="127.0.0.1", port=proxy_port)
        )
        producer = await make_backend(schema=consumer.config.schema)
        listener = await consumer.listener()

        async def wake_with(task: Task, timeout: float) -> float:
            waiter = asyncio.ensure_future(consumer.task_queue.dequeue(["default"], timeout=60))
            await asyncio.sleep(0.3)
            assert not waiter.done()
            t0 = time.monotonic()
            await producer.task_queue.enqueue(task)
            got = await asyncio.wait_for(waiter, timeout)
            assert got is not None and got.id == task.id
            return time.monotonic() - t0

        through_proxy = await wake_with(Task(func="m.before"), 5)
        assert listener.reconnects == 0

        waiter = asyncio.ensure_future(consumer.task_queue.dequeue(["default"], timeout=60))
        await asyncio.sleep(0.3)
        proxy.freeze()
        stalled = Task(func="m.stalled")
        t0 = time.monotonic()
        await producer.task_queue.enqueue(stalled)  # its NOTIFY is stuck in the frozen proxy
        got = await asyncio.wait_for(waiter, 30)
        detected = time.monotonic() - t0
        assert got is not None and got.id == stalled.id
        assert listener.reconnects == 1

        after = await wake_with(Task(func="m.after"), 5)  # the new link carries wake-ups
        report(record_property, "listen_stalled", wakeup_through_proxy_ms=round(through_proxy * 1000),
               stalled_wakeup_after_s=round(detected, 2), wakeup_after_reconnect_ms=round(after * 1000),
               lost=0)  # fmt: skip
    finally:
        await proxy.close()


async def test_stalled_listen_connection_is_detected_with_only_a_subscriber(
    pg_dsn: str, make_backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose slots are all busy waits in no dequeue, yet subscribes to abort notices:
    the ping runs for a subscriber too, so a stalled link is dropped and re-opened, and the
    subscriber is told to look again (callback(None)). Before, only waiters were pinged and
    TCP keepalives set through asyncpg's private transport stood in for the rest."""
    monkeypatch.setattr(Listener, "ping_interval", 1.0)
    monkeypatch.setattr(Listener, "ping_timeout", 1.0)
    parts = urlsplit(pg_dsn)
    proxy = StallingProxy(parts.hostname or "localhost", parts.port or 5432)
    proxy_port = await proxy.start()
    try:
        consumer = await make_backend(
            listen_dsn=with_netloc(pg_dsn, host="127.0.0.1", port=proxy_port)
        )
        listener = await consumer.listener()
        told = asyncio.Event()
        with listener.subscribe("aborts", lambda payload: payload is None and told.set()):
            proxy.freeze()
            await asyncio.wait_for(told.wait(), LONG)
        assert listener.reconnects == 1
    finally:
        await proxy.close()


# -- pool exhaustion and statement timeouts -------------------------------------------------------


async def test_pool_exhaustion_and_query_timeouts_leak_no_connection(
    make_backend, admin: asyncpg.Connection, db_of, record_property
) -> None:
    app = f"exhaust-{uuid.uuid4().hex[:8]}"
    backend = await make_backend(application_name=app, min_connections=1, max_connections=2,
                                 acquire_timeout=0.3, command_timeout=0.5)  # fmt: skip
    db = db_of(backend)
    async with backend.acquire(), backend.acquire():
        pass  # both connections open
    before = await connections_of(admin, application_name=app)
    assert len(before) == 2

    async with backend.acquire(), backend.acquire():  # every connection busy
        outcomes = await asyncio.gather(
            *(backend.task_queue.get_queue_size() for _ in range(5)), return_exceptions=True
        )
    assert all(isinstance(o, PoolExhaustedError) for o in outcomes), outcomes
    assert "max_connections" in str(outcomes[0]) and "acquire" not in repr(type(outcomes[0]))

    lock = await asyncpg.connect(backend.config.dsn)
    try:
        async with lock.transaction():
            await lock.execute(f"LOCK TABLE {db.table('tasks')} IN ACCESS EXCLUSIVE MODE")
            outcomes = await asyncio.gather(
                *(backend.task_queue.enqueue(Task(func="m.f")) for _ in range(4)),
                return_exceptions=True,
            )
            with pytest.raises(QueryTimeoutError, match="command_timeout"):
                async with backend.transaction() as conn:  # a timeout inside a transaction
                    await backend.task_queue.enqueue(Task(func="m.tx"), connection=conn)
    finally:
        await lock.close()
    kinds = Counter(type(o).__name__ for o in outcomes)
    assert set(kinds) <= {"QueryTimeoutError", "PoolExhaustedError"} and kinds["QueryTimeoutError"]

    async def settled() -> list[asyncpg.Record]:
        rows = await connections_of(admin, application_name=app)
        return rows if all(r["state"] == "idle" for r in rows) else []

    after = await wait_until(settled, 10, "the pool's connections to be idle")
    assert len(after) <= 2  # never more than the pool's size: nothing leaked
    assert await db.count("tasks") == 0  # cancelled statements stored nothing
    await backend.task_queue.enqueue(Task(func="m.ok"))  # and the pool works again
    assert await backend.task_queue.get_queue_size() == 1
    assert len(await connections_of(admin, application_name=app)) <= 2
    report(record_property, "pool_and_timeouts", connections_before=len(before),
           connections_after=len(after), errors=dict(kinds), pool_exhausted=5)  # fmt: skip


async def test_worker_survives_statement_timeouts_and_recovers(
    backend: PostgreSQLBackend, db: Database, admin: asyncpg.Connection,
    superuser: tuple[str, str], tmp_path: Path, record_property,
) -> None:  # fmt: skip
    """A statement_timeout on the worker's role while its table is locked: every statement
    the worker sends is cancelled (QueryTimeoutError). The worker logs, backs off, and keeps
    running; once the timeout is lifted it runs new tasks; its connections stay within its pool."""
    role, dsn = superuser
    await admin.execute(f"ALTER ROLE {role} SET statement_timeout = '300ms'")
    processes = Processes(dsn, backend.config.schema, tmp_path)
    try:
        worker = await processes.worker("--concurrency", "2", "--no-scheduler", *LIVENESS)
        async with backend.acquire() as conn:
            channel = await backend.sql.migrations.channel(conn, kind="tasks")
        lock = await asyncpg.connect(backend.config.dsn)
        try:
            async with lock.transaction():
                await lock.execute(f"LOCK TABLE {db.table('tasks')} IN ACCESS EXCLUSIVE MODE")
                await admin.execute("SELECT pg_notify($1, 'default')", channel)  # wake it up
                await wait_until(lambda: worker.output().count("taking tasks failed") >= 3, 30,
                                 "the worker to hit the timeout three times", worker)  # fmt: skip
                during = len(await connections_of(admin, usename=role))
        finally:
            await lock.close()
        assert "statement timeout" in worker.output() or "cancel" in worker.output()
        await admin.execute(f"ALTER ROLE {role} RESET statement_timeout")
        path = str(tmp_path / "runs.log")
        tasks = tasks_of([f"t{i}" for i in range(20)], path, 0)
        await backend.task_queue.enqueue_many(tasks)

        async def done() -> bool:
            return await db.count("results", "status = 'success'") == 20

        await wait_until(done, 60, "the worker to run tasks again", worker, 0.2)
        assert worker.alive()
        after = await connections_of(admin, usename=role)
        assert len(after) <= 4 + 1  # its pool (max 4 at --concurrency 2) and its LISTEN link
        assert all(r["state"] != "idle in transaction" for r in after)
        report(record_property, "statement_timeout", timeouts_logged=worker.output().count("taking tasks failed"),
               connections_during=during, connections_after=len(after), pushed=20, completed=20,
               lost=0)  # fmt: skip
    finally:
        processes.kill_all()


# -- load --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_load_through_four_workers(
    backend: PostgreSQLBackend, db: Database, omniq: Processes, record_property
) -> None:
    """100,000 no-op tasks (``OMNIQ_LOAD_TASKS`` changes it) enqueued in batches while 4 worker
    processes with --concurrency 16 run them: all completed, none twice; queue-to-start latency
    (tasks.started_at - created_at) reported."""
    n = int(os.environ.get("OMNIQ_LOAD_TASKS", "100000"))
    batch = 2000
    workers = [
        omniq.start("worker", "--concurrency", "16", "--no-scheduler", "-q") for _ in range(4)
    ]
    t0 = time.monotonic()
    for start in range(0, n, batch):
        await backend.task_queue.enqueue_many(
            [Task(func="asyncio.sleep", args=(0,)) for _ in range(min(batch, n - start))]
        )
    enqueued = time.monotonic() - t0

    async def done() -> bool:
        return await db.count("tasks", "status = 'completed'") == n

    await wait_until(done, 780, f"{n} tasks to complete", workers[0], 1.0)
    elapsed = time.monotonic() - t0
    for w in workers:
        w.send(signal.SIGTERM)
    for w in workers:
        assert await w.exited(60) == 0, w.output()[-2000:]

    assert await status_counts(db) == {"completed": n}
    results_sql = f"SELECT status, count(*) FROM {db.table('results')} GROUP BY 1"  # noqa: S608
    by_status = dict(await db.conn.fetch(results_sql))
    assert by_status == {"success": n}
    attempts_sql = f"SELECT attempts, count(*) FROM {db.table('tasks')} GROUP BY 1"  # noqa: S608
    assert dict(await db.conn.fetch(attempts_sql)) == {1: n}  # each task taken once
    p50, p95, p99, worst = await db.conn.fetchval(
        "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99, 1.0]) WITHIN GROUP "  # noqa: S608
        f"(ORDER BY extract(epoch FROM started_at - created_at)) FROM {db.table('tasks')}"
    )
    per_worker = Counter(
        r["worker_id"]
        for r in await db.conn.fetch(f"SELECT worker_id FROM {db.table('results')}")  # noqa: S608
    )
    report(record_property, "load", pushed=n, completed=n, duplicated=0, lost=0,
           enqueue_seconds=round(enqueued, 1), total_seconds=round(elapsed, 1),
           tasks_per_second=round(n / elapsed), queue_to_start_p50_ms=round(p50 * 1000),
           queue_to_start_p95_ms=round(p95 * 1000), queue_to_start_p99_ms=round(p99 * 1000),
           queue_to_start_max_ms=round(worst * 1000),
           per_worker=sorted(per_worker.values()))  # fmt: skip


# -- disk-level durability ----------------------------------------------------------------------


async def snapshot(admin: asyncpg.Connection, schema: str) -> dict[str, list[tuple]]:
    """Every row of the installation's tables, ordered: what must survive a crash."""
    tables = {"tasks": "id", "results": "task_id", "events": "id", "schedules": "id",
              "omniq_workers": "id"}  # fmt: skip
    found = {}
    for table, key in tables.items():
        name = f"{quote_identifier(schema)}.{quote_identifier(table)}"
        found[table] = [tuple(r) for r in await admin.fetch(f"SELECT * FROM {name} ORDER BY {key}")]  # noqa: S608
    return found


def postmaster_children(pid: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.add(int(stat.parent.name))
    return children


def kill_postmaster(server: EmbeddedPostgres) -> None:
    """kill -9 the postmaster, then wait for its children to notice and exit."""
    pid = int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])
    children = postmaster_children(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{c}").exists() for c in children | {pid}):
        if time.monotonic() > deadline:
            raise AssertionError(f"postmaster children {children} still alive after 60 s")
        time.sleep(0.1)


async def test_committed_rows_survive_immediate_shutdown_and_kill9(
    own_server: EmbeddedPostgres, tmp_path: Path, record_property
) -> None:
    """Tasks, results, events and schedules committed before a crash are all there afterwards:
    first after ``pg_ctl stop -m immediate``, then after kill -9 of the postmaster while a
    producer commits tasks one by one (every acknowledged one survives)."""
    from omniq.models.schedule import Schedule

    path = str(tmp_path / "runs.log")
    async with own_backend(own_server) as backend:
        schema = backend.config.schema
        ok = tasks_of([f"ok{i}" for i in range(150)], path, 0)
        failing = [Task(func="math.sqrt", args=(-1,), max_retries=0) for _ in range(20)]
        later = tasks_of(["later"], path, 0, run_at=time_in(3600))
        await backend.task_queue.enqueue_many(ok + failing + later)
        await backend.schedule_storage.save_schedule(Schedule(func="m.f", interval_seconds=3600))
        worker = AsyncWorker(backend, concurrency=8, run_scheduler=False,
                             install_signal_handlers=False)  # fmt: skip
        stats = await asyncio.wait_for(worker.run(burst=True), 120)
        assert (stats.succeeded, stats.failed) == (150, 20)
    async with connected(own_server.dsn) as admin:
        before = await snapshot(admin, schema)
    # Events: each of the 20 failures and its start (a success stores none: issue 12).
    assert len(before["results"]) == 170 and len(before["events"]) == 40

    await asyncio.to_thread(own_server.restart, "immediate")
    async with connected(own_server.dsn) as admin:
        assert await snapshot(admin, schema) == before

    acked: list[str] = []
    errors: list[Exception] = []
    async with own_backend(own_server, schema=schema) as backend:
        killed = asyncio.Event()

        async def produce() -> None:
            i = 0
            while True:
                task = Task(func="m.f", args=(i,))
                try:
                    await backend.task_queue.enqueue(task)
                except DatabaseConnectionError as exc:
                    errors.append(exc)
                    if killed.is_set():
                        return
                    raise
                acked.append(task.id)
                i += 1
                if i == 100:
                    await asyncio.to_thread(kill_postmaster, own_server)
                    killed.set()

        await asyncio.wait_for(produce(), 120)
    assert errors and isinstance(errors[0], ConnectionError)
    await asyncio.to_thread(own_server.start)
    async with connected(own_server.dsn) as admin:
        after = await snapshot(admin, schema)
    stored = {row[0] for row in after["tasks"]}
    missing = [i for i in acked if i not in stored]
    assert missing == []
    assert after["results"] == before["results"]
    assert after["schedules"] == before["schedules"]
    old_ids = {row[0] for row in before["tasks"]}
    assert [r for r in after["tasks"] if r[0] in old_ids] == before["tasks"]
    assert [r for r in after["events"] if r[1] in old_ids] == before["events"]  # r[1]: task_id
    report(record_property, "durability",
           rows_checked={k: len(v) for k, v in before.items()},
           acked_before_kill9=len(acked), lost=len(missing),
           unacked_but_stored=len(stored) - len(before["tasks"]) - len(acked))  # fmt: skip


def time_in(seconds: float) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=seconds)


# -- shutdown while the database is down (issue 9, defect 7) ------------------------------------


async def test_second_signal_ends_a_worker_whose_outcomes_cannot_be_written(
    own_server: EmbeddedPostgres, tmp_path: Path, record_property
) -> None:
    """Tasks finish while PostgreSQL is down: their outcomes wait, retried. SIGTERM waits for
    them (they may still be written); a second SIGTERM ends the process within seconds. The
    unwritten outcomes' tasks are then rescued, as after a crash, and run again."""
    path = str(tmp_path / "runs.log")
    async with own_backend(own_server) as producer:
        processes = Processes(own_server.dsn, producer.config.schema, tmp_path)
        try:
            tasks = tasks_of(["a", "b", "c"], path, 1.0, max_retries=3)
            worker = await processes.worker("--no-scheduler", *LIVENESS)
            await producer.task_queue.enqueue_many(tasks)
            await wait_until(lambda: len(runs(path)) == 3, 15, "the tasks to start", worker)
            await asyncio.to_thread(own_server.stop)  # fast: every connection is cut
            await worker.logged("recording 3 outcome(s) failed", 20)
            worker.send(signal.SIGTERM)
            await worker.logged("stopping: no new tasks", 10)
            await asyncio.sleep(1.0)  # still trying to write: it must not give up on one signal
            assert worker.alive(), worker.output()
            worker.send(signal.SIGTERM)
            t0 = time.monotonic()
            assert await worker.exited(10) == 130, worker.output()
            took = time.monotonic() - t0
            log = worker.output()
            assert "not recorded: the worker was forced to stop first" in log, log
            assert "Traceback" not in log, log  # the outage logs one line per event

            await asyncio.to_thread(own_server.start)
            rescuer = await processes.worker("--no-scheduler", *LIVENESS)
            async with connected(own_server.dsn) as admin:
                db = Database(admin, producer.config)

                async def completed() -> bool:
                    return await db.count("tasks", "status = 'completed'") == 3

                await wait_until(completed, 60, "the rescue to run them again", rescuer, 0.2)
                assert await db.count("events", "event_type = 'rescued'") == 3
            report(record_property, "shutdown_while_db_down", exit_after_second_signal_s=round(took, 2),
                   runs=sum(len(p) for p in runs(path).values()), completed=3)  # fmt: skip
        finally:
            processes.kill_all()
            if not own_server.is_running():
                await asyncio.to_thread(own_server.start)


# -- an outcome the database refuses is never kept silently (issue 9, defect 10) -----------------


async def test_outcome_the_database_refuses_is_recorded_as_a_failure(
    backend: PostgreSQLBackend, db: Database, omniq: Processes
) -> None:
    """A trigger refuses one task's completion (any error that is not a lost connection).
    The worker used to log "discarded: the task was taken from this worker" and keep the
    task running under its live id; now the task ends failed, saying why, and the rest of
    the batch is recorded."""
    refused = Task(func="tests.support.jobs.add", args=(1, 2), id="refused-outcome", max_retries=0)
    others = [Task(func="tests.support.jobs.add", args=(i, i)) for i in range(4)]
    await db.execute(
        f"""CREATE FUNCTION {quote_identifier(backend.config.schema)}.refuse() RETURNS trigger
        LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'completion refused by a test trigger'; END $$"""
    )
    await db.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON {tasks} FOR EACH ROW WHEN "
        f"(NEW.status = 'completed' AND NEW.id = 'refused-outcome') EXECUTE FUNCTION "
        f"{quote_identifier(backend.config.schema)}.refuse()"
    )
    await backend.task_queue.enqueue_many([refused, *others])
    worker = omniq.start("worker", "--burst", "--no-scheduler")
    assert await worker.exited(30) == 0, worker.output()

    row = await db.row("tasks", refused.id)
    assert row["status"] == "failed", row
    result = await db.row("results", refused.id)
    assert result["error_type"] == "OutcomeNotRecorded"
    assert "completion refused by a test trigger" in result["error"]
    assert "outcome (success) could not be recorded" in result["error"]
    assert [(await db.row("tasks", t.id))["status"] for t in others] == ["completed"] * 4
    log = worker.output()
    assert "recording it as a failure instead" in log and "discarded" not in log


async def test_release_of_unknown_tasks_reads_one_worker_through_its_index(
    backend: PostgreSQLBackend, db: Database
) -> None:
    """_release_unknown_tasks is one query by worker id (tasks_running_idx), not a scan of
    every running task paged with OFFSET."""
    query = backend.sql.workers.held_tasks
    assert "OFFSET" not in query.sql.upper()
    await db.execute("SET enable_seqscan = off")
    try:
        plan = await db.conn.fetchval(f"EXPLAIN (FORMAT JSON) {query.sql}", "some-worker")
    finally:
        await db.execute("RESET enable_seqscan")
    text = json.dumps(plan)
    assert "tasks_running_idx" in text, text
