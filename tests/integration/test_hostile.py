"""Hostile input: whatever a caller passes is stored and returned exactly, or refused with a clear
error and nothing stored. Never a broken row.

Property tests (hypothesis, modest example counts) drive the models and the SQL paths with
arbitrary queue names, task ids, function paths and JSON-able values full of unicode, NUL
characters, lone surrogates, big and tiny numbers and nesting; single examples cover a 10 MB
payload and nesting past orjson's recursion limit. A worker is fed exceptions whose messages
PostgreSQL cannot store as they are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.rows import schedule_from_row, task_from_row
from omniq.identifiers import quote_identifier
from omniq.models.config import PostgresConfig
from omniq.models.event import TaskEvent
from omniq.models.result import TaskResult
from omniq.models.schedule import Schedule
from omniq.models.task import FUNC_PATH, Task
from omniq.worker import AsyncWorker
from tests.support.db import Database, drop_schemas
from tests.support.processes import REPO, child_env

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    # CI replays the same examples every run (a red build must mean a change, not luck);
    # local runs keep exploring new ones.
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Every JSON value: unicode text (NUL included: it must be refused), integers up to 64 bits
# (orjson's range, signed and unsigned), finite floats down to subnormals.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
names = st.text(min_size=1, max_size=200)  # queue names: anything, even control characters
task_ids = st.text(min_size=1, max_size=255)
func_paths = st.from_regex(FUNC_PATH, fullmatch=True) | st.text(max_size=40)
# Text with the characters that break things: NUL, lone surrogates, quotes, backslashes, RTL
# marks, emoji, line and paragraph separators.
hostile_text = st.text(
    alphabet=st.sampled_from(
        ["\x00", "\ud800", "'", '"', "\\", "$", "\u202e", "\U0001f4a9", "\u2028", "é", "a", "\n"]
    )
    | st.characters(),
    max_size=60,
)


def has_nul_or_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and (
            "\x00" in item or any(0xD800 <= ord(c) <= 0xDFFF for c in item)
        ):
            return True
        if isinstance(item, dict):
            stack += list(item) + list(item.values())
        elif isinstance(item, list | tuple):
            stack += list(item)
    return False


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values. PostgreSQL's jsonb keeps numbers as ``numeric``, which has no
    exponent: a float with no fractional digits from 1e16 up (orjson writes ``2.5e16``) comes
    back as the integer of its shortest decimal form, 25000000000000000; ``float()`` of it is
    the original float exactly (README, Errors)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float and type(b) is int:
        return abs(a) >= 1e16 and float(b) == a
    if type(a) is int and type(b) is float:
        return same_json(b, a)
    return type(a) is type(b) and a == b


def model_or_none(make: Any) -> Any:
    """Build a model; a refusal must be a ValueError or TypeError that says something."""
    try:
        return make()
    except (ValueError, TypeError) as exc:
        assert str(exc), "an error without a message"
        return None


# -- tasks --------------------------------------------------------------------------------------


@SETTINGS
@given(queue=names, func=func_paths, args=st.lists(json_values, max_size=4),
       kwargs=st.dictionaries(st.text(max_size=12), json_values, max_size=4),
       metadata=st.dictionaries(st.text(max_size=12), json_values, max_size=3),
       priority=st.integers(min_value=-(2**31), max_value=2**31 - 1))  # fmt: skip
@example(queue="q", func="m.f", args=["nul \x00"], kwargs={}, metadata={}, priority=0)
@example(queue="\x00", func="m.f", args=[], kwargs={}, metadata={}, priority=0)
@example(queue="'; DROP TABLE tasks; --", func="m.f", args=[1e16, 5e-324, 2**64 - 1, -(2**63)],
         kwargs={"\U0001f4a9": {"\u202e": [[[]]]}}, metadata={"": None}, priority=-(2**31))  # fmt: skip
async def test_tasks_round_trip_or_are_refused(
    backend: PostgreSQLBackend, db: Database, queue: str, func: str, args: list[Any],
    kwargs: dict[str, Any], metadata: dict[str, Any], priority: int,
) -> None:  # fmt: skip
    task = model_or_none(lambda: Task(func=func, args=args, kwargs=kwargs, queue_name=queue,
                                      metadata=metadata, priority=priority))  # fmt: skip
    if task is None:
        return
    before = await db.count("tasks")
    try:
        await backend.task_queue.enqueue(task)
    except TypeError as exc:
        assert "cannot be stored" in str(exc) and task.id in str(exc) or "NUL" in str(exc), exc
        assert has_nul_or_surrogate([queue, func, args, kwargs, metadata])
        assert await db.count("tasks") == before  # nothing half-written
        return
    try:
        assert not has_nul_or_surrogate([queue, func, args, kwargs, metadata])
        stored = await backend.task_queue.get_task(task.id)
        assert stored is not None
        assert (stored.func, stored.queue_name, stored.priority) == (func, queue, priority)
        assert same_json(list(stored.args), args) and same_json(stored.kwargs, kwargs)
        assert same_json(stored.metadata, metadata)
        taken = await backend.task_queue.dequeue([queue])
        assert taken is not None and taken.id == task.id and taken.status == "running"
        assert same_json(list(taken.args), args) and same_json(taken.kwargs, kwargs)
    finally:
        await backend.task_queue.delete_task(task.id)  # the queue is empty for the next example


@SETTINGS
@given(task_id=task_ids, dependency=task_ids)
@example(task_id="a,b", dependency="x")
@example(task_id="x" * 256, dependency="y")
@example(task_id="\u00e9\U0001f4a9-id", dependency="\ud800")
async def test_task_ids_round_trip_or_are_refused(
    backend: PostgreSQLBackend, db: Database, task_id: str, dependency: str
) -> None:
    task = model_or_none(lambda: Task(func="m.f", id=task_id))
    if task is None:
        return
    before = await db.count("tasks")
    try:
        await backend.task_queue.enqueue(task)
    except TypeError:
        assert has_nul_or_surrogate(task_id)
        assert await db.count("tasks") == before
        return
    got = await backend.task_queue.get_task(task_id)
    assert got is not None and got.id == task_id
    # An unknown dependency (any text) is refused with a clear error, nothing stored.
    dependent = model_or_none(lambda: Task(func="m.g", dependencies=[dependency + "-unknown"]))
    if dependent is not None:
        with pytest.raises((ValueError, TypeError)):
            await backend.task_queue.enqueue(dependent)
        assert await backend.task_queue.get_task(dependent.id) is None
    assert await backend.task_queue.delete_task(task_id)


# -- results, events, schedules -----------------------------------------------------------------


@SETTINGS
@given(value=json_values, error=hostile_text, message=hostile_text, details=json_values)
async def test_results_and_events_round_trip_or_are_refused(
    backend: PostgreSQLBackend, db: Database, value: Any, error: str, message: str, details: Any
) -> None:
    (task,) = [Task(func="m.f")]
    result = TaskResult(task_id=task.id, status="failure", result=value, error=error,
                        traceback=error)  # fmt: skip
    try:
        await backend.result_storage.set(result)
    except Exception as exc:
        # JSON values: a TypeError of OmniQ's; NUL or a lone surrogate in a TEXT column: the
        # driver's encoding error. Both say what is wrong; nothing is stored.
        assert has_nul_or_surrogate([value, error]), exc
        assert any(word in str(exc) for word in ("NUL", "0x00", "surrogate", "UTF")), exc
        assert await backend.result_storage.get(task.id) is None
    else:
        got = await backend.result_storage.get(task.id)
        assert got is not None and same_json(got.result, value)
        assert (got.error, got.traceback, got.status) == (error, error, "failure")
    event = model_or_none(
        lambda: TaskEvent(
            task_id=task.id, event_type="failed", message=message, details={"d": details}
        )  # fmt: skip
    )
    if event is None:
        return
    try:
        await backend.event_storage.log_event(event)
    except TypeError as exc:
        assert has_nul_or_surrogate([message, details]), exc
        assert await backend.event_storage.get_events(task_id=task.id) == []
        return
    (got_event,) = await backend.event_storage.get_events(task_id=task.id)
    assert got_event.message == message and same_json(got_event.details, {"d": details})


@SETTINGS
@given(args=st.lists(json_values, max_size=3), queue=names, func=func_paths)
@example(args=[], queue="\x00", func="m.f")  # hypothesis found it: refused by the model now
@example(args=[], queue="q\x1fq", func="m.f")
async def test_schedules_round_trip_or_are_refused(
    backend: PostgreSQLBackend, args: list[Any], queue: str, func: str
) -> None:
    schedule = model_or_none(
        lambda: Schedule(func=func, args=args, queue_name=queue, interval_seconds=3600)
    )
    if schedule is None:
        return
    try:
        await backend.schedule_storage.save_schedule(schedule)
    except TypeError:
        assert has_nul_or_surrogate([args, queue, func])
        assert await backend.schedule_storage.get_schedule(schedule.id) is None
        return
    got = await backend.schedule_storage.get_schedule(schedule.id)
    assert got is not None and got.func == func and got.queue_name == queue
    assert same_json(list(got.args), args)
    assert await backend.schedule_storage.delete_schedule(schedule.id)


# -- the database refuses what the models refuse (issue 9, defect 6) ------------------------------


async def test_the_database_refuses_ids_and_queue_names_the_models_refuse(
    backend: PostgreSQLBackend, db: Database
) -> None:
    """omniq_enqueue used to accept a 400-character id; the worker's model then refused the
    row when it read it back, and the worker exited. Now the database refuses it, from psql
    as from Python, and stores nothing."""
    for bad in (
        {"id": "x" * 400, "func": "m.f"},
        {"id": "has space", "func": "m.f"},
        {"id": "a,b", "func": "m.f"},
        {"queue_name": "   ", "func": "m.f"},
        {"queue_name": "q\u001f", "func": "m.f"},
        {"queue_name": "q" * 201, "func": "m.f"},
    ):
        with pytest.raises(asyncpg.InvalidParameterValueError, match="task id|queue_name"):
            await db.conn.fetch(
                f"SELECT * FROM {quote_identifier(db.schema)}.omniq_enqueue($1::jsonb)",  # noqa: S608
                [bad],  # this connection's codec writes the JSON
            )
    # The typed entry point of one task (omniq_enqueue_one_v1, migration 0018) checks alike.
    one = (
        f"SELECT {quote_identifier(db.schema)}.omniq_enqueue_one_v1($1, 'm.f', now(), $2, 0, "
        "'[]', '{}', NULL, NULL, 0, 3, 1.0, '{}', '{}', '{}')"
    )
    for task_id, queue in (
        ("x" * 400, "q"), ("has space", "q"), ("a,b", "q"), ("", "q"),
        ("ok", "   "), ("ok", "q\u001f"), ("ok", "q" * 201),
    ):  # fmt: skip
        with pytest.raises(asyncpg.InvalidParameterValueError, match="task id|queue_name"):
            await db.conn.fetchval(one, task_id, queue)
    with pytest.raises(asyncpg.InvalidParameterValueError, match="reserved for OmniQ"):
        await db.conn.fetchval(one, "t@on_success", "q")
    assert await db.count("tasks") == 0
    generated = await db.conn.fetchval(one, None, None)  # no id, no queue: the defaults
    assert (await db.row("tasks", generated))["queue_name"] == "default"  # type: ignore[index]
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.conn.fetchval(one, generated, "q")
    assert await db.count("tasks") == 1
    # The calls of one function (omniq_enqueue_calls_v1, migration 0019) check alike, and
    # refuse a template, or calls, that are not what enqueue_calls sends.
    calls = (
        f"SELECT {quote_identifier(db.schema)}.omniq_enqueue_calls_v1($1::jsonb, $2, $3, $4::jsonb)"
    )
    at = [datetime.now(UTC)]
    for template, ids, created, sent, match in (
        ({"func": "m.f"}, ["x" * 400], at, [[]], "task id"),
        ({"func": "m.f"}, ["t@on_failure"], at, [[]], "reserved for OmniQ"),
        ({"func": "m.f", "queue_name": " "}, ["ok"], at, [[]], "queue_name"),
        ({"func": "m.f"}, ["ok"], at, [7], "call 0 is 7: each call is a JSON array"),
        ({"func": "m.f"}, ["ok", "ok2"], at * 2, [[], "x"], 'call 1 is "x"'),
        ({"func": "m.f"}, ["ok", "ok2"], at, [[], []], "one call per id and created_at"),
        ({"func": "m.f"}, ["ok"], at, {"a": 1}, "must be a JSON array"),
        ({}, ["ok"], at, [[]], "template must be a JSON object with func"),
        ({"func": "m.f", "args": [1]}, ["ok"], at, [[]], "without id, args"),
        ({"func": "m.f", "dependencies": ["d"]}, ["ok"], at, [[]], "without id, args"),
        ({"func": "m.f", "unique_key": "k"}, ["ok"], at, [[]], "without id, args"),
        ({"func": "m.f", "dependencies": {}}, ["ok"], at, [[]], "without id, args"),
        ([], ["ok"], at, [[]], "template must be a JSON object"),
    ):
        with pytest.raises(asyncpg.InvalidParameterValueError, match=match):
            await db.conn.fetchval(calls, template, ids, created, sent)
    assert await db.count("tasks") == 1
    assert await db.conn.fetchval(calls, {"func": "m.f"}, [None, "c2"], [None] * 2, [[1], {}]) == 2
    assert await db.count("tasks") == 3
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.conn.fetchval(calls, {"func": "m.f"}, ["c3", "c2"], at * 2, [[], []])
    assert await db.count("tasks") == 3
    # What a psql caller writes for "none" is taken as none (migration 0020).
    none = {"func": "m.f", "dependencies": [], "unique_key": None}
    assert await db.conn.fetchval(calls, none, ["c4"], at, [[]]) == 1
    stored = await db.row("tasks", "c4")
    assert stored is not None
    assert (stored["dependencies"], stored["unique_key"]) == ([], None)
    with pytest.raises(ValueError, match="control characters"):
        Schedule(func="m.f", queue_name="\x00", interval_seconds=60)
    with pytest.raises(ValueError, match="schedule id"):
        Schedule(func="m.f", id="s" * 201, interval_seconds=60)


def test_a_row_the_models_refuse_is_read_as_stored() -> None:
    """Rows written before the checks existed (or by hand, as the owner) must never stop a
    worker that reads them: they are read as stored, and fail when they run."""
    row = {
        "id": "x" * 400, "queue_name": "q", "priority": 0, "status": "pending",
        "func": "not a path", "args": [], "kwargs": {}, "created_at": None, "run_at": None,
        "expires_at": None, "retry_count": 0, "max_retries": -1, "retry_delay": 1.0,
        "dependencies": ["also bad, with a comma"], "callbacks": {"on_what": "x"},
        "metadata": {}, "task_data": {"timeout": -5}, "started_at": None,
        "finished_at": None, "worker_id": None, "attempts": 0,
    }  # fmt: skip
    task = task_from_row(row)
    assert (task.id, task.func, task.timeout, task.max_retries) == ("x" * 400, "not a path", -5, -1)
    odd = task_from_row({**row, "args": 5, "kwargs": ["k"], "task_data": {"timeout": "soon"}})
    assert (odd.args, odd.kwargs, odd.timeout) == (5, ["k"], "soon")  # the call fails, not the read
    schedule = schedule_from_row({
        "id": "s", "schedule_type": "cron", "func": "m.f", "args": [], "kwargs": {},
        "queue_name": "q", "cron_expression": "not cron", "interval_seconds": None,
        "timestamp": None, "status": "active", "created_at": None, "last_run": None,
        "next_run": None, "max_runs": None, "run_count": 0, "ttl_seconds": None,
        "expires_at": None, "metadata": {}, "schedule_data": {},
    })  # fmt: skip
    assert schedule.cron_expression == "not cron"


# -- single big examples --------------------------------------------------------------------------


async def test_ten_megabyte_payload_round_trips(backend: PostgreSQLBackend) -> None:
    blob = "\U0001f4a9 é " * (10 * 2**20 // 8)  # ~10 MB of UTF-8
    many = {f"k{i}": [i, str(i) * 10] for i in range(20_000)}
    task = Task(func="m.f", args=(blob,), kwargs={"many": many})
    await backend.task_queue.enqueue(task)
    stored = await backend.task_queue.get_task(task.id)
    assert stored is not None and stored.args == (blob,) and stored.kwargs == {"many": many}
    taken = await backend.task_queue.dequeue(["default"])
    assert taken is not None and taken.args == (blob,)
    await backend.result_storage.set(TaskResult(task_id=task.id, status="success", result=blob))
    assert (await backend.result_storage.get(task.id)).result == blob  # type: ignore[union-attr]


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


async def test_deep_nesting_round_trips_or_is_a_clear_type_error(
    backend: PostgreSQLBackend, db: Database
) -> None:
    ok = Task(func="m.f", args=(nested(200),))
    await backend.task_queue.enqueue(ok)
    assert (await backend.task_queue.get_task(ok.id)).args == (nested(200),)  # type: ignore[union-attr]
    too_deep = Task(func="m.f", args=(nested(300),))  # orjson stops at 254 levels
    with pytest.raises(TypeError, match="cannot be stored as JSON") as info:
        await backend.task_queue.enqueue(too_deep)
    assert "ecursion" in str(info.value)
    assert await db.count("tasks") == 1


# -- a worker fed exceptions PostgreSQL cannot store as they are -------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "nul \x00 inside",
        "lone \ud800 surrogate",
        "\x00",
        "quote ' \" \\ $$ \u202e \U0001f4a9",
        "x" * 100_000,
    ],  # fmt: skip
    ids=["nul", "surrogate", "only-nul", "quotes", "100kB"],
)
async def test_failures_with_unstorable_messages_are_recorded(
    backend: PostgreSQLBackend, db: Database, message: str
) -> None:
    """The exception text ends up in TEXT and JSONB columns, which refuse NUL and lone
    surrogates; the worker escapes them so the failure is recorded and the task is not stuck."""
    task = Task(func="tests.support.fault_jobs.raise_text", args=(message.encode("utf-8", "surrogatepass").hex(),),
                max_retries=0)  # fmt: skip
    await backend.task_queue.enqueue(task)
    worker = AsyncWorker(backend, concurrency=1, run_scheduler=False, install_signal_handlers=False)
    stats = await asyncio.wait_for(worker.run(burst=True), 60)
    assert stats.failed == 1
    row = await db.row("tasks", task.id)
    assert row is not None and row["status"] == "failed"
    result = await backend.result_storage.get(task.id)
    assert result is not None and result.error_type == "ValueError"
    assert "\x00" not in result.error  # type: ignore[operator]
    readable = message.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
    assert result.error == readable


# -- passwords never shown --------------------------------------------------------------------

SECRET = "S3cr3t-h0stile-pw"


@pytest.fixture
async def password_role(pg_server: Any, pg_dsn: str) -> Any:
    """A superuser role that must give its password (a scram-sha-256 rule in pg_hba.conf)."""
    data_dir: Path | None = getattr(pg_server, "data_dir", None)
    if data_dir is None:
        pytest.skip("needs the embedded server, to require a password for one role")
    role = f"omniq_pw_{uuid.uuid4().hex[:8]}"
    hba = data_dir / "pg_hba.conf"
    original = hba.read_text()
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{SECRET}'")
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original)
        await admin.execute("SELECT pg_reload_conf()")
        await asyncio.sleep(0.3)  # the postmaster re-reads pg_hba.conf on SIGHUP
        yield role
    finally:
        hba.write_text(original)
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await asyncio.sleep(0.2)
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


def url(dsn: str, user: str, password: str, port: int | None = None) -> str:
    parts = urlsplit(dsn)
    netloc = f"{user}:{password}@{parts.hostname}:{port or parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def everything_said(exc: BaseException) -> str:
    """The message, the repr and the whole printed traceback, causes included."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def omniq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omniq", *args], capture_output=True, text=True, timeout=120,
        env=child_env(), cwd=REPO, check=False,
    )  # fmt: skip


async def test_passwords_never_appear_in_repr_errors_or_logs(
    pg_dsn: str, password_role: str, caplog: pytest.LogCaptureFixture, schema_name: str
) -> None:
    caplog.set_level(logging.DEBUG)
    port = urlsplit(pg_dsn).port
    host = urlsplit(pg_dsn).hostname
    right = url(pg_dsn, password_role, SECRET)
    configs = [
        PostgresConfig(dsn=url(pg_dsn, password_role, SECRET, refused_port()), connect_timeout=3),
        PostgresConfig(dsn=url(pg_dsn, password_role, SECRET + "-wrong"), connect_timeout=3),
        PostgresConfig(
            dsn=f"host={host} port={port} user={password_role} password={SECRET}x dbname=omniq",
            connect_timeout=3,
        ),  # fmt: skip
        PostgresConfig(
            host=str(host),
            port=int(port or 5432),
            username=password_role,
            password=SECRET + "y",
            connect_timeout=3,
        ),  # fmt: skip
        PostgresConfig(
            dsn=pg_dsn,
            listen_dsn=url(pg_dsn, password_role, SECRET + "z"),
            schema=schema_name,
            connect_timeout=3,
        ),  # fmt: skip
    ]
    said = []
    for config in configs:
        backend = PostgreSQLBackend(config)
        said += [repr(config), repr(backend)]
        with pytest.raises(ConnectionError) as info:
            async with backend:
                await backend.listener()  # the last config fails only here
        said.append(everything_said(info.value))
        await backend.close()
    # The right password works, and says nothing either.
    async with PostgreSQLBackend(PostgresConfig(dsn=right, schema=schema_name)) as backend:
        said.append(repr(backend))
        await backend.task_queue.enqueue(Task(func="m.f"))
    said.append(caplog.text)
    leaks = [text for text in said if SECRET in text]
    assert leaks == []
    assert any("AuthenticationError" in text for text in said)  # the wrong password was refused
    await drop_schemas(pg_dsn, schema_name)


async def test_passwords_never_appear_in_cli_output(
    pg_dsn: str, password_role: str, schema_name: str
) -> None:
    right = url(pg_dsn, password_role, SECRET)
    wrong = url(pg_dsn, password_role, SECRET + "-wrong")
    refused = url(pg_dsn, password_role, SECRET, refused_port())
    installed = await asyncio.to_thread(
        omniq_cli, "migrate", "--dsn", right, "--schema", schema_name
    )
    assert SECRET not in installed.stdout + installed.stderr
    runs = [
        ("status", "--dsn", right, "--schema", schema_name),
        ("status", "--json", "--dsn", right, "--schema", schema_name),
        ("doctor", "--dsn", right, "--schema", schema_name),
        ("status", "--dsn", wrong, "--schema", schema_name),
        ("status", "--debug", "--dsn", wrong, "--schema", schema_name),
        ("worker", "--burst", "--dsn", refused, "--schema", schema_name),
        ("worker", "--burst", "--dsn", right, "--schema", schema_name),
    ]
    try:
        outputs = await asyncio.gather(*(asyncio.to_thread(omniq_cli, *args) for args in runs))
    finally:
        await drop_schemas(pg_dsn, schema_name)
    for args, proc in zip(runs, outputs, strict=True):
        assert SECRET not in proc.stdout + proc.stderr, (args[0], proc.stdout, proc.stderr)
    assert outputs[0].returncode == 0, outputs[0].stderr
    assert outputs[3].returncode == 1 and "password" in outputs[3].stderr  # refused, said why
