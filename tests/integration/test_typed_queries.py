"""The typed named queries (omniq/backend/postgres/queries.py): generated from sql/queries by
scripts/queries with the types PostgreSQL reports, current, and numbered by the header."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from types import ModuleType

import pytest

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.query import UntypedQuery, number_parameters
from omniq.backend.postgres.sqlfiles import SQL_DIR, SQLFiles, _load_queries

ROOT = SQL_DIR.parents[1]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "omniq_scripts_queries", ROOT / "scripts" / "queries.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_the_module_is_what_the_database_says(pg_dsn: str) -> None:
    """scripts/queries, run now against the test server, writes the committed file byte for
    byte (scripts/check only compares a digest of sql/queries)."""
    queries = generator()
    text = await asyncio.to_thread(queries.generate, pg_dsn)
    assert text == queries.MODULE.read_text(), "queries.py is stale: run scripts/queries"


def test_parameters_are_numbered_in_the_order_of_the_header() -> None:
    sql = "SELECT :b, :a::int, ':a', \":b\" -- :a\n FROM t WHERE x = :b"
    assert number_parameters("q", sql, ("a", "b")) == (
        "SELECT $2, $1::int, ':a', \":b\" -- :a\n FROM t WHERE x = $2"
    )
    with pytest.raises(ValueError, match=r"uses :c, which its -- name: header does not declare"):
        number_parameters("q", "SELECT :c", ("a",))
    with pytest.raises(ValueError, match=r"declares \['b'\] .* but never uses them"):
        number_parameters("q", "SELECT :a", ("a", "b"))


async def test_a_query_added_since_generation_runs_untyped(backend: PostgreSQLBackend) -> None:
    """A query added to a .sql file before scripts/queries ran is there, untyped (mypy reports
    its use; scripts/check fails on the stale digest), so running code does not break."""
    files = SQLFiles(backend.config.schema, backend.config.tables)  # a copy of its own
    extra = _load_queries(
        "-- name: answer_plus(x, y)$\n-- The answer, plus two numbers.\nSELECT 42 + :y - :x"
    )
    files.tasks.__init__({**files.queries["tasks"], **extra})
    added = files.tasks.answer_plus  # type: ignore[attr-defined]
    assert isinstance(added, UntypedQuery)
    async with backend.acquire() as conn:
        assert await added(conn, x=1, y=3) == 44
        typed = files.tasks.count_pending
        assert type(typed).__name__ == "CountPending"
        assert await typed(conn, queue_name="nothing-here") == 0


def test_every_loaded_query_is_typed() -> None:
    files = SQLFiles()
    untyped = [
        f"{file}.{name}"
        for file, queries in files.queries.items()
        for name in queries
        if isinstance(getattr(getattr(files, file), name), UntypedQuery)
    ]
    assert untyped == [], "queries.py is stale: run scripts/queries"
