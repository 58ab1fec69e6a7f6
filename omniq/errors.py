"""The exceptions OmniQ raises: each says what went wrong and what to do about it."""

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
