"""Loads sql/ with aiosql and renders the configured schema and table names, in one place.

The .sql files name OmniQ's objects with the defaults written as quoted identifiers
("public", "tasks", "results", "events", "schedules"), so each file runs unchanged in psql.
Rendering replaces exactly those quoted tokens with the configured names, quoted by
omniq.identifiers; no other text of the files is touched and no user text is pasted in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from functools import cache, cached_property
from pathlib import Path
from typing import cast

import aiosql
from aiosql.types import AsyncDriverAdapterProtocol, SQLOperationType

from ...identifiers import quote_identifier
from .queries import QueryFiles
from .query import Query, number_parameters

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
MARKERS = re.compile(r'"(public|tasks|results|events|schedules)"')


class Script:
    """A migration or function file: one ``#`` script applied as a whole. Its SQL is parsed
    when first asked for: a process whose schema is current needs only the checksums, and
    parsing every file cost a worker 60 ms of its start."""

    def __init__(self, path: Path, names: dict[str, str]) -> None:
        self.name = f"{path.parent.name}/{path.name}"
        self._text = path.read_text()
        self._names = names
        self.checksum = hashlib.sha256(self._text.encode()).hexdigest()[:16]

    @cached_property
    def sql(self) -> str:
        (query,) = _load_queries(render(self._text, self._names)).values()
        return query.sql


class SQLFiles(QueryFiles):
    """Every query of sql/queries as ``files.<file>.<query>`` (typed: see queries.py);
    migrations and functions as scripts."""

    def __init__(self, schema: str = "public", tables: dict[str, str] | None = None) -> None:
        names = {"public": schema, **(tables or {})}
        self.names = names
        self.migration_scripts = [Script(p, names) for p in _files("migrations")]
        self.function_scripts = [Script(p, names) for p in _files("functions")]
        self.queries = {
            path.stem: _load_queries(render(path.read_text(), names)) for path in _files("queries")
        }
        super().__init__(self.queries)


def render(text: str, names: dict[str, str]) -> str:
    """Replace the quoted default names by the configured ones, quoted."""
    return MARKERS.sub(lambda m: quote_identifier(names.get(m.group(1), m.group(1))), text)


@cache
def sql_files(schema: str, tables: tuple[tuple[str, str], ...]) -> SQLFiles:
    """Rendered files for one configuration, shared by every backend using it."""
    return SQLFiles(schema, dict(tables))


def _files(kind: str) -> Sequence[Path]:
    return sorted((SQL_DIR / kind).glob("*.sql"))


class _AsWritten:
    """An aiosql driver adapter (aiosql's public extension point) that leaves the SQL as
    written: the parameters are numbered here, in the order of the ``-- name:`` header."""

    is_aio_driver = True

    def process_sql(self, query_name: str, op_type: SQLOperationType, sql: str) -> str:
        return sql


def _load_queries(text: str) -> dict[str, Query]:
    # aiosql calls only process_sql: the query functions it builds are never called.
    loaded = aiosql.from_str(text, cast("Callable[..., AsyncDriverAdapterProtocol]", _AsWritten))
    queries = {}
    for name in loaded.available_queries:
        if name.endswith("_cursor"):  # aiosql's cursor variant of each select: not used
            continue
        fn = getattr(loaded, name)
        params = tuple(fn.parameters or ())
        sql = fn.sql
        if fn.operation is not SQLOperationType.SCRIPT:  # scripts (PL/pgSQL) are run as written
            sql = number_parameters(name, sql, params)
        queries[name] = Query(name, sql, params, fn.operation, fn.__doc__ or "")
    return queries
