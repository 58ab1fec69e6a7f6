"""sql/: named queries loaded by aiosql, scripts loaded untouched, no SQL in Python, and a
schema that matches the specification and migrates once, idempotently and concurrently."""

from __future__ import annotations

import ast
import asyncio
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from conftest import drop_schemas, latest_migration, unique_schema

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.sqlfiles import SQL_DIR, SQLFiles, sql_files
from omniq.models.config import PostgresConfig

REPO = Path(__file__).resolve().parents[1]
SQL_FILES = sorted(
    p for kind in ("migrations", "functions", "queries") for p in (SQL_DIR / kind).glob("*.sql")
)
NAME_LINE = re.compile(r"^--\s*name:\s*([\w-]+)(\([^)]*\))?([^\s(]*)\s*$")


def named_queries(path: Path) -> list[tuple[str, str, int]]:
    """(name, suffix, line index) of every ``-- name:`` line."""
    found = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.startswith("-- name:"):
            match = NAME_LINE.match(line)
            assert match, f"{path.name}:{i + 1}: malformed name line {line!r}"
            found.append((match.group(1), match.group(3), i))
    return found


def strip_comment_lines(text: str) -> list[str]:
    return [
        ln.rstrip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("--")
    ]


# -- the files ---------------------------------------------------------------------------


def test_layout() -> None:
    kinds = {p.parent.name for p in SQL_FILES}
    assert kinds == {"migrations", "functions", "queries"}
    assert [p.name for p in sorted((SQL_DIR / "migrations").glob("*.sql"))][0] == "0001_initial.sql"
    assert Path(REPO, "omniq", "sql").resolve() == SQL_DIR.resolve()  # shipped in the package


@pytest.mark.parametrize("path", SQL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_file_starts_with_a_comment_and_documents_every_query(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("--"), f"{path.name} must open with a -- comment saying what it holds"
    lines = text.splitlines()
    queries = named_queries(path)
    assert queries, f"{path.name} holds no named query"
    if path.parent.name != "queries":
        # One script per file, documented by the file's opening comment above its name line.
        assert [s for _n, s, _i in queries] == ["#"], "a migration or function file is one script"
        assert all(ln.startswith("--") for ln in lines[: queries[0][2]] if ln.strip())
        return
    for name, _suffix, i in queries:
        doc = lines[i + 1] if i + 1 < len(lines) else ""
        assert doc.startswith("-- ") and len(doc) > 8, f"{path.name}: {name} has no doc comment"


def test_query_names_are_unique_across_sql() -> None:
    names = Counter(name for path in SQL_FILES for name, _s, _i in named_queries(path))
    assert [n for n, c in names.items() if c > 1] == []


def test_loaded_queries_carry_their_docs() -> None:
    files = SQLFiles()
    loaded = 0
    for path in sorted((SQL_DIR / "queries").glob("*.sql")):
        namespace = getattr(files, path.stem)
        expected = {name for name, _s, _i in named_queries(path)}
        # aiosql adds a <name>_cursor variant of each select
        named = {k: q for k, q in vars(namespace).items() if not k.endswith("_cursor")}
        assert set(named) == expected
        for query in named.values():
            assert query.doc.strip(), query.name
            assert not re.search(r"(?<![:\w]):[a-z_]+\b", query.sql), (query.name, query.sql)
            loaded += 1
    assert loaded >= 40


def test_scripts_are_loaded_without_parameter_rewriting() -> None:
    files = SQLFiles()
    scripts = files.migration_scripts + files.function_scripts
    assert {s.name for s in scripts} == {
        f"{p.parent.name}/{p.name}" for p in SQL_FILES if p.parent.name != "queries"
    }
    for script in scripts:
        raw = (SQL_DIR / script.name).read_text().split("#\n", 1)[1]
        assert not re.search(r"\$\d", script.sql), (
            f"{script.name}: a parameter placeholder crept in"
        )
        # Byte for byte the file's statements (aiosql only drops the comment lines).
        assert strip_comment_lines(script.sql) == strip_comment_lines(raw), script.name


def test_queries_qualify_every_omniq_object() -> None:
    """Queries run on callers' connections too (transactional enqueue), whatever their
    search_path: every table and function of OmniQ is named with the schema marker."""
    bare_table = re.compile(
        r"\b(FROM|JOIN|INTO|UPDATE|TABLE)\s+(tasks|results|events|schedules|omniq_\w+)\b", re.I
    )
    for path in sorted((SQL_DIR / "queries").glob("*.sql")):
        for line in strip_comment_lines(path.read_text()):
            assert not bare_table.search(line), f"{path.name}: unqualified table in {line!r}"
            for match in re.finditer(r"(\S*?)\bomniq_\w+\s*\(", line):
                assert match.group(1).endswith('"public".'), f"{path.name}: {line!r}"


def test_no_sql_in_python() -> None:
    statement = re.compile(
        r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\S+\s+SET\b|\bDELETE\s+FROM\b"
        r"|\b(CREATE|DROP|ALTER)\s+(OR\s+REPLACE\s+)?(TABLE|INDEX|FUNCTION|SCHEMA|TRIGGER|VIEW)\b"
    )
    offenders = []
    for path in sorted((REPO / "omniq").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            if statement.search(text):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {text[:60]!r}")
    assert offenders == []


SQL_STATEMENT = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\S+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\b(CREATE|DROP|ALTER)\s+(OR\s+REPLACE\s+)?(TABLE|INDEX|FUNCTION|SCHEMA|TRIGGER|VIEW)\b"
    r"|\bSELECT\s+[\w\"*(]+\s*$|\b(SELECT|DELETE\s+FROM|UPDATE|INSERT\s+INTO|TRUNCATE)\s*$"
)
DRIVER_CALLS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor"}


def _text_of(node: ast.AST) -> str | None:
    """The literal text of a str constant or of an f-string's constant parts."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.BinOp):
        parts = [_text_of(node.left), _text_of(node.right)]
        return " ".join(p for p in parts if p) or None
    return None


def _built(node: ast.AST) -> bool:
    """A string assembled at run time: f-string with values, %, +, .format/.format_map."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("format", "format_map")
    )


def test_no_sql_is_built_from_strings() -> None:
    """Security: no SQL text is assembled from pieces anywhere in omniq/ (f-strings, %, +,
    .format), and nothing handed to the driver is assembled either. Names are substituted
    in one place only (sqlfiles.py), as quoted identifiers replacing fixed tokens."""
    offenders = []
    for path in sorted((REPO / "omniq").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if _built(node):
                target = node.func.value if isinstance(node, ast.Call) else node  # type: ignore[attr-defined]
                text = _text_of(target)
                if text and SQL_STATEMENT.search(text):
                    offenders.append(f"{where}: SQL assembled from pieces: {text[:60]!r}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in DRIVER_CALLS
                and node.args
                and _built(node.args[0])
            ):
                offenders.append(f"{where}: {node.func.attr}() gets a string built at run time")
    assert offenders == []


def test_the_sql_scan_catches_what_it_should() -> None:
    """The scanner above is not vacuous: it flags each way of building SQL from text."""
    caught = [
        'conn.execute(f"SELECT * FROM {table}")',
        'q = "SELECT id FROM " + table',
        'q = "DELETE FROM %s" % table',
        'q = "UPDATE {} SET x = 1".format(table)',
        'conn.fetch("SELECT " + "1")',
        'q = f"SELECT {column}"',
        'q = "INSERT INTO " + table',
    ]
    fine = ["conn.execute(query.sql)", 'raise ValueError(f"no CREATE on schema {name}")']
    for source in caught + fine:
        flagged = False
        for node in ast.walk(ast.parse(source)):
            if _built(node):
                target = node.func.value if isinstance(node, ast.Call) else node  # type: ignore[attr-defined]
                flagged |= bool(
                    (_text_of(target) or "") and SQL_STATEMENT.search(_text_of(target) or "")
                )
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                flagged |= (
                    node.func.attr in DRIVER_CALLS and bool(node.args) and _built(node.args[0])
                )
        assert flagged == (source in caught), source


# -- the schema in the database ----------------------------------------------------------

SPEC_TABLES = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, queue_name TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending', func TEXT NOT NULL, args JSONB NOT NULL,
    kwargs JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL, run_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ, retry_count INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL DEFAULT 3, retry_delay REAL NOT NULL DEFAULT 1.0,
    dependencies JSONB NOT NULL DEFAULT '[]', callbacks JSONB NOT NULL DEFAULT '{}',
    metadata JSONB NOT NULL DEFAULT '{}', task_data JSONB NOT NULL
);
CREATE TABLE results (
    task_id TEXT PRIMARY KEY, status TEXT NOT NULL DEFAULT 'pending', result JSONB, error TEXT,
    error_type TEXT, traceback TEXT, created_at TIMESTAMPTZ NOT NULL, started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ, expires_at TIMESTAMPTZ, worker_id TEXT, execution_time REAL,
    memory_usage BIGINT, metadata JSONB NOT NULL DEFAULT '{}', result_data JSONB NOT NULL
);
CREATE TABLE events (
    id TEXT PRIMARY KEY, task_id TEXT NOT NULL, event_type TEXT NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL, message TEXT, details JSONB NOT NULL DEFAULT '{}',
    worker_id TEXT, queue_name TEXT, schedule_id TEXT, error_type TEXT, error_message TEXT,
    traceback TEXT, execution_time REAL, memory_usage BIGINT,
    metadata JSONB NOT NULL DEFAULT '{}', event_data JSONB NOT NULL
);
CREATE TABLE schedules (
    id TEXT PRIMARY KEY, schedule_type TEXT NOT NULL, func TEXT NOT NULL,
    args JSONB NOT NULL DEFAULT '[]', kwargs JSONB NOT NULL DEFAULT '{}',
    queue_name TEXT NOT NULL DEFAULT 'default', cron_expression TEXT, interval_seconds REAL,
    timestamp TIMESTAMPTZ, status TEXT NOT NULL DEFAULT 'active', created_at TIMESTAMPTZ NOT NULL,
    last_run TIMESTAMPTZ, next_run TIMESTAMPTZ, max_runs INTEGER,
    run_count INTEGER NOT NULL DEFAULT 0, ttl_seconds REAL, expires_at TIMESTAMPTZ,
    metadata JSONB NOT NULL DEFAULT '{}', schedule_data JSONB NOT NULL
);
"""


async def columns(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, tuple]:
    rows = await conn.fetch(
        "SELECT column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        schema,
        table,
    )
    qualified = (f'"{schema}".', f"{schema}.")  # serial defaults name their sequence

    def default(value: str | None) -> str | None:
        for prefix in qualified:
            value = value.replace(prefix, "") if value else value
        return value

    return {r["column_name"]: (r[1], r[2], default(r[3])) for r in rows}


async def test_tables_columns_and_defaults_match_the_specification(
    backend: PostgreSQLBackend, admin: asyncpg.Connection
) -> None:
    spec = unique_schema("spec")
    await admin.execute(f"CREATE SCHEMA {spec}; SET search_path TO {spec}; {SPEC_TABLES}")
    await admin.execute("RESET search_path")
    try:
        for table in ("tasks", "results", "events", "schedules"):
            want = await columns(admin, spec, table)
            have = await columns(admin, backend.config.schema, table)
            assert want.keys() <= have.keys(), (table, want.keys() - have.keys())
            for name, (data_type, nullable, default) in want.items():
                got_type, got_nullable, got_default = have[name]
                assert (got_type, got_nullable) == (data_type, nullable), (table, name)
                if default is not None:
                    assert got_default == default, (table, name)
            pkey = await admin.fetchval(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE i.indrelid = $1::regclass AND i.indisprimary",
                f'"{backend.config.schema}".{table}',
            )
            assert pkey == ("task_id" if table == "results" else "id")
    finally:
        await admin.execute(f"DROP SCHEMA {spec} CASCADE")


async def test_partial_index_serves_dequeue(
    backend: PostgreSQLBackend, admin: asyncpg.Connection
) -> None:
    indexes = await admin.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'tasks'",
        backend.config.schema,
    )
    defs = [r["indexdef"] for r in indexes]
    assert any(
        "priority DESC" in d and "created_at" in d and "WHERE (status = 'pending'::text)" in d
        for d in defs
    ), defs


async def test_migrating_again_does_nothing(
    backend: PostgreSQLBackend, make_backend, admin: asyncpg.Connection
) -> None:
    table = f'"{backend.config.schema}".omniq_migrations'
    before = await admin.fetch(f"SELECT name, checksum, applied_at FROM {table} ORDER BY name")  # noqa: S608
    assert len(before) == len(backend.sql.migration_scripts) + len(backend.sql.function_scripts)
    assert await backend.migrate() == []
    assert await backend.migrate(dry_run=True) == []
    assert await backend.schema_version() == latest_migration()
    await make_backend(dsn=backend.config.dsn, schema=backend.config.schema)
    after = await admin.fetch(f"SELECT name, checksum, applied_at FROM {table} ORDER BY name")  # noqa: S608
    assert after == before


async def test_changed_function_file_is_applied_again(
    backend: PostgreSQLBackend, make_backend, admin: asyncpg.Connection
) -> None:
    table = f'"{backend.config.schema}".omniq_migrations'
    await admin.execute(
        f"UPDATE {table} SET checksum = 'outdated' WHERE name = 'functions/tasks.sql'"  # noqa: S608
    )
    assert await backend.migrate(dry_run=True) == ["functions/tasks.sql"]
    await make_backend(dsn=backend.config.dsn, schema=backend.config.schema)  # migrates on connect
    checksum = await admin.fetchval(
        f"SELECT checksum FROM {table} WHERE name = 'functions/tasks.sql'"  # noqa: S608
    )
    assert checksum == next(
        s.checksum for s in backend.sql.function_scripts if s.name.endswith("tasks.sql")
    )
    assert await backend.migrate(dry_run=True) == []


async def test_dry_run_on_a_fresh_schema_creates_nothing(
    pg_dsn: str, admin: asyncpg.Connection
) -> None:
    schema = unique_schema()
    backend = PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=schema))
    planned = await backend.migrate(dry_run=True)
    assert planned[0] == "migrations/0001_initial.sql"
    assert set(planned) == {
        s.name for s in backend.sql.migration_scripts + backend.sql.function_scripts
    }
    assert await admin.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 0


async def applied(admin: asyncpg.Connection, schema: str) -> tuple[int, int]:
    table = f'"{schema}".omniq_migrations'
    return (
        await admin.fetchval(f"SELECT count(*) FROM {table}"),  # noqa: S608
        await admin.fetchval(f"SELECT count(DISTINCT applied_at) FROM {table}"),  # noqa: S608
    )


async def test_ten_backends_migrate_a_fresh_schema_at_once(
    pg_dsn: str, admin: asyncpg.Connection
) -> None:
    schema = unique_schema()
    backends = [
        PostgreSQLBackend(PostgresConfig(dsn=pg_dsn, schema=schema, min_connections=1))
        for _ in range(10)
    ]
    try:
        await asyncio.gather(*(b.connect() for b in backends))
        versions = await asyncio.gather(*(b.schema_version() for b in backends))
        assert versions == [latest_migration()] * 10
        scripts = len(sql_files(schema, tuple(PostgresConfig().tables.items())).migration_scripts)
        count, transactions = await applied(admin, schema)
        assert count >= scripts and transactions == 1  # one migrator did it all
    finally:
        await asyncio.gather(*(b.close() for b in backends))
        await drop_schemas(pg_dsn, schema)


MIGRATOR = """
import asyncio, sys
from omniq.backend.postgres import create_async_postgres_backend

async def main():
    backend = create_async_postgres_backend(dsn=sys.argv[1], schema=sys.argv[2])
    sys.stdin.readline()  # start together
    async with backend:
        print(await backend.schema_version())

asyncio.run(main())
"""


async def test_six_processes_migrate_a_fresh_schema_at_once(
    pg_dsn: str, admin: asyncpg.Connection
) -> None:
    schema = unique_schema()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATOR,
            pg_dsn,
            schema,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        for _ in range(6)
    ]
    try:
        await asyncio.sleep(0.5)  # let the interpreters import
        results = await asyncio.wait_for(
            asyncio.gather(*(p.communicate(b"go\n") for p in procs)), 90
        )
        assert [p.returncode for p in procs] == [0] * 6, [err.decode()[-500:] for _, err in results]
        assert [out.strip() for out, _ in results] == [str(latest_migration()).encode()] * 6
        assert (await applied(admin, schema))[1] == 1
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await drop_schemas(pg_dsn, schema)


# -- psql ----------------------------------------------------------------------------------


def psql_path() -> str:
    try:
        from omniq.embedded import find_bindir

        return str(find_bindir() / "psql")
    except RuntimeError:
        found = shutil.which("psql")
        if not found:
            pytest.skip("psql not installed")
        return found


async def test_migration_and_function_files_run_in_psql_as_written(
    pg_dsn: str, make_backend, admin: asyncpg.Connection
) -> None:
    """With the default names the files are plain SQL: psql builds the same schema."""
    parts = urlsplit(pg_dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        pytest.skip("needs a URL-style DSN")
    database = f"omniq_psql_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {database}")
    try:
        target = urlunsplit(parts._replace(path="/" + database))
        files = [str(p) for p in SQL_FILES if p.parent.name == "migrations"]
        files += [str(p) for p in SQL_FILES if p.parent.name == "functions"]
        args = [psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", target]
        for path in files:
            args += ["-f", path]
        proc = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        other = await asyncpg.connect(target)
        library = await make_backend()
        try:
            for table in ("tasks", "results", "events", "schedules", "omniq_workers"):
                by_psql = await columns(other, "public", table)
                assert by_psql == await columns(admin, library.config.schema, table), table
            functions = (
                "SELECT proname FROM pg_proc WHERE pronamespace = $1::regnamespace ORDER BY 1"
            )
            by_psql_functions = [r[0] for r in await other.fetch(functions, "public")]
            library_functions = [
                r[0] for r in await admin.fetch(functions, f'"{library.config.schema}"')
            ]
            assert by_psql_functions == library_functions
        finally:
            await other.close()
    finally:
        await admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
