"""Loads sql/ with aiosql and renders the configured schema and table names, in one place.

The .sql files name OmniQ's objects with the defaults written as quoted identifiers
("public", "tasks", "results", "events", "schedules"), so each file runs unchanged in psql.
Rendering replaces exactly those quoted tokens with the configured names, quoted by
omniq.identifiers; no other text of the files is touched and no user text is pasted in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiosql
from aiosql.types import SQLOperationType

from ...identifiers import quote_identifier

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
MARKERS = re.compile(r'"(public|tasks|results|events|schedules)"')


@dataclass(frozen=True, slots=True)
class Query:
    """One named query: its rendered SQL with $n placeholders and the parameter order."""

    name: str
    sql: str
    params: tuple[str, ...]
    operation: SQLOperationType
    doc: str

    def args(self, values: dict[str, Any]) -> list[Any]:
        try:
            return [values[p] for p in self.params]
        except KeyError as exc:
            raise TypeError(f"query {self.name} needs parameter {exc.args[0]!r}") from None

    async def __call__(self, conn: Any, **values: Any) -> Any:
        """Run on an asyncpg connection: rows, one row, one value or a status string."""
        args = self.args(values)
        op = self.operation
        if op is SQLOperationType.SELECT:
            return await conn.fetch(self.sql, *args)
        if op is SQLOperationType.SELECT_ONE:
            return await conn.fetchrow(self.sql, *args)
        if op is SQLOperationType.SELECT_VALUE:
            return await conn.fetchval(self.sql, *args)
        return await conn.execute(self.sql, *args)


@dataclass(frozen=True, slots=True)
class Script:
    """A migration or function file: one ``#`` script applied as a whole."""

    name: str
    sql: str
    checksum: str


class SQLFiles:
    """Every query of sql/queries as ``files.<file>.<query>``; migrations and functions as scripts."""

    def __init__(self, schema: str = "public", tables: dict[str, str] | None = None) -> None:
        names = {"public": schema, **(tables or {})}
        self.names = names
        self.migration_scripts = [self._script(p, names) for p in _files("migrations")]
        self.function_scripts = [self._script(p, names) for p in _files("functions")]
        for path in _files("queries"):
            setattr(
                self, path.stem, SimpleNamespace(**_load_queries(render(path.read_text(), names)))
            )

    @staticmethod
    def _script(path: Path, names: dict[str, str]) -> Script:
        text = path.read_text()
        (query,) = _load_queries(render(text, names)).values()
        relative = f"{path.parent.name}/{path.name}"
        return Script(relative, query.sql, hashlib.sha256(text.encode()).hexdigest()[:16])


def render(text: str, names: dict[str, str]) -> str:
    """Replace the quoted default names by the configured ones, quoted."""
    return MARKERS.sub(lambda m: quote_identifier(names.get(m.group(1), m.group(1))), text)


@cache
def sql_files(schema: str, tables: tuple[tuple[str, str], ...]) -> SQLFiles:
    """Rendered files for one configuration, shared by every backend using it."""
    return SQLFiles(schema, dict(tables))


def _files(kind: str) -> Sequence[Path]:
    return sorted((SQL_DIR / kind).glob("*.sql"))


def _load_queries(text: str) -> dict[str, Query]:
    loaded = aiosql.from_str(text, "asyncpg")
    order = loaded.driver_adapter.var_sorted
    queries = {}
    for name in loaded.available_queries:
        fn = getattr(loaded, name)
        queries[name] = Query(
            name, fn.sql, tuple(order.get(name, ())), fn.operation, fn.__doc__ or ""
        )
    return queries
