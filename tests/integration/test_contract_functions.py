"""The SQL side of the version contract (issue 11), checked on the files themselves:

- a schema version has one set of function files (sql/functions/manifest.txt), so processes of
  one version never replace each other's functions;
- the Python code calls only versioned functions (``omniq_*_vN``), and each exists;
- no function returns a table's whole row type (``SETOF "tasks"``), and no query reads ``*``:
  a column a later release adds must not change what an older process receives.
"""

from __future__ import annotations

import re

import asyncpg

from omniq.backend.postgres import PostgreSQLBackend, schema, sqlfiles
from omniq.backend.postgres.sqlfiles import SQLFiles
from omniq.models.config import PostgresConfig

MANIFEST = sqlfiles.SQL_DIR / "functions" / "manifest.txt"
CALL = re.compile(r'"public"\.(omniq_\w+)\(')


def files() -> SQLFiles:
    return SQLFiles("public", PostgresConfig().tables)


def manifest() -> dict[int, dict[str, str]]:
    versions: dict[int, dict[str, str]] = {}
    for line in MANIFEST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            version, name, checksum = line.split()
            versions.setdefault(int(version), {})[name] = checksum
    return versions


def test_one_schema_version_has_one_set_of_function_files() -> None:
    current = files()
    version = schema.code_version(current)
    shipped = {s.name: s.checksum for s in current.function_scripts}
    recorded = manifest()
    block = "\n".join(f"{version} {name} {checksum}" for name, checksum in shipped.items())
    assert version in recorded, (
        f"schema version {version} has no block in {MANIFEST.name}; add:\n{block}"
    )
    assert recorded[version] == shipped, (
        f"the function files differ from what schema version {version} shipped with. A change "
        "to a function file ships with a new migration number (an empty migration is fine: "
        f"sql/migrations/{version + 1:04d}_<what changed>.sql with `-- lock: none`), then a new "
        f"block in {MANIFEST.relative_to(sqlfiles.SQL_DIR.parent)}, e.g.:\n"
        + block.replace(f"{version} ", f"{version + 1} ")
    )
    assert sorted(recorded) == list(recorded), "blocks in increasing version order"


def test_python_calls_only_versioned_functions() -> None:
    calls = set()
    for path in sorted((sqlfiles.SQL_DIR / "queries").glob("*.sql")):
        for name in CALL.findall(path.read_text()):
            calls.add(name)
            assert re.fullmatch(r"omniq_\w+_v\d+", name), (
                f"{path.name} calls {name}: the Python code calls only versioned functions "
                f"({name}_v1), so that a later release can change {name} under a new version"
            )
    assert {"omniq_enqueue_v2", "omniq_dequeue_v1", "omniq_finish_tasks_v1"} <= calls


def test_no_function_returns_a_whole_row_and_no_query_reads_star() -> None:
    for path in sorted(sqlfiles.SQL_DIR.glob("functions/*.sql")):
        assert not re.search(r"RETURNS\s+SETOF\s+\"", path.read_text()), path.name
    for path in sorted(sqlfiles.SQL_DIR.glob("queries/*.sql")):
        for query in files().__dict__[path.stem].__dict__.values():
            assert not re.search(r"SELECT\s+(\w+\.)?\*", query.sql), (path.name, query.name)


async def test_every_versioned_function_the_queries_call_exists(pg_dsn: str) -> None:
    name = "contract_functions_check"
    backend = PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=name, max_connections=1))
    conn = await asyncpg.connect(pg_dsn)
    try:
        await backend.connect()
        defined = {
            r["proname"]
            for r in await conn.fetch(
                "SELECT p.proname FROM pg_proc AS p WHERE p.pronamespace = $1::regnamespace", name
            )
        }
        called = set()
        for path in (sqlfiles.SQL_DIR / "queries").glob("*.sql"):
            called |= set(CALL.findall(path.read_text()))
        assert called - defined == set()
        # The unversioned functions only 0.1.0's Python code called are gone (migration 0010).
        assert not {"omniq_dequeue", "omniq_finish_tasks", "omniq_heartbeat"} & defined
        # The psql API keeps its names.
        assert {"omniq_enqueue", "omniq_add_task", "omniq_cancel_tasks"} <= defined
        meta = dict(await conn.fetch(f"SELECT key, value FROM {name}.omniq_meta"))  # noqa: S608
        assert meta["min_code_version"] == "10"
        assert meta["schema_version"] == str(schema.code_version(files()))
    finally:
        await backend.close()
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        await conn.close()
