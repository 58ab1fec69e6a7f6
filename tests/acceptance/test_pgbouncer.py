"""OmniQ through a real PgBouncer in transaction pooling mode (Debian's ``pgbouncer`` package,
installed by scripts/lib/venv.sh when running as root; skipped with the reason otherwise).

The pool goes through PgBouncer with ``statement_cache_size=0`` (PgBouncer 1.18 cannot carry
named prepared statements across transactions), and LISTEN uses a direct server connection
(``listen_dsn``): in transaction mode a LISTEN would hold on to a server connection that
PgBouncer hands to other clients between transactions. ``omniq worker --listen-dsn`` does both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.models.config import PostgresConfig
from omniq.models.task import Task
from tests.support.db import drop_schemas, unique_schema
from tests.support.processes import Processes
from tests.support.waits import LONG, soon

pytestmark = pytest.mark.timeout(180)


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pgbouncer(pg_dsn: str) -> Iterator[str]:
    """A PgBouncer in transaction pooling mode in front of the session's server; its DSN."""
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip(
            "PgBouncer is not installed (scripts/test installs Debian's pgbouncer package when "
            "run as root; otherwise `apt-get install pgbouncer`)"
        )
    server = urlsplit(pg_dsn)
    if server.scheme not in ("postgres", "postgresql"):
        pytest.skip("needs a URL-style DSN")
    user = server.username or "postgres"
    database = server.path.lstrip("/") or "omniq"
    port = free_port()
    # As root PgBouncer refuses to run: it runs as `postgres` (-u), which must read its files.
    run_as = None
    if os.geteuid() == 0:
        try:
            run_as = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PgBouncer as")
    home = Path(tempfile.mkdtemp(prefix="omniq-pgbouncer-", dir="/tmp"))
    home.chmod(0o755)
    password = f" password={server.password}" if server.password else ""
    (home / "userlist.txt").write_text(f'"{user}" "{server.password or ""}"\n')
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{database} = host={server.hostname} port={server.port or 5432} dbname={database}{password}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {home / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 8\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"admin_users = {user}\n"
        f"logfile = {home / 'pgbouncer.log'}\npidfile = {home / 'pgbouncer.pid'}\n"
    )
    if run_as is not None:
        for path in [home, *home.iterdir()]:
            os.chown(path, run_as.pw_uid, run_as.pw_gid)
    argv = [binary, *(["-u", "postgres"] if run_as else []), str(home / "pgbouncer.ini")]
    output = (home / "stdout.log").open("wb")
    proc = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, cwd="/")
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                logs = [p.read_text() for p in home.glob("*.log")]
                pytest.fail(f"PgBouncer did not start: {logs}")
            time.sleep(0.1)
        yield urlunsplit(server._replace(netloc=f"{user}@127.0.0.1:{port}"))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        output.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def through_bouncer(pgbouncer: str, pg_dsn: str):
    """A backend whose pool goes through PgBouncer and whose LISTEN connection does not."""
    schema = unique_schema("bouncer")
    config = PostgresConfig(dsn=pgbouncer, listen_dsn=pg_dsn, statement_cache_size=0,
                            schema=schema, max_connections=4)  # fmt: skip
    backend = PostgreSQLBackend(config)
    await backend.connect()  # creates the schema through PgBouncer, in one transaction
    try:
        yield backend
    finally:
        await backend.close()
        await drop_schemas(pg_dsn, schema)


def test_pgbouncer_is_in_transaction_mode(pgbouncer: str) -> None:
    """Asked on PgBouncer's admin console (simple query protocol only: psql)."""
    from omniq.embedded import find_bindir

    try:
        psql = str(find_bindir() / "psql")
    except RuntimeError:
        psql = shutil.which("psql") or pytest.skip("psql not installed")
    console = urlunsplit(urlsplit(pgbouncer)._replace(path="/pgbouncer"))
    out = subprocess.run([psql, "-X", "-A", "-t", "-F", "=", "-d", console, "-c", "SHOW CONFIG"],
                         capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    config = dict(line.split("=")[:2] for line in out.stdout.splitlines() if "=" in line)
    assert config["pool_mode"] == "transaction"


async def test_enqueue_dequeue_and_result_wait_through_pgbouncer(
    through_bouncer: PostgreSQLBackend, pg_dsn: str
) -> None:
    backend = through_bouncer
    listener = await backend.listener()
    async with backend.acquire() as pooled:
        pooled_port = pooled.get_settings().server_version is not None  # a live connection
    assert pooled_port
    direct = await asyncpg.connect(pg_dsn)
    try:  # the LISTEN connection is a direct one: the server sees it LISTENing
        query = await direct.fetchval(
            "SELECT query FROM pg_stat_activity WHERE pid = $1", listener.backend_pid
        )
    finally:
        await direct.close()
    assert query.startswith("LISTEN")

    # Blocking dequeue: waits on the direct LISTEN connection, woken by an enqueue that went
    # through PgBouncer (its NOTIFY is sent when PgBouncer's server connection commits).
    waiter = asyncio.ensure_future(backend.task_queue.dequeue(["default"], timeout=LONG))
    await asyncio.sleep(0.3)
    task = Task(func="m.f", args=(1, "two"), kwargs={"x": [3]})
    await backend.task_queue.enqueue(task)
    got = await soon(waiter)  # woken by the NOTIFY, not by its timeout
    assert got is not None and got.id == task.id and got.args == (1, "two")

    # A transactional enqueue: one PgBouncer server connection for the whole transaction.
    async with backend.transaction() as conn:
        inside = Task(func="m.g")
        await backend.task_queue.enqueue(inside, connection=conn)
    assert (await backend.task_queue.get_task(inside.id)) is not None

    # Many concurrent operations share PgBouncer's server connections without confusion.
    tasks = [Task(func="m.h", args=(i,)) for i in range(50)]
    await asyncio.gather(*(backend.task_queue.enqueue(t) for t in tasks))
    sizes = await asyncio.gather(*(backend.task_queue.get_queue_size() for _ in range(20)))
    assert set(sizes) == {51}


async def test_worker_runs_tasks_through_pgbouncer(
    through_bouncer: PostgreSQLBackend, pgbouncer: str, pg_dsn: str, tmp_path: Path
) -> None:
    backend = through_bouncer
    processes = Processes(pgbouncer, backend.config.schema, tmp_path)
    try:
        worker = await processes.worker("--listen-dsn", pg_dsn, "--concurrency", "4",
                                        "--no-scheduler")  # fmt: skip
        tasks = [Task(func="tests.support.jobs.add", args=(i, i)) for i in range(40)]
        await backend.task_queue.enqueue_many(tasks)
        results = await asyncio.wait_for(
            asyncio.gather(*(backend.result_storage.wait(t.id, timeout=60) for t in tasks)), 90
        )
        assert [r.result for r in results if r is not None] == [2 * i for i in range(40)]
        # Idle now: a new task wakes it through the direct LISTEN connection at once.
        late = Task(func="tests.support.jobs.add", args=(20, 22))
        started = time.monotonic()
        await backend.task_queue.enqueue(late)
        result = await backend.result_storage.wait(late.id, timeout=30)
        assert result is not None and result.result == 42
        print(f"\nidle worker behind PgBouncer: result {1000 * (time.monotonic() - started):.0f} ms "
              "after enqueue")  # fmt: skip
        assert worker.alive()
        assert "prepared statement" not in worker.output()
    finally:
        processes.kill_all()
