"""Schema and table names: validated and quoted here, and nowhere else."""

from __future__ import annotations

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names are silently truncated


def check_identifier(value: object, what: str) -> str:
    """Return ``value`` if it can name a schema or table, else raise ValueError saying why."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if len(value.encode()) > MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"{what} {value!r} is longer than {MAX_IDENTIFIER_BYTES} bytes; PostgreSQL would truncate it"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value) or value != value.strip():
        raise ValueError(f"{what} {value!r} contains control characters or surrounding spaces")
    if what == "schema" and value.lower().startswith("pg_"):
        raise ValueError(
            f"schema {value!r} is reserved: PostgreSQL keeps names starting with 'pg_' for itself"
        )
    return value


def quote_identifier(value: str, what: str = "identifier") -> str:
    """Quote a checked name for SQL: ``my"name`` becomes ``"my""name"``, so no name can escape."""
    return '"' + check_identifier(value, what).replace('"', '""') + '"'
