"""Reading query plans on a big installation (tests/integration/test_plans.py and the
dashboard's reads): every node of a plan, and the check that it uses the index its comment names."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.sqlfiles import Query, SQLFiles
from omniq.identifiers import quote_identifier
from omniq.models.config import PostgresConfig
from tests.support.db import drop_schemas, unique_schema

BIG_TABLES = frozenset({"tasks", "results", "events"})
INDEX_NAME = re.compile(r"\b[a-z_]+_(?:idx|pkey)\b")
RUNS = 7  # PostgreSQL considers a generic plan from the sixth execution of a statement on


@dataclass
class BigInstallation:
    dsn: str
    schema: str
    files: SQLFiles
    conn: asyncpg.Connection
    auto_explain: bool
    notices: list[str] = field(default_factory=list)

    def query(self, file: str, name: str) -> Query:
        return getattr(getattr(self.files, file), name)


@contextlib.asynccontextmanager
async def big_installation(
    dsn: str, prefix: str, load: str, then: Sequence[str] = ()
) -> AsyncIterator[BigInstallation]:
    """A fresh installation (made the way every backend makes one) filled by ``load``, SQL run
    with its schema first on the search path, then each statement of ``then`` on its own
    (VACUUM runs outside a transaction); with auto_explain loaded when the server has it."""
    name = unique_schema(prefix)
    backend = PostgreSQLBackend(PostgresConfig(dsn=dsn, schema=name, max_connections=1))
    try:
        await backend.connect()
        files = backend.sql
    finally:
        await backend.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"SET search_path TO {quote_identifier(name)}")
        await conn.execute(load)
        for statement in then:
            await conn.execute(statement)
        await conn.execute("RESET search_path")
        try:
            await conn.execute("LOAD 'auto_explain'")
            auto_explain = True
        except asyncpg.PostgresError:  # not a superuser, or contrib missing
            auto_explain = False
        installation = BigInstallation(dsn, name, files, conn, auto_explain)
        conn.add_log_listener(lambda _c, msg: installation.notices.append(msg.message))
        yield installation
    finally:
        await conn.close()
        await drop_schemas(dsn, name)


def scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan tree."""
    yield plan
    for child in plan.get("Plans", []):
        yield from scans(child)


def check(plans: list[dict[str, Any]], expected: set[str], where: str) -> None:
    nodes = [node for plan in plans for node in scans(plan)]
    seq = sorted({n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"} & BIG_TABLES)
    assert not seq, f"{where}: sequential scan of {seq}\n{_show(plans)}"
    used = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert used & expected, (
        f"{where}: uses {sorted(used)}, comment names {sorted(expected)}\n{_show(plans)}"
    )


async def check_query(
    big: BigInstallation, query: Query, params: dict[str, Any], where: str
) -> None:
    """The query's EXPLAIN, and (with auto_explain) each of its RUNS executions as the backend
    runs it, use an index its comment names and scan no big table sequentially."""
    expected = expected_indexes(query)
    assert expected, f"{where}: its comment names no index"
    check([await explain(big, query, params)], expected, f"EXPLAIN {where}")
    if big.auto_explain:  # the generic plan too, after the fifth execution
        for i, plans in enumerate(await logged_plans(big, query, params), start=1):
            check(plans, expected, f"{where}, execution {i}")


def _show(plans: list[dict[str, Any]]) -> str:
    lines = []
    for plan in plans:
        stack = [(plan, 0)]
        while stack:
            node, depth = stack.pop()
            target = node.get("Index Name") or node.get("Relation Name") or ""
            lines.append("  " * depth + f"{node['Node Type']} {target}".rstrip())
            stack.extend((child, depth + 1) for child in reversed(node.get("Plans", [])))
        lines.append("--")
    return "\n".join(lines)


def expected_indexes(query: Query) -> set[str]:
    return set(INDEX_NAME.findall(query.doc))


async def explain(big: BigInstallation, query: Query, params: dict[str, Any]) -> dict[str, Any]:
    out = await big.conn.fetchval("EXPLAIN (FORMAT JSON) " + query.sql, *query.args(params))
    return json.loads(out)[0]["Plan"]


async def logged_plans(big: BigInstallation, query: Query, params: dict[str, Any]) -> list[list]:
    """Run the query RUNS times as the backend does; the plans auto_explain logged, per run."""
    conn = big.conn
    await conn.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
        "SET auto_explain.log_format = json; SET auto_explain.log_level = notice"
    )
    runs = []
    try:
        for _ in range(RUNS):
            big.notices.clear()
            tr = conn.transaction()
            await tr.start()
            try:
                await query(conn, **params)
            finally:
                await tr.rollback()  # also lets the NOTICE callbacks run
            plans = []
            for message in big.notices:
                start = message.find("{")
                if message.startswith("duration:") and start >= 0:
                    plans.append(json.loads(message[start:])["Plan"])
            runs.append(plans)
    finally:
        await conn.execute("RESET auto_explain.log_min_duration")
    return runs
