"""Real tests of omniq.embedded: every test here starts actual PostgreSQL servers."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from omniq import embedded
from omniq.embedded import EmbeddedPostgres, ensure_running, stop_persistent

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A dir the server user can traverse (pytest's tmp_path is 0700 root-owned under root)."""
    path = Path(tempfile.mkdtemp(prefix="omniq-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_session_server_answers(pg_dsn: str) -> None:
    assert await fetchval(pg_dsn, "SELECT 1") == 1
    assert await fetchval(pg_dsn, "SELECT current_database()") == "omniq"


async def test_throwaway_start_stop() -> None:
    server = EmbeddedPostgres(durable=False, extra_settings={"work_mem": "8MB"})
    dsn = server.start()
    try:
        assert dsn == f"postgresql://postgres@127.0.0.1:{server.port}/omniq" == server.dsn
        assert server.is_running()
        assert server.start() == dsn  # idempotent
        assert await fetchval(dsn, "SELECT 1") == 1
        for name, expected in {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "work_mem": "8MB",
            "max_connections": "200",
            "listen_addresses": "127.0.0.1",
            # pg_stat_statements only where the binaries have it (not pgserver's)
            "shared_preload_libraries": "pg_stat_statements"
            if embedded.has_module(server.bindir, "pg_stat_statements")
            else "",
        }.items():
            assert await fetchval(dsn, f"SHOW {name}") == expected, name
        if IS_ROOT:  # initdb/postgres refuse root, so they ran as the server user
            assert server.data_dir.stat().st_uid == embedded.server_user().pw_uid  # type: ignore[union-attr]
    finally:
        server.stop()
    assert not server.is_running()
    assert not server.data_dir.exists()


async def test_binaries_without_contrib_modules_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11: pgserver's PostgreSQL 16 binaries (the README's fallback for a machine without
    a system PostgreSQL) have no contrib modules; the server was started with
    shared_preload_libraries = 'pg_stat_statements' and died: FATAL: could not access file."""
    spec = importlib.util.find_spec("pgserver")  # scripts/lib/venv.sh installs it
    assert spec is not None and spec.origin, "pgserver is not installed: pip install pgserver"
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    monkeypatch.setenv("OMNIQ_PG_BINDIR", str(bindir))
    with EmbeddedPostgres(durable=False) as server:
        assert server.bindir == bindir
        assert int(await fetchval(server.dsn, "SHOW server_version_num")) >= 160000  # type: ignore[arg-type]
        assert await fetchval(server.dsn, "SHOW shared_preload_libraries") == ""
    assert not embedded.has_module(bindir, "pg_stat_statements")
    if Path("/usr/lib/postgresql/15/lib/pg_stat_statements.so").exists():  # Debian's have it
        assert embedded.has_module(Path("/usr/lib/postgresql/15/bin"), "pg_stat_statements")


async def test_restart_keeps_data() -> None:
    with EmbeddedPostgres() as server:
        conn = await asyncpg.connect(server.dsn)
        await conn.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')")
        await conn.close()
        port = server.port
        for mode in ("immediate", "fast"):
            assert server.restart(mode=mode) == f"postgresql://postgres@127.0.0.1:{port}/omniq"
            assert await fetchval(server.dsn, "SELECT v FROM t") == "kept"


def _ensure_running_in_subprocess(data_dir: Path) -> subprocess.Popen[str]:
    code = (
        "import sys; from omniq.embedded import ensure_running; print(ensure_running(sys.argv[1]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(data_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_ensure_running_concurrently(scratch: Path) -> None:
    data_dir = scratch / "cluster"
    try:
        procs = [_ensure_running_in_subprocess(data_dir) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        dsns = {out.strip() for out, _ in results}
        assert len(dsns) == 1, results
        dsn = dsns.pop()
        assert ensure_running(data_dir) == dsn  # adopts the live postmaster
        assert await fetchval(dsn, "SELECT 1") == 1
        assert stop_persistent(data_dir) is True
        assert stop_persistent(data_dir) is False
        assert ensure_running(data_dir) == dsn  # restarted on its previous port
    finally:
        stop_persistent(data_dir)
    assert (data_dir / "PG_VERSION").exists()  # persistent: data kept


def test_missing_binaries_give_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMNIQ_PG_BINDIR", str(tmp_path))
    server = EmbeddedPostgres()
    with pytest.raises(RuntimeError, match="OMNIQ_PG_BINDIR") as info:
        server.start()
    assert "apt-get install postgresql" in str(info.value)
    assert not server.data_dir.exists()  # the throwaway dir is cleaned up


@pytest.mark.skipif(not IS_ROOT, reason="only root hands the server to another user")
def test_unreachable_data_dir_is_explained(scratch: Path) -> None:
    scratch.chmod(0o700)
    with pytest.raises(RuntimeError, match="not searchable by user"):
        EmbeddedPostgres(scratch / "cluster").start()


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OMNIQ_EMBEDDED_DIR", raising=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = embedded.default_data_dir()
    monkeypatch.chdir(tmp_path / "b")
    assert embedded.default_data_dir() != first
    assert first.name.startswith("a-")
    if IS_ROOT:
        assert first.parent == Path("/var/tmp/omniq-embedded")
    monkeypatch.setenv("OMNIQ_EMBEDDED_DIR", str(tmp_path / "x"))
    assert embedded.default_data_dir() == tmp_path / "x"


def test_module_needs_only_the_stdlib() -> None:
    # -I -S: no site-packages and no cwd on sys.path, so only the stdlib can be imported.
    code = (
        "import importlib.util, sys; "
        "spec = importlib.util.spec_from_file_location('standalone', sys.argv[1]); "
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); "
        "print(mod.find_bindir())"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, embedded.__file__],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip(), "postgres").exists()


def test_failed_start_reports_the_log() -> None:
    server = EmbeddedPostgres(durable=False, extra_settings={"shared_buffers": "plenty"})
    with pytest.raises(RuntimeError, match="failed to start") as info:
        server.start()
    assert "shared_buffers" in str(info.value)  # the server log's own complaint
    assert not server.is_running()
    assert not server.data_dir.exists()


def _omniq(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "OMNIQ_"))}
    env["OMNIQ_EMBEDDED_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "omniq", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


async def test_stale_postmaster_pid_of_a_reused_pid_is_recovered_without_signalling_it(
    scratch: Path,
) -> None:
    """Issue 10, defect 8: after a crash and a reboot, postmaster.pid names a pid that now
    belongs to another process. pg_ctl then says the server runs (status), and stop signals
    that stranger. The cluster must be seen as stopped, start by itself, and leave the
    stranger alone. The stranger runs as the server user, so pg_ctl could signal it."""
    data_dir = scratch / "cluster"
    ensure_running(data_dir)
    pid_file = data_dir / "postmaster.pid"
    saved = pid_file.read_text().splitlines()
    stop_persistent(data_dir)
    assert not pid_file.exists()

    user = embedded.server_user()
    stranger = subprocess.Popen(
        ["sleep", "120"], cwd="/",
        user=None if user is None else user.pw_uid, group=None if user is None else user.pw_gid,
    )  # fmt: skip
    try:
        pid_file.write_text("\n".join([str(stranger.pid), *saved[1:]]) + "\n")
        if user is not None:
            os.chown(pid_file, user.pw_uid, user.pw_gid)
        pid_file.chmod(0o600)

        server = EmbeddedPostgres(data_dir)
        stopped = _omniq("embedded", "stop", data_dir=data_dir)
        assert stranger.poll() is None, "the stranger was signalled"
        assert stopped.stdout.strip() == "not running", (stopped.stdout, stopped.stderr)
        assert not server.is_running()
        shown = _omniq("embedded", "status", data_dir=data_dir)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith("stopped"), shown.stdout
        assert f"names pid {stranger.pid}" in shown.stdout
        assert server.stale_pid() == stranger.pid

        dsn = ensure_running(data_dir)  # recovers: the stale file goes, the server starts
        assert await fetchval(dsn, "SELECT 1") == 1
        assert EmbeddedPostgres(data_dir).stale_pid() is None
        assert int(pid_file.read_text().splitlines()[0]) != stranger.pid
        assert stop_persistent(data_dir) is True
        assert stranger.poll() is None, "the stranger was signalled"
    finally:
        stranger.kill()
        stranger.wait()
        stop_persistent(data_dir)
