"""Unit tests of the models, identifiers and JSON checks: no database needed."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import get_args

import pytest

import omniq
from omniq.errors import (
    AuthenticationError,
    DatabaseConnectionError,
    DatabaseNotFoundError,
    DuplicateTaskError,
    OmniQError,
    PermissionDeniedError,
    PoolExhaustedError,
    QueryTimeoutError,
    SchemaError,
    UnknownDependencyError,
)
from omniq.identifiers import check_identifier, quote_identifier
from omniq.models._common import as_utc, dump_json
from omniq.models.config import PostgresConfig, redact_dsn
from omniq.models.enums import (
    EventType,
    ResultStatus,
    ResultStatusName,
    ScheduleStatus,
    ScheduleType,
    TaskStatus,
)
from omniq.models.event import TaskEvent
from omniq.models.result import TaskResult
from omniq.models.schedule import Schedule
from omniq.models.task import Task


def module_level_function() -> None:
    """A function with an import path, for func=<callable>."""


class Holder:
    def method(self) -> None:
        """A method: its path uses ':' between module and qualified name."""


# -- Task ------------------------------------------------------------------------------


def test_task_defaults_follow_the_specification() -> None:
    before = datetime.now(UTC)
    task = Task(func="mymodule.my_function", args=[1, 2, 3], queue_name="default")
    assert uuid.UUID(task.id)
    assert task.args == (1, 2, 3)
    assert task.kwargs == {}
    assert task.priority == 0
    assert task.status == "pending" and task.status is TaskStatus.PENDING
    assert before <= task.created_at <= datetime.now(UTC)
    assert task.created_at.tzinfo is not None and task.created_at.utcoffset() == timedelta(0)
    assert task.run_at is None and task.expires_at is None
    assert (task.retry_count, task.max_retries, task.retry_delay) == (0, 3, 1.0)
    assert task.dependencies == [] and task.callbacks == {} and task.metadata == {}
    assert task.task_data == {}
    assert Task(func="m.f").id != Task(func="m.f").id
    assert uuid.UUID(Task(func="m.f", id="").id)  # empty: generated like the default


def test_task_status_accepts_plain_strings() -> None:
    task = Task(func="m.f", status="running")
    assert task.status is TaskStatus.RUNNING
    with pytest.raises(ValueError):
        Task(func="m.f", status="sleeping")


def test_naive_datetimes_are_read_as_utc() -> None:
    naive = datetime(2030, 1, 2, 3, 4, 5)
    task = Task(func="m.f", created_at=naive, run_at=naive, expires_at=naive)
    for value in (task.created_at, task.run_at, task.expires_at):
        assert value == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert value.utcoffset() == timedelta(0)
    plus_two = timezone(timedelta(hours=2))
    aware = Task(func="m.f", run_at=datetime(2030, 1, 2, 5, 4, 5, tzinfo=plus_two))
    assert aware.run_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert aware.run_at.tzinfo == UTC
    assert as_utc(None) is None
    with pytest.raises(TypeError):
        as_utc("2030-01-01")  # type: ignore[arg-type]


def test_result_event_schedule_read_naive_datetimes_as_utc() -> None:
    naive = datetime(2031, 5, 6, 7, 8, 9)
    result = TaskResult(task_id="t", created_at=naive, completed_at=naive, expires_at=naive)
    assert result.created_at == result.completed_at == naive.replace(tzinfo=UTC)
    assert result.expires_at is not None and result.expires_at.tzinfo == UTC
    event = TaskEvent(task_id="t", event_type="enqueued", timestamp=naive)
    assert event.timestamp == naive.replace(tzinfo=UTC)
    schedule = Schedule(func="m.f", timestamp=naive)
    assert schedule.timestamp == schedule.next_run == naive.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "func",
    ["", "nodots", "a..b", "1abc.f", "pkg.mod.", "pkg mod.f", "pkg.mod:f:g", "pkg.mod;drop", 42],
)
def test_invalid_func_path_raises_value_error(func: object) -> None:
    with pytest.raises(ValueError, match="import path"):
        Task(func=func)  # type: ignore[arg-type]


def test_func_accepts_module_level_callables_and_refuses_lambdas() -> None:
    task = Task(func=module_level_function)
    assert task.func == f"{__name__}.module_level_function"
    assert Task(func=Holder.method).func == f"{__name__}:Holder.method"
    assert Task(func="pkg.mod:Class.method").func == "pkg.mod:Class.method"
    with pytest.raises(ValueError, match="lambda"):
        Task(func=lambda: None)  # type: ignore[arg-type]

    def nested() -> None: ...

    with pytest.raises(ValueError, match="import path"):
        Task(func=nested)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"priority": 2**31},
        {"priority": 1.5},
        {"priority": True},
        {"max_retries": -1},
        {"retry_count": -1},
        {"retry_delay": -0.5},
        {"retry_delay": math.nan},
        {"timeout": 0},
        {"result_ttl": -1},
        {"queue_name": ""},
        {"queue_name": "   "},
        {"queue_name": "q" * 201},
        {"id": "has space"},
        {"id": "a,b"},
        {"id": "x" * 256},
        {"id": "nul\x00"},
        {"callbacks": {"on_whatever": "m.f"}},
        {"callbacks": {"on_success": "not a path"}},
        {"dependencies": ["ok", "not ok"]},
    ],
)
def test_task_rejects_bad_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Task(func="m.f", **kwargs)  # type: ignore[arg-type]


def test_task_rejects_self_dependency_and_non_str_kwargs() -> None:
    with pytest.raises(ValueError, match="itself"):
        Task(func="m.f", id="me", dependencies=["me"])
    with pytest.raises(TypeError, match="kwargs"):
        Task(func="m.f", kwargs={1: "x"})  # type: ignore[dict-item]


def test_task_dependencies_accept_tasks_and_ids() -> None:
    first = Task(func="m.f")
    task = Task(func="m.g", dependencies=[first, "other-id"])
    assert task.dependencies == [first.id, "other-id"]
    assert Task(func="m.f", callbacks={"on_success": module_level_function}).callbacks == {
        "on_success": f"{__name__}.module_level_function"
    }


# -- results, events -------------------------------------------------------------------


def test_result_defaults_and_status_strings() -> None:
    result = TaskResult(task_id="abc", status="success", result={"x": 1})
    assert result.status == "success" and result.status is ResultStatus.SUCCESS
    assert result.is_success
    assert not TaskResult(task_id="abc").is_success
    assert TaskResult(task_id="abc").status == "pending"
    assert result.metadata == {} and result.result_data == {}
    with pytest.raises(ValueError):
        TaskResult(task_id="")
    with pytest.raises(ValueError):
        TaskResult(task_id="x", status="great")


def test_event_defaults_and_types() -> None:
    event = TaskEvent(task_id="abc", event_type="completed")
    assert event.event_type == "completed" and event.event_type is EventType.COMPLETED
    assert uuid.UUID(event.id)
    assert event.timestamp.tzinfo is not None
    assert event.details == {} and event.metadata == {} and event.event_data == {}
    mine = TaskEvent(task_id="abc", event_type="progress")  # a type of the user's own
    assert mine.event_type == "progress" and type(mine.event_type) is str
    for bad in ("", "two words", "x" * 101, "tab\there", 7):
        with pytest.raises(ValueError, match="a name of your own"):
            TaskEvent(task_id="abc", event_type=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TaskEvent(task_id="", event_type="completed")


def test_the_string_forms_are_the_enum_values() -> None:
    assert set(get_args(ResultStatusName)) == {s.value for s in ResultStatus}


# -- schedules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cron", ["", "not cron", "* * *", "61 * * * *", "* 25 * * *", "* * * * * * * *", "*/0 * * * *"]
)
def test_invalid_cron_raises_value_error_when_built(cron: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        Schedule(func="m.f", cron_expression=cron)


def test_cron_schedule_computes_next_run_with_croniter() -> None:
    created = datetime(2030, 1, 1, 12, 3, 30, tzinfo=UTC)
    schedule = Schedule(func="m.f", cron_expression="*/5 * * * *", created_at=created)
    assert schedule.schedule_type == "cron" and schedule.schedule_type is ScheduleType.CRON
    assert schedule.status == "active" and schedule.status is ScheduleStatus.ACTIVE
    assert schedule.next_run == datetime(2030, 1, 1, 12, 5, tzinfo=UTC)
    assert schedule.next_after(schedule.next_run) == datetime(2030, 1, 1, 12, 10, tzinfo=UTC)
    daily = Schedule(func="m.f", cron_expression="0 3 * * *", created_at=created)
    assert daily.next_run == datetime(2030, 1, 2, 3, 0, tzinfo=UTC)


def test_interval_and_timestamp_schedules() -> None:
    created = datetime(2030, 1, 1, tzinfo=UTC)
    every = Schedule(func="m.f", interval_seconds=90, created_at=created)
    assert every.schedule_type == "interval"
    assert every.next_run == created + timedelta(seconds=90)
    # A missed window fires once and the phase is kept: the next time is due + k * interval.
    now = created + timedelta(seconds=1000)
    following = every.next_after(now, every.next_run)
    assert following is not None and following > now
    assert (following - every.next_run).total_seconds() % 90 == 0
    assert following - now <= timedelta(seconds=90)

    when = datetime(2030, 6, 1, 8, 0)
    once = Schedule(func="m.f", timestamp=when)
    assert once.schedule_type == "timestamp"
    assert once.next_run == when.replace(tzinfo=UTC)
    assert once.next_after(datetime(2031, 1, 1)) is None


def test_schedule_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Schedule(func="m.f")
    with pytest.raises(ValueError, match="exactly one"):
        Schedule(func="m.f", cron_expression="* * * * *", interval_seconds=5)
    for bad in (0, -1, "5", True):
        with pytest.raises(ValueError, match="interval_seconds"):
            Schedule(func="m.f", interval_seconds=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timestamp"):
        Schedule(func="m.f", schedule_type="timestamp")
    with pytest.raises(ValueError, match="max_runs"):
        Schedule(func="m.f", interval_seconds=1, max_runs=0)
    with pytest.raises(ValueError, match="ttl_seconds"):
        Schedule(func="m.f", interval_seconds=1, ttl_seconds=0)
    with pytest.raises(ValueError, match="import path"):
        Schedule(func="bad path", interval_seconds=1)


def test_schedule_ttl_sets_expires_at() -> None:
    created = datetime(2030, 1, 1, tzinfo=UTC)
    schedule = Schedule(func="m.f", interval_seconds=10, ttl_seconds=60, created_at=created)
    assert schedule.expires_at == created + timedelta(seconds=60)
    explicit = datetime(2030, 2, 1, tzinfo=UTC)
    kept = Schedule(
        func="m.f", interval_seconds=10, ttl_seconds=60, created_at=created, expires_at=explicit
    )
    assert kept.expires_at == explicit


# -- configuration ---------------------------------------------------------------------


def test_postgres_config_defaults_match_the_specification() -> None:
    config = PostgresConfig()
    assert (config.host, config.port, config.database) == ("localhost", 5432, "omniq")
    assert (config.username, config.password) == ("postgres", "")
    assert (config.min_connections, config.max_connections) == (1, 10)
    assert config.command_timeout == 60.0
    assert config.schema == "public"
    assert config.tables == {
        "tasks": "tasks",
        "results": "results",
        "events": "events",
        "schedules": "schedules",
    }


def test_postgres_config_hides_passwords() -> None:
    config = PostgresConfig(password="s3cret", dsn="postgresql://u:s3cret@h:1/d")
    assert "s3cret" not in repr(config)
    assert redact_dsn("host=h password=s3cret user=u") == "host=h password=*** user=u"
    assert redact_dsn("postgresql://u:pw@h/d") == "postgresql://u:***@h/d"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"schema": ""},
        {"schema": "pg_mine"},
        {"schema": "s" * 64},
        {"schema": "é" * 32},  # 32 characters but 64 bytes
        {"tasks_table": "t" * 64},
        {"tasks_table": " padded"},
        {"events_table": "tab\tname"},
        {"results_table": "line\nbreak"},
        {"schedules_table": "nul\x00"},
        {"tasks_table": "same", "results_table": "same"},
        {"min_connections": 5, "max_connections": 2},
        {"max_connections": 0},
        {"port": 0},
        {"port": 70000},
        {"command_timeout": 0},
    ],
)
def test_postgres_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PostgresConfig(**kwargs)  # type: ignore[arg-type]


def test_identifiers_are_quoted_so_no_name_escapes() -> None:
    assert quote_identifier("tasks") == '"tasks"'
    assert quote_identifier('my"name') == '"my""name"'
    assert quote_identifier('"; DROP TABLE x; --') == '"""; DROP TABLE x; --"'
    assert check_identifier("x" * 63, "table") == "x" * 63
    with pytest.raises(ValueError, match="63 bytes"):
        check_identifier("x" * 64, "table")
    with pytest.raises(ValueError):
        check_identifier(None, "table")


# -- JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1, 2},
        datetime(2030, 1, 1),
        math.nan,
        math.inf,
        -math.inf,
        "nul\x00char",
        2**64 + 1,
        -(2**64),
        {1: "non-str key"},
        [[{"deep": [math.nan]}]],
        {"k": ["x\x00"]},
        b"bytes",
    ],
    ids=lambda v: type(v).__name__,
)
def test_dump_json_refuses_what_json_cannot_carry(value: object) -> None:
    with pytest.raises(TypeError):
        dump_json(value, "args")


def test_dump_json_keeps_ordinary_values() -> None:
    assert dump_json([1, "a", None, True, 1.5, {"k": [2**63]}], "x") == (
        '[1,"a",null,true,1.5,{"k":[9223372036854775808]}]'
    )
    assert dump_json("\\u0000 is only text", "x") == '"\\\\u0000 is only text"'


# -- public names ----------------------------------------------------------------------


def test_public_names_and_error_hierarchy() -> None:
    for name in omniq.__all__:
        assert getattr(omniq, name) is not None
    assert issubclass(DatabaseConnectionError, ConnectionError)
    assert issubclass(AuthenticationError, ConnectionError)
    assert issubclass(DatabaseNotFoundError, ConnectionError)
    assert issubclass(PermissionDeniedError, PermissionError)
    assert issubclass(PoolExhaustedError, TimeoutError)
    assert issubclass(QueryTimeoutError, TimeoutError)
    assert issubclass(DuplicateTaskError, ValueError)
    assert issubclass(UnknownDependencyError, ValueError)
    for cls in (SchemaError, DuplicateTaskError, PoolExhaustedError, AuthenticationError):
        assert issubclass(cls, OmniQError)
