"""The seams between OmniQ's parts, checked without a database: the command line goes through
the backend's methods, the worker's protocol is a component of its own (typed outcomes, not
public API), and the errors worth retrying are named in one place."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest

import omniq.backend.postgres as backend_package
from omniq.backend.postgres.protocol import Outcome, WorkerProtocol, outcomes_json
from omniq.backend.postgres.queue import AsyncPostgresQueue, PostgresQueue
from omniq.backend.postgres.sqlfiles import SQL_DIR
from omniq.errors import (
    Backoff,
    DatabaseConnectionError,
    OmniQError,
    PoolExhaustedError,
    QueryTimeoutError,
    SchemaError,
    TaskImportError,
    is_transient,
)

PACKAGE = Path(backend_package.__file__).resolve().parents[2]
SQL_MODULES = {"sqlfiles", "connection"}  # where SQL and plain connections come from
SQL_ATTRIBUTES = {"sql", "_sql", "acquire"}  # backend.sql.<file>.<query>, backend.acquire()
SQL_NAMES = {"sql_files", "SQLFiles", "raw_connection"}


def sql_access(path: Path) -> list[str]:
    """Where a module reads SQL or opens connections itself: the ``sql`` namespaces of a
    backend (``backend.sql.cli``), the SQL file loader, pooled or plain connections."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module.rsplit(".", 1)[-1]
            names = {alias.name for alias in node.names}
            if module in SQL_MODULES and names - {"target"}:  # target(): a message, no SQL
                found.append(f"{path.name}:{line}: imports {sorted(names)} from {node.module}")
            elif "sqlfiles" in names:
                found.append(f"{path.name}:{line}: imports sqlfiles")
        elif isinstance(node, ast.Attribute) and node.attr in SQL_ATTRIBUTES:
            found.append(f"{path.name}:{line}: .{node.attr}")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "asyncpg"
            and node.attr in ("connect", "create_pool")
        ):
            found.append(f"{path.name}:{line}: asyncpg.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in SQL_NAMES:
            found.append(f"{path.name}:{line}: {node.id}")
    return found


def test_the_command_line_goes_through_the_backend() -> None:
    """No module of omniq/cli reads SQL namespaces, loads SQL files or opens connections of its
    own: what a command reads or changes is a method of the backend or its components."""
    offenders = [
        hit for path in sorted((PACKAGE / "cli").rglob("*.py")) for hit in sql_access(path)
    ]
    assert offenders == []


def test_the_worker_and_scheduler_go_through_the_protocol() -> None:
    paths = sorted((PACKAGE / "worker").rglob("*.py")) + [PACKAGE / "scheduler.py"]
    offenders = [hit for path in paths for hit in sql_access(path) if "sql" in hit]
    assert offenders == []


def test_the_scan_finds_each_way_of_reaching_sql(tmp_path: Path) -> None:
    """The scan above is not vacuous."""
    cases = [
        "rows = await backend.sql.cli.queue_overview(conn)",
        "from ..backend.postgres.sqlfiles import sql_files",
        "from ..backend.postgres import sqlfiles",
        "conn = await asyncpg.connect(dsn)",
        "from ..backend.postgres.connection import connect_kwargs",
        "async with backend.acquire() as conn: pass",
        "files = sql_files('public', ())",
        "async with raw_connection(cfg) as conn: pass",
    ]
    for source in cases:
        path = tmp_path / "case.py"
        path.write_text(
            f"async def f():\n    {source}\n" if "await" in source or "async" in source else source
        )
        assert sql_access(path), source
    path.write_text(
        "from ..backend.postgres.connection import target\nx = backend.monitor.workers()"
    )
    assert sql_access(path) == []


# -- the worker protocol -------------------------------------------------------------------------


def test_the_protocol_is_not_public_api() -> None:
    public = set(backend_package.__all__)
    assert not {"WorkerProtocol", "Outcome", "Registration", "protocol"} & public
    assert not [name for name in dir(WorkerProtocol) if name.endswith("_sync")]
    for removed in ("finish_tasks", "release_tasks", "heartbeat", "rescue_tasks", "worker_stopped",
                    "list_workers"):  # fmt: skip
        assert not hasattr(AsyncPostgresQueue, removed), removed
        assert not hasattr(PostgresQueue, f"{removed}_sync"), removed
    assert hasattr(PostgresQueue, "dequeue_sync") and hasattr(PostgresQueue, "dequeue_many_sync")


def recordset_columns(function_text: str, argument: str) -> set[str]:
    """The column names of ``jsonb_to_recordset(<argument>) AS x(<columns>)`` in SQL text."""
    found = re.findall(
        rf"jsonb_to_recordset\({argument}\)\s+AS\s+\w+\(([^)]*)\)", function_text, re.IGNORECASE
    )
    assert found, f"no jsonb_to_recordset({argument}) in sql/functions/tasks.sql"
    return {column.split()[0] for columns in found for column in columns.split(",")}


def test_outcomes_serialise_to_the_columns_the_database_reads() -> None:
    """``outcomes_json`` is the one place outcomes become JSON: its keys are the columns that
    omniq_finish_tasks (its failures) and omniq_end_tasks (every ending) read from it."""
    text = (SQL_DIR / "functions" / "tasks.sql").read_text()
    read_for_failures = recordset_columns(text, "p_outcomes")
    read_when_ending = recordset_columns(text, "p_ends")
    started = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    outcome = Outcome("t1", 2, "success", func="app.f", result=orjson.Fragment(b'{"a": 1}'),
                      started_at=started, finished_at=started, execution_time=0.5)  # fmt: skip
    (sent,) = orjson.loads(outcomes_json([outcome]))
    assert read_for_failures <= sent.keys() <= read_when_ending | read_for_failures
    assert sent["id"] == "t1" and sent["outcome"] == "success" and sent["attempt"] == 2
    assert sent["result"] == {"a": 1} and "func" not in sent  # func is for the worker's log
    assert sent["started_at"] == "2030-01-02T03:04:05+00:00"


def test_outcomes_are_sent_in_id_order() -> None:
    """The database locks the rows in the order of the batch: id order, as every locker does."""
    batch = [Outcome(task_id, 1, "success") for task_id in ("c", "a", "b")]
    assert [o["id"] for o in orjson.loads(outcomes_json(batch))] == ["a", "b", "c"]


def test_an_outcome_is_typed_and_frozen() -> None:
    outcome = Outcome("t1", 1, "failure", error="boom")
    with pytest.raises(AttributeError):
        outcome.error = "other"  # type: ignore[misc]


# -- errors -------------------------------------------------------------------------------------


def test_task_import_error_is_an_omniq_error_from_either_module() -> None:
    from omniq.worker import TaskImportError as from_worker
    from omniq.worker.imports import TaskImportError as from_imports

    assert from_worker is from_imports is TaskImportError
    assert issubclass(TaskImportError, OmniQError)


@pytest.mark.parametrize(
    "error",
    [
        DatabaseConnectionError("gone"),
        ConnectionResetError(),
        OSError("network unreachable"),
        TimeoutError(),
        PoolExhaustedError("busy"),
        QueryTimeoutError("slow"),
        asyncpg.DeadlockDetectedError("deadlock"),
        asyncpg.SerializationError("serialization"),
        asyncpg.ReadOnlySQLTransactionError("standby now"),
        asyncpg.CannotConnectNowError("starting up"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transient_errors(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad input"),
        SchemaError("incompatible"),
        asyncpg.UniqueViolationError("duplicate"),
        asyncpg.UndefinedFunctionError("no such function"),
        asyncpg.InsufficientPrivilegeError("denied"),
        RuntimeError("a bug"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_that_trying_again_cannot_fix(error: BaseException) -> None:
    assert not is_transient(error)


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1
    with pytest.raises(ValueError, match="first"):
        Backoff(first=0)
