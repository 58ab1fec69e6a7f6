"""The exceptions OmniQ raises, each saying what went wrong and what to do about it; and which
errors are worth trying again (:func:`is_transient`), with how long to wait (:class:`Backoff`)."""

from __future__ import annotations


class OmniQError(Exception):
    """Base class of OmniQ's own errors."""


class DatabaseConnectionError(OmniQError, ConnectionError):
    """PostgreSQL could not be reached, or the connection was lost (a ``ConnectionError``)."""


class AuthenticationError(DatabaseConnectionError):
    """The server refused the username or password."""


class DatabaseNotFoundError(DatabaseConnectionError):
    """The configured database does not exist on the server."""


class PermissionDeniedError(OmniQError, PermissionError):
    """The database user lacks a privilege OmniQ needs."""


class PoolExhaustedError(OmniQError, TimeoutError):
    """Every pooled connection stayed busy for longer than ``acquire_timeout``."""


class QueryTimeoutError(OmniQError, TimeoutError):
    """A statement ran longer than ``command_timeout`` or the server's statement_timeout."""


class SchemaError(OmniQError):
    """The schema holds an incompatible OmniQ installation, or migrating it failed."""


class DuplicateTaskError(OmniQError, ValueError):
    """A task with this id already exists."""


class UnknownDependencyError(OmniQError, ValueError):
    """A task names a dependency that is not a known task id."""


class ConfigurationError(OmniQError, ValueError):
    """A setting is malformed (a DSN that is neither a URL nor a libpq string, ...): fix the
    setting; retrying cannot help, so it is deliberately not a ``ConnectionError``."""


class TaskNotFoundError(OmniQError, LookupError):
    """No task and no result has this id: it was never enqueued (or its transaction has not
    committed yet), or it was purged together with its result."""


class TaskImportError(OmniQError):
    """A task's ``func`` could not be imported or is not callable: the task fails, with this
    error's message as its error (also importable from ``omniq.worker``)."""


# -- transient errors: the same operation may well work when tried again --------------------

# SQLSTATEs of that kind: transaction rollback (class 40: deadlock, serialization failure), a
# read-only transaction (25006: the primary became a standby), the server starting up or
# shutting down (57P03).
_TRANSIENT_SQLSTATES = ("40", "25006", "57P03")


def is_transient(exc: BaseException) -> bool:
    """True for an error after which trying again may well work: the connection was refused or
    lost (a restart, a failover), a timeout (pool exhausted, statement timeout), a deadlock.

    The worker, its outcome writes and heartbeats, the scheduler and ``omniq status --watch``
    keep going through these, with :class:`Backoff`; anything else is a bug or bad input.
    """
    if isinstance(exc, ConnectionError | OSError | TimeoutError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)  # set on every asyncpg.PostgresError
    return isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES)


class Backoff:
    """The pause before the next attempt after a transient error: ``first`` seconds, doubling
    up to ``cap``; :meth:`reset` after a success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"need 0 < first <= cap, got first={first!r}, cap={cap!r}")
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        """The pause to take now; the one after it is twice as long (at most ``cap``)."""
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first
