"""sql/ and the Python around it, read as files: named queries loaded by aiosql with their docs,
scripts loaded untouched, every OmniQ object qualified, and no SQL in Python (nor built from
strings). No database needed."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

from omniq.backend.postgres.sqlfiles import SQL_DIR, SQLFiles

REPO = Path(__file__).resolve().parents[2]
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
