"""A private PostgreSQL server that OmniQ starts by itself when no server is configured.

The server listens only on 127.0.0.1 and trusts every local connection, so it is meant
for development, tests and single-machine use, never for a shared host.

Running as root: ``initdb`` and ``postgres`` refuse to run as root, so when
``os.geteuid() == 0`` every server binary runs as the ``postgres`` system user (or
``nobody`` if there is none) and the data directory is chowned to that user.  That user
must be able to traverse every parent of the data directory, which rules out ``/root``
and pytest's ``tmp_path`` (``/tmp/pytest-of-root`` is mode 0700).  Throwaway servers
therefore live in the system temp dir (``/tmp``) and the persistent one in
``/var/tmp/omniq-embedded/`` (see :func:`default_data_dir`).

Stdlib only: the CLI imports this before anything else of OmniQ is needed.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

StopMode = Literal["smart", "fast", "immediate"]

DATABASE = "omniq"
SUPERUSER = "postgres"
CONF_FILE = "omniq.conf"  # rewritten on every start, included from postgresql.conf
LOG_FILE = "server.log"
_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_TOOLS = ("initdb", "pg_ctl", "postgres", "createdb")
_INSTALL_HINT = (
    "Install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`, "
    "Fedora: `dnf install postgresql-server postgresql-contrib`, macOS: `brew install postgresql`, "
    "or `pip install pgserver`), or set OMNIQ_PG_BINDIR to a directory holding "
    f"{', '.join(_TOOLS)}, or configure a DSN for an existing server."
)


# --------------------------------------------------------------------------- binaries


def find_bindir() -> Path:
    """Return the directory holding initdb, pg_ctl, postgres and createdb.

    Order: ``$OMNIQ_PG_BINDIR`` (authoritative when set), ``pg_config --bindir``,
    ``initdb`` on PATH, the highest ``/usr/lib/postgresql/*/bin``, then the binaries
    bundled with the optional ``pgserver`` package.
    """
    forced = os.environ.get("OMNIQ_PG_BINDIR")
    if forced:
        if _has_tools(Path(forced)):
            return Path(forced)
        raise RuntimeError(f"OMNIQ_PG_BINDIR={forced} lacks PostgreSQL binaries. {_INSTALL_HINT}")
    for candidate in _candidate_bindirs():
        if _has_tools(candidate):
            return candidate
    raise RuntimeError(f"No PostgreSQL server binaries found. {_INSTALL_HINT}")


def _candidate_bindirs() -> Iterator[Path]:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            yield Path(out.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb:
        yield Path(initdb).resolve().parent  # resolve: /usr/local/bin may hold only symlinks
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        yield from sorted(debian.glob("*/bin"), key=_version_key, reverse=True)
    spec = importlib.util.find_spec("pgserver")  # optional wheel that bundles a server
    if spec is not None and spec.origin:
        yield Path(spec.origin).parent / "pginstall" / "bin"


def _version_key(bindir: Path) -> tuple[int, ...]:
    parts = bindir.parent.name.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (-1,)


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in _TOOLS)


def has_module(bindir: Path, name: str) -> bool:
    """Whether the server in ``bindir`` can load the module ``name`` (``pg_stat_statements``,
    ``auto_explain``): contrib modules come with Debian's packages, not with every build
    (pgserver's wheel has none). Looks in ``pg_config --pkglibdir`` of that bindir, else in
    ``lib/postgresql`` and ``lib`` beside it."""
    return any((libdir / f"{name}.so").is_file() for libdir in _libdirs(bindir))


def _libdirs(bindir: Path) -> list[Path]:
    pg_config = bindir / "pg_config"
    if os.access(pg_config, os.X_OK):
        out = subprocess.run(
            [pg_config, "--pkglibdir"], capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.strip():
            return [Path(out.stdout.strip())]
    return [bindir.parent / "lib" / "postgresql", bindir.parent / "lib"]


# --------------------------------------------------------------------------- root handling


def server_user() -> pwd.struct_passwd | None:
    """The account server binaries run as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(
        "Running as root, but there is no 'postgres' or 'nobody' user to run PostgreSQL as."
    )


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Fail early and clearly if `user` cannot traverse down to `path`."""
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == user.pw_gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            raise RuntimeError(
                f"{directory} is not searchable by user {user.pw_name!r}, which runs the embedded "
                f"PostgreSQL because it refuses root; put the data dir under /tmp or /var/tmp."
            )


def _give_to_server_user(path: Path) -> None:
    user = server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _run(
    args: list[str | Path], *, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool, as the server user when we are root."""
    user = server_user()
    # PG* variables (PGDATA, PGPORT, PGOPTIONS...) would silently retarget the tools.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd="/",  # the server user may not be able to enter our cwd (e.g. /root)
        env=env,
        check=False,
        user=None if user is None else user.pw_uid,
        group=None if user is None else user.pw_gid,
        extra_groups=None if user is None else [],  # drop root's supplementary groups
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    return proc


# --------------------------------------------------------------------------- small helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # Like postmaster: TIME_WAIT leftovers of old connections don't block the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _processes_in(directory: Path) -> set[int] | None:
    """Pids of the processes whose working directory is ``directory`` (Linux /proc; None
    elsewhere). Processes of other users are not readable unless we are root: they cannot be
    a server we started, which runs as us, or as the server user when we are root."""
    proc = Path("/proc")
    if not (proc / "self" / "cwd").exists():
        return None
    wanted = str(directory.resolve())
    found = set()
    for entry in proc.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "cwd") == wanted:
                    found.add(int(entry.name))
    return found


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _scratch_base() -> Path:
    """Where throwaway data dirs go: the temp dir, or /tmp if the server user can't reach it."""
    base = Path(tempfile.gettempdir())
    user = server_user()
    if user is not None:
        try:
            _check_reachable(base, user)
        except RuntimeError:
            return Path("/tmp")
    return base


# --------------------------------------------------------------------------- the server

_live_throwaways: dict[EmbeddedPostgres, int] = {}  # server -> pid of the process owning it


@atexit.register
def _stop_throwaways() -> None:
    # A test run that forgets stop() must not leave orphan postmasters behind; a forked
    # child exiting must not stop its parent's servers, hence the pid check.
    for server, pid in list(_live_throwaways.items()):
        if pid == os.getpid():
            with contextlib.suppress(Exception):
                server.stop(mode="immediate")


class EmbeddedPostgres:
    """A private PostgreSQL cluster driven with initdb/pg_ctl.

    ``data_dir=None`` makes a throwaway cluster in a fresh temp dir that ``stop()``
    deletes; otherwise the cluster in ``data_dir`` is created if missing and kept.
    ``port=None`` picks a free port (reusing the one of the previous start when free).
    ``durable=False`` turns off fsync and friends: fast, but a host crash loses data.
    ``extra_settings`` go last into the config, so they override ours.
    ``pg_stat_statements`` is preloaded when the binaries have it (see :func:`has_module`).
    As root, ``data_dir`` must be reachable by the ``postgres``/``nobody`` user (see module doc).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        port: int | None = None,
        *,
        durable: bool = True,
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self._throwaway = data_dir is None
        if data_dir is None:
            data_dir = tempfile.mkdtemp(prefix="omniq-pg-", dir=_scratch_base())
        self._data_dir = Path(data_dir).absolute()
        self._port = port
        self.durable = durable
        self.extra_settings = dict(extra_settings or {})
        self._bindir: Path | None = None

    # -- properties

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def log_file(self) -> Path:
        return self._data_dir / LOG_FILE

    @property
    def dsn(self) -> str:
        if self._port is None:
            raise RuntimeError("The embedded PostgreSQL has not been started.")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self._port}/{DATABASE}"

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    # -- lifecycle

    def start(self) -> str:
        """Start the server (idempotent; adopts one already running) and return its DSN."""
        try:
            if self.is_running():
                self._port = self._running_port()
            else:
                self._clear_stale_pid()
                self._init_cluster()
                self._start_server()
            self._create_database()
        except BaseException:
            if self._throwaway:
                self.stop(mode="immediate")
            raise
        if self._throwaway:
            _live_throwaways[self] = os.getpid()
        return self.dsn

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server if running; a throwaway cluster is then deleted."""
        self._stop_server(mode)
        if self._throwaway:
            _live_throwaways.pop(self, None)
            shutil.rmtree(self._data_dir, ignore_errors=True)

    def restart(self, mode: Literal["immediate", "fast"] = "fast") -> str:
        """Stop (``immediate`` simulates a crash) and start again on the same port and data."""
        self._stop_server(mode)
        return self.start()

    def is_running(self) -> bool:
        if not self._initialized() or self.stale_pid() is not None:
            return False
        return self._pg_ctl("status", check=False).returncode == 0

    def stale_pid(self) -> int | None:
        """The pid in ``postmaster.pid`` if it is not this cluster's server: the file was left
        by a crash, and after a reboot its pid may belong to any process (pg_ctl would then
        call the cluster running, and ``stop`` would signal that stranger).

        A server, and each of its backends, runs in its data directory, which is how it is
        told apart (``/proc/<pid>/cwd``). Without /proc this cannot be told: ``None``.
        """
        pid = self._pid_in_file()
        if pid is None:
            return None
        inside = _processes_in(self._data_dir)
        return None if inside is None or pid in inside else pid

    def _pid_in_file(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self._data_dir / "postmaster.pid").read_text().splitlines()[0])
        return None

    def _clear_stale_pid(self) -> None:
        """Remove a ``postmaster.pid`` naming a process that is not this cluster's server."""
        pid = self.stale_pid()
        if pid is None:
            return
        inside = sorted(_processes_in(self._data_dir) or [])
        if inside:  # the server is gone, but processes of it are not: starting would be unsafe
            raise RuntimeError(
                f"{self._data_dir}/postmaster.pid names pid {pid}, which is not this cluster's "
                f"server, but processes {inside} still run in the data directory (backends of a "
                "crashed server?). Stop them, then start again."
            )
        (self._data_dir / "postmaster.pid").unlink(missing_ok=True)

    def standby(self, data_dir: str | Path, port: int | None = None) -> EmbeddedPostgres:
        """A streaming standby of this running server, in ``data_dir`` (``pg_basebackup -R``,
        WAL streamed); ``start()`` it. For failover tests and trials, not for production."""
        if self._port is None:
            raise RuntimeError("start the server before making a standby of it")
        target = Path(data_dir).absolute()
        target.mkdir(parents=True, exist_ok=True)
        user = server_user()
        if user is not None:
            _check_reachable(target.parent, user)
        _give_to_server_user(target)
        target.chmod(0o700)
        _run([
            self.bindir / "pg_basebackup", "-D", target, "-h", "127.0.0.1", "-p", str(self._port),
            "-U", SUPERUSER, "-R", "-X", "stream", "-c", "fast",
        ])  # fmt: skip
        return EmbeddedPostgres(
            target, port, durable=self.durable, extra_settings=self.extra_settings
        )

    def promote(self) -> None:
        """Make this standby a primary (``pg_ctl promote``), waiting until it accepts writes."""
        self._pg_ctl("promote", "-w", "-t", "60")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self._data_dir)!r}, port={self._port})"

    # -- internals

    def _stop_server(self, mode: StopMode) -> None:
        if self.is_running():
            self._pg_ctl("stop", "-m", mode, "-w", "-t", "60")

    def _pg_ctl(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([self.bindir / "pg_ctl", *args, "-D", self._data_dir], check=check, timeout=90)

    def _initialized(self) -> bool:
        return (self._data_dir / "PG_VERSION").is_file()

    def _running_port(self) -> int:
        # postmaster.pid line 4 is the port the live postmaster listens on.
        return int((self._data_dir / "postmaster.pid").read_text().splitlines()[3])

    def _init_cluster(self) -> None:
        if self._initialized():
            return
        self._data_dir.mkdir(parents=True, exist_ok=True)
        if any(self._data_dir.iterdir()):
            raise RuntimeError(f"{self._data_dir} is neither empty nor a PostgreSQL data dir.")
        user = server_user()
        if user is not None:
            _check_reachable(self._data_dir.parent, user)
        _give_to_server_user(self._data_dir)
        self._data_dir.chmod(0o700)
        _run([
            self.bindir / "initdb", "-D", self._data_dir, "--auth=trust", "-U", SUPERUSER,
            "--encoding=UTF8", "--locale=C", "--no-instructions",
        ])  # fmt: skip
        with (self._data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude_if_exists = '{CONF_FILE}'\n")

    def _settings(self, port: int) -> dict[str, str]:
        socket_dir = str(self._data_dir)
        if len(socket_dir) + len(f"/.s.PGSQL.{port}") > _SOCKET_PATH_MAX:
            socket_dir = ""  # path too long for a Unix socket: TCP only (we never use the socket)
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": socket_dir,
            "max_connections": "200",
        }
        # For scripts/bench's statement counts; not every build has it (pgserver's has none).
        if has_module(self.bindir, "pg_stat_statements"):
            settings["shared_preload_libraries"] = "pg_stat_statements"
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        return settings | self.extra_settings

    def _write_conf(self, port: int) -> None:
        path = self._data_dir / CONF_FILE
        lines = ["# Written by omniq.embedded on every start: edit extra_settings instead."]
        lines += [f"{key} = {_quote(value)}" for key, value in self._settings(port).items()]
        path.write_text("\n".join(lines) + "\n")
        _give_to_server_user(path)

    def _saved_port(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            for line in (self._data_dir / CONF_FILE).read_text().splitlines():
                if line.startswith("port = "):
                    return int(line.split("=", 1)[1].strip(" '"))
        return None

    def _port_candidates(self) -> list[int]:
        if self._port is not None:
            return [self._port]  # explicit or from our previous start: keep the DSN stable
        saved = self._saved_port()
        first = [saved] if saved is not None and _port_is_free(saved) else []
        # Several tries: a free port may be taken by someone else before postgres binds it.
        return first + [_free_port() for _ in range(3)]

    def _start_server(self) -> None:
        candidates = self._port_candidates()
        for i, port in enumerate(candidates):
            self._write_conf(port)
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            proc = self._pg_ctl("start", "-w", "-t", "60", "-l", self.log_file, check=False)
            if proc.returncode == 0:
                self._port = port
                return
            log = self._log_since(log_offset)
            if "already in use" in log and i + 1 < len(candidates):
                continue
            with contextlib.suppress(Exception):  # don't leave a half-started postmaster
                self._pg_ctl("stop", "-m", "immediate", check=False)
            tail = "\n".join(log.splitlines()[-20:]) or proc.stderr.strip()
            raise RuntimeError(
                f"PostgreSQL failed to start in {self._data_dir} on port {port}:\n{tail}"
            )

    def _log_since(self, offset: int) -> str:
        with contextlib.suppress(OSError), self.log_file.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
        return ""

    def _create_database(self) -> None:
        if (self._data_dir / "standby.signal").exists():
            return  # a standby is read-only; it has its primary's databases
        # createdb rather than SQL text: OmniQ keeps its SQL in sql/, and this is idempotent.
        conn = ["-h", "127.0.0.1", "-p", str(self._port), "-U", SUPERUSER]
        try:
            _run([self.bindir / "createdb", *conn, DATABASE])
        except RuntimeError as exc:
            if "already exists" not in str(exc):  # also when a concurrent creator won the race
                raise


# --------------------------------------------------------------------------- persistent server


def default_data_dir() -> Path:
    """Where the CLI's persistent server keeps its data: one cluster per project (cwd).

    ``$OMNIQ_EMBEDDED_DIR`` if set; as root ``/var/tmp/omniq-embedded/<dir>-<hash of cwd>``
    (root's home is unreachable for the ``postgres`` user; note that tmpfiles cleaners may
    purge /var/tmp entries unused for 30 days); otherwise
    ``${XDG_STATE_HOME:-~/.local/state}/omniq/embedded/<dir>-<hash of cwd>``.
    """
    forced = os.environ.get("OMNIQ_EMBEDDED_DIR")
    if forced:
        return Path(forced).expanduser().absolute()
    cwd = Path.cwd().resolve()
    name = f"{cwd.name or 'root'}-{hashlib.sha256(str(cwd).encode()).hexdigest()[:12]}"
    if os.geteuid() == 0:
        return Path("/var/tmp/omniq-embedded") / name
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "omniq" / "embedded" / name


@contextlib.contextmanager
def _dir_lock(data_dir: Path) -> Iterator[None]:
    """Serialize start/stop of one cluster across processes.

    The lock file sits beside the data dir, since initdb wants an empty directory.
    """
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and data_dir.parent == Path("/var/tmp/omniq-embedded"):
        data_dir.parent.chmod(0o755)  # a restrictive umask must not lock the server user out
    with open(data_dir.parent / f".{data_dir.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_running(data_dir: str | Path | None = None) -> str:
    """Start the persistent server in `data_dir` (default: :func:`default_data_dir`)
    unless it already runs, and return its DSN. Safe to call concurrently."""
    server = EmbeddedPostgres(data_dir if data_dir is not None else default_data_dir())
    with _dir_lock(server.data_dir):
        return server.start()


def stop_persistent(data_dir: str | Path | None = None) -> bool:
    """Stop the persistent server (data kept); return whether it was running."""
    server = EmbeddedPostgres(data_dir if data_dir is not None else default_data_dir())
    with _dir_lock(server.data_dir):
        if not server.is_running():
            return False
        server.stop()
        return True
