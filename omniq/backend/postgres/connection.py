"""The connection pool, the JSONB codec, and the translation of driver errors into OmniQ's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from ...dsn import parse_dsn
from ...errors import (
    AuthenticationError,
    ConfigurationError,
    DatabaseConnectionError,
    DatabaseNotFoundError,
    OmniQError,
    PermissionDeniedError,
    PoolExhaustedError,
    QueryTimeoutError,
)
from ...models.config import PostgresConfig

# A connection of one's own, or one a pool lends (asyncpg's proxy of it): both run queries.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy


def connect_kwargs(config: PostgresConfig, *, listen: bool = False) -> dict[str, Any]:
    """Keyword arguments for asyncpg.connect/create_pool; ``dsn`` wins over the separate fields."""
    dsn = (config.listen_dsn if listen else None) or config.dsn
    kwargs: dict[str, Any] = {"timeout": config.connect_timeout}
    name = config.application_name
    if dsn:  # a URL or a libpq key=value string, as the URL asyncpg reads
        parsed = parse_dsn(dsn)
        kwargs["dsn"] = parsed.url
        kwargs["timeout"] = parsed.connect_timeout or config.connect_timeout
        name = parsed.application_name or name  # the DSN's own name wins, as with libpq
    else:
        kwargs.update(
            host=config.host,
            port=config.port,
            database=config.database,
            user=config.username,
            password=config.password or None,
        )
    suffix = "-listener" if listen else ""
    kwargs["server_settings"] = {"application_name": name + suffix}
    return kwargs


def target(config: PostgresConfig) -> str:
    """``host:port[,host:port...]/database`` for messages; never includes a password.

    Total: it runs while translating another error, so it never raises itself.
    """
    if not config.dsn:
        return f"{config.host}:{config.port}/{config.database}"
    try:
        return parse_dsn(config.dsn).where
    except Exception:
        return "the server of the configured dsn"


def _encode_json(value: Any) -> str:
    # The backend passes JSON text it serialised (and checked) itself; anything else is dumped.
    return value if isinstance(value, str) else orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    """Decode JSONB with orjson on every pooled connection."""
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_encode_json, decoder=orjson.loads, format="text"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook: OmniQ leaves no session state behind (no LISTEN, locks, SET), so the
    default reset (one more round trip per operation) is skipped; open transactions are still
    rolled back by asyncpg before this is called."""


async def create_pool(config: PostgresConfig) -> asyncpg.Pool:
    async with translate_errors(config):
        return await asyncpg.create_pool(
            **connect_kwargs(config),
            min_size=config.min_connections,
            max_size=config.max_connections,
            command_timeout=config.command_timeout,
            statement_cache_size=config.statement_cache_size,
            init=init_connection,
            reset=_keep_session,
        )


async def connect_listener(config: PostgresConfig) -> asyncpg.Connection:
    """A connection of its own for LISTEN. A dead or stalled link (half-open TCP, a hung
    proxy) is noticed by the listener's ping (listener.py), through asyncpg's public API:
    asyncpg takes no socket options, and its socket is not public."""
    async with translate_errors(config):
        conn: asyncpg.Connection = await asyncpg.connect(**connect_kwargs(config, listen=True))
    return conn


@contextlib.asynccontextmanager
async def translate_errors(
    config: PostgresConfig, *, connecting: bool = True
) -> AsyncIterator[None]:
    """Re-raise driver and socket errors as OmniQ errors that name the server and a fix."""
    try:
        yield
    except OmniQError:
        raise
    except Exception as exc:
        translated = translate(exc, config, connecting=connecting)
        if translated is None:
            raise
        raise translated from exc


def translate(
    exc: BaseException,
    config: PostgresConfig,
    *,
    connecting: bool = True,
    closed: bool | None = None,
) -> OmniQError | None:
    """The OmniQ error for a driver or socket error, or None to let it through.

    ``closed``: whether the connection involved is closed, where that is known. asyncpg raises
    a plain InterfaceError both for a closed connection and for a closing pool or a misused
    one: only the first is a lost connection (worth retrying), so where the connection is
    known its state decides; where it is not (opening one), it counts as lost.
    """
    where = target(config)
    if isinstance(exc, TimeoutError) and not connecting:
        return QueryTimeoutError(
            f"a statement on {where} took longer than command_timeout={config.command_timeout:g}s. "
            "Raise command_timeout or make the work smaller."
        )
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return ConfigurationError(f"the connection settings for {where} are invalid: {exc}")
    if isinstance(exc, asyncpg.TargetServerAttributeNotMatched):
        return DatabaseConnectionError(
            f"no server among {where} accepts this session ({exc}); during a failover the new "
            "primary accepts writes once promoted. Retry, or check target_session_attrs."
        )
    user = config.username if not config.dsn else "the configured user"
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return AuthenticationError(
            f"PostgreSQL at {where} refused user {user}: {exc}. Verify username and password "
            "(or the dsn), and that pg_hba.conf allows this user from this host."
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DatabaseNotFoundError(
            f"database at {where} does not exist: {exc}. Create the database first "
            "(createdb NAME, or CREATE DATABASE NAME in psql) or configure another."
        )
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return PermissionDeniedError(
            f"permission denied on {where}: {exc}. OmniQ needs CREATE on the database (to create "
            "its schema) and on the schema, or an administrator who applied `omniq sql` for you."
        )
    if isinstance(exc, asyncpg.QueryCanceledError):
        return QueryTimeoutError(
            f"a statement on {where} was cancelled after the statement timeout: {exc}. "
            "Raise command_timeout (or the server's statement_timeout) or make the work smaller."
        )
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return DatabaseConnectionError(
            f"PostgreSQL at {where} has no free connection slots: {exc}. Lower max_connections of "
            "your pools or raise the server's max_connections."
        )
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return DatabaseConnectionError(
            f"PostgreSQL at {where} is starting up or shutting down: {exc}"
        )
    plain = type(exc) is asyncpg.InterfaceError
    lost = isinstance(exc, asyncpg.ConnectionDoesNotExistError | asyncpg.PostgresConnectionError)
    if lost or (plain and closed is not False):
        return DatabaseConnectionError(
            f"connection to PostgreSQL at {where} failed or was lost: {exc}"
        )
    if isinstance(exc, asyncpg.AdminShutdownError | asyncpg.CrashShutdownError):
        return DatabaseConnectionError(
            f"PostgreSQL at {where} shut down: {exc}. Retry when it is back."
        )
    if isinstance(exc, OSError | TimeoutError) and not isinstance(exc, asyncpg.PostgresError):
        reason = str(exc) or type(exc).__name__
        return DatabaseConnectionError(
            f"cannot connect to PostgreSQL at {where}: {reason}. Check that the server is running "
            "and reachable there, or set host/port (or dsn) to where it is."
        )
    return None


class Spare:
    """The pooled connection OmniQ's last operation released, kept in hand for the next one.

    asyncpg's acquire and release cost more than the rest of a small operation's client side:
    a producer enqueueing one task at a time on a held connection ran 15-20% faster than
    through the pool (the release alone runs shielded, in a task of its own). So an operation
    of OmniQ's own (they leave no session state: see _keep_session) keeps the connection here
    instead of releasing it, and the next operation of any kind takes it without asking the
    pool. It still counts as one of the pool's connections. It goes back to the pool when the
    operation failed or left a transaction open, when someone is waiting for the pool, and
    when the backend closes.
    """

    __slots__ = ("conn", "waiting", "closed")

    def __init__(self) -> None:
        self.conn: PoolConnectionProxy | None = None
        self.waiting = 0  # callers inside pool.acquire: a released connection goes to them
        self.closed = False  # the pool is closing: every connection goes back to it

    def take(self) -> PoolConnectionProxy | None:
        conn, self.conn = self.conn, None
        return conn

    def wants(self) -> bool:
        """Whether a connection released now should be kept rather than given back."""
        return self.conn is None and not self.waiting and not self.closed


class Pooled:
    """``async with Pooled(...) as conn``: a pooled connection with errors translated.

    Every operation goes through here, so it is a plain class rather than a stack of
    generator-based context managers, and it skips asyncpg's timeout machinery when a
    connection is idle (taking it cannot block then). With ``spare``, the connection kept
    there is taken first; with ``keep`` as well, a clean connection is kept there afterwards.
    """

    __slots__ = ("_config", "_timeout", "_pool", "_ready", "_conn", "_spare", "_keep")

    def __init__(
        self,
        config: PostgresConfig,
        timeout: float,
        pool: asyncpg.Pool | None = None,
        ready: Callable[[], Awaitable[asyncpg.Pool]] | None = None,
        spare: Spare | None = None,
        keep: bool = False,
    ) -> None:
        self._config, self._timeout, self._pool, self._ready = config, timeout, pool, ready
        self._conn: PoolConnectionProxy | None = None
        self._spare, self._keep = spare, keep

    async def __aenter__(self) -> PoolConnectionProxy:
        if self._pool is None:
            assert self._ready is not None
            self._pool = await self._ready()
        pool, spare = self._pool, self._spare
        if spare is not None and (kept := spare.take()) is not None:
            if _is_closed(kept) is False:
                self._conn = kept
                return kept
            await pool.release(kept)  # lost while kept: the pool replaces it (or has)
        try:
            if pool.get_idle_size():
                self._conn = await pool.acquire()
            elif spare is None:
                self._conn = await pool.acquire(timeout=self._timeout)
            else:
                spare.waiting += 1
                try:
                    self._conn = await pool.acquire(timeout=self._timeout)
                finally:
                    spare.waiting -= 1
        except TimeoutError:
            raise PoolExhaustedError(
                f"no pooled connection to {target(self._config)} became free within "
                f"{self._timeout:g}s: all {self._config.max_connections} are in use. Increase "
                "max_connections or hold connections for less time."
            ) from None
        except Exception as exc:
            # A plain InterfaceError from acquire is the pool's state (closing, closed): not
            # a lost connection. Opening a connection fails with the errors translate() knows.
            translated = translate(exc, self._config, closed=False)
            if translated is None:
                raise
            raise translated from exc
        return self._conn

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        assert self._pool is not None and self._conn is not None
        closed = _is_closed(self._conn)  # before release, which detaches the proxy
        spare = self._spare
        if (
            self._keep
            and spare is not None
            and exc is None
            and closed is False
            and spare.wants()
            and not self._conn.is_in_transaction()
        ):
            spare.conn = self._conn
            return
        await self._pool.release(self._conn)
        _reraise_translated(exc, self._config, closed)


class Given:
    """``async with Given(conn, config) as conn``: the caller's own connection, errors translated."""

    __slots__ = ("_conn", "_config")

    def __init__(self, conn: Connection, config: PostgresConfig) -> None:
        self._conn, self._config = conn, config

    async def __aenter__(self) -> Connection:
        return self._conn

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        _reraise_translated(exc, self._config, _is_closed(self._conn))


def _is_closed(conn: Connection) -> bool | None:
    """Whether the connection is closed; None when unknown (a pool's proxy that asyncpg
    already took back, as it does after a statement timeout)."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return None


def _reraise_translated(
    exc: BaseException | None, config: PostgresConfig, closed: bool | None
) -> None:
    if isinstance(exc, Exception) and not isinstance(exc, OmniQError):
        translated = translate(exc, config, connecting=False, closed=closed)
        if translated is not None:
            raise translated from exc
