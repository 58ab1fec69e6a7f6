"""Writes omniq/backend/postgres/queries.py: a typed class for every named query of sql/queries.

    scripts/queries                 regenerate (starts a throwaway PostgreSQL, or uses --dsn)
    scripts/queries --check         exit 1 when sql/queries changed since the module was written
                                    (fast: no database; the test suite compares it in full)

Each query is prepared on a freshly migrated schema and PostgreSQL says the types of its
parameters and columns. The ``-- name:`` header gives the parameter names (keyword-only
arguments, in the header's order, which is also the ``$n`` order: see query.py) and what
the call returns: rows (no suffix), one row or ``None`` (``^``), one value of the column's
type or ``None`` (``$``), the status string (``!``, ``#``). The SQL stays in the .sql files;
the classes hold the SQL rendered for the configured schema at run time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiosql
from aiosql.types import SQLOperationType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's omniq (a stale queries.py still imports)

SQL_QUERIES = ROOT / "omniq" / "sql" / "queries"
MODULE = ROOT / "omniq" / "backend" / "postgres" / "queries.py"
MODULE_NAME = "omniq.backend.postgres.queries"
SOURCE_LINE = "# source: sql/queries sha256 "

# PostgreSQL type name -> the Python type asyncpg gives (a result) and takes (a parameter).
SCALARS = {
    "bool": "bool",
    "int2": "int",
    "int4": "int",
    "int8": "int",
    "oid": "int",
    "float4": "float",
    "float8": "float",
    "numeric": "Decimal",
    "text": "str",
    "varchar": "str",
    "bpchar": "str",
    "name": "str",
    "char": "str",
    "timestamptz": "datetime",
    "timestamp": "datetime",
    "date": "date",
    "interval": "timedelta",
    "uuid": "UUID",
    "bytea": "bytes",
    "json": "Any",  # the JSONB codec (connection.py) decodes to any JSON value
    "jsonb": "Any",
    "void": "None",
}
IMPORTS = {
    "Decimal": "from decimal import Decimal",
    "datetime": "from datetime import datetime",
    "date": "from datetime import date",
    "timedelta": "from datetime import timedelta",
    "UUID": "from uuid import UUID",
}


@dataclass(frozen=True)
class Header:
    """What a query's ``-- name:`` header and doc comment say."""

    name: str
    params: tuple[str, ...]
    operation: SQLOperationType
    doc: str


class AsWritten:
    """An aiosql adapter that leaves the SQL alone: only the headers are read here."""

    is_aio_driver = True

    def process_sql(self, query_name: str, op_type: SQLOperationType, sql: str) -> str:
        return sql


def headers() -> dict[str, dict[str, Header]]:
    """Every named query of sql/queries, by file stem, in the file's order."""
    files = {}
    for path in sorted(SQL_QUERIES.glob("*.sql")):
        loaded = aiosql.from_str(path.read_text(), AsWritten)
        names = [
            ln.split(":", 1)[1].strip()
            for ln in path.read_text().splitlines()
            if ln.startswith("-- name:")
        ]
        files[path.stem] = {}
        for line in names:
            fn = getattr(loaded, line.split("(")[0].rstrip("^$!#<*"))
            files[path.stem][fn.__name__] = Header(
                fn.__name__, tuple(fn.parameters or ()), fn.operation, fn.__doc__ or ""
            )
    return files


@dataclass(frozen=True)
class Described:
    """What PostgreSQL says about one prepared query."""

    params: tuple[str, ...]  # Python type of each $n
    columns: tuple[str, ...]  # Python type of each result column


def python_type(name: str, *, param: bool = False) -> str:
    if name.endswith("[]"):
        inner = python_type(name[:-2], param=param)
        return f"Sequence[{inner} | None]" if param else f"list[{inner}]"
    return SCALARS.get(name, "Any")


def source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(SQL_QUERIES.glob("*.sql")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def class_name(query: str) -> str:
    return "".join(part.capitalize() for part in query.split("_"))


def render_query(file: str, query: Header, described: Described | None) -> str:
    """One class: the query's typed ``__call__``."""
    params = [
        f"{p}: {python_type(t, param=True) if described else 'Any'} | None"
        for p, t in zip(
            query.params, described.params if described else ["?"] * len(query.params), strict=True
        )
    ]
    signature = ", ".join(["self", "conn: Connection", *(["*"] if params else []), *params])
    args = "".join(f", {p}" for p in query.params)
    op = query.operation
    if op is SQLOperationType.SELECT:
        result, call = "list[Record]", f"return await conn.fetch(self.sql{args})"
    elif op is SQLOperationType.SELECT_ONE:
        result, call = "Record | None", f"return await conn.fetchrow(self.sql{args})"
    elif op is SQLOperationType.SELECT_VALUE:
        column = described.columns[0] if described and described.columns else "Any"
        value = python_type(column)
        result = value if value in ("None", "Any") else f"{value} | None"
        if value == "None":
            call = f"await conn.fetchval(self.sql{args})"
        else:
            call = f"return cast({result!r}, await conn.fetchval(self.sql{args}))"
    else:  # statements and scripts: the command status
        result, call = "str", f"return await conn.execute(self.sql{args})"
    # Its comment in the .sql file says what it does and which index serves it (``.doc``).
    doc = f"{query.name}({', '.join(query.params)}) of sql/queries/{file}.sql."
    return (
        f"class {class_name(query.name)}(Query):\n"
        f'    """{doc}"""\n\n'
        f"    async def __call__({signature}) -> {result}:\n"
        f"        {call}\n"
    )


def render(
    files: dict[str, dict[str, Header]], described: dict[str, Described], digest: str
) -> str:
    parts, groups = [], []
    for file, queries in sorted(files.items()):
        fields = "".join(f"    {name}: {class_name(name)}\n" for name in queries)
        groups.append(
            f"class {class_name(file)}Queries(QueryGroup):\n"
            f'    """The queries of sql/queries/{file}.sql."""\n\n{fields}'
        )
        parts += [render_query(file, q, described.get(q.name)) for q in queries.values()]
    fields = "".join(f"    {file}: {class_name(file)}Queries\n" for file in sorted(files))
    body = "\n\n".join(parts + groups)
    body += (
        "\n\nclass QueryFiles(QueryGroups):\n"
        '    """Every file of sql/queries: ``files.tasks.get_task(conn, id=...)``."""\n\n'
        f"{fields}"
    )
    imports = sorted(
        {
            line
            for name, line in IMPORTS.items()
            if f"{name} | None" in body or f"[{name}]" in body or f"{name}]" in body
        }
    )
    header = (
        '"""Typed named queries: one class per query of sql/queries/*.sql, written by scripts/queries\n'
        'from the -- name: headers and the types PostgreSQL reports; do not edit."""\n\n'
        f"{SOURCE_LINE}{digest}\n\n"
        "from __future__ import annotations\n\n"
        "from collections.abc import Sequence\n"
        + "".join(f"{line}\n" for line in imports)
        + "from typing import Any, cast\n\n"
        "from asyncpg import Record\n\n"
        "from .connection import Connection\nfrom .query import Query, QueryGroup, QueryGroups\n\n\n"
    )
    return header + body


def ruff(text: str) -> str:
    config = str(ROOT / "pyproject.toml")
    ruff_bin = str(ROOT / ".venv" / "bin" / "ruff")
    for command in (
        [
            ruff_bin,
            "check",
            "--config",
            config,
            "--fix-only",
            "--select",
            "I,F401",
            "--stdin-filename",
            str(MODULE),
            "-",
        ],
        [ruff_bin, "format", "--config", config, "--stdin-filename", str(MODULE), "-"],
    ):
        done = subprocess.run(command, input=text, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            sys.exit(f"scripts/queries: {' '.join(command[:2])} failed:\n{done.stderr}")
        text = done.stdout
    return text


async def describe(dsn: str) -> dict[str, Described]:
    """Prepare every query on a schema of its own, migrated by OmniQ, then dropped."""
    from omniq.backend.postgres import PostgreSQLBackend
    from omniq.identifiers import quote_identifier
    from omniq.models.config import PostgresConfig

    schema = f"omniq_types_{uuid.uuid4().hex[:8]}"
    backend = PostgreSQLBackend(PostgresConfig(dsn=dsn, schema=schema, min_connections=1))
    found: dict[str, Described] = {}
    try:
        await backend.connect()
        async with backend.acquire() as conn:
            for queries in backend.sql.queries.values():
                for query in queries.values():
                    if query.operation is SQLOperationType.SCRIPT:
                        continue
                    statement = await conn.prepare(query.sql)
                    found[query.name] = Described(
                        tuple(t.name for t in statement.get_parameters()),
                        tuple(a.type.name for a in statement.get_attributes()),
                    )
            await conn.execute(f"DROP SCHEMA {quote_identifier(schema)} CASCADE")
    finally:
        await backend.close()
    return found


def generate(dsn: str) -> str:
    return ruff(render(headers(), asyncio.run(describe(dsn)), source_digest()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when sql/queries changed")
    parser.add_argument("--dsn", help="a server to prepare the queries on (default: a throwaway)")
    options = parser.parse_args()
    if options.check:
        recorded = next(
            (ln for ln in MODULE.read_text().splitlines() if ln.startswith(SOURCE_LINE)), ""
        )
        if recorded != SOURCE_LINE + source_digest():
            print(
                "scripts/queries --check: sql/queries changed since queries.py was written; "
                "run scripts/queries"
            )
            return 1
        print("scripts/queries --check: queries.py matches sql/queries")
        return 0
    if options.dsn:
        text = generate(options.dsn)
    else:
        from omniq.embedded import EmbeddedPostgres

        with EmbeddedPostgres(durable=False) as server:
            text = generate(server.dsn)
    MODULE.write_text(text)
    print(f"scripts/queries: wrote {MODULE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
