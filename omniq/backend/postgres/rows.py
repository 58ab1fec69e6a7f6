"""Conversions between the models and table rows: JSON text out, records in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, fields
from datetime import datetime
from typing import Any, TypeAlias, TypeVar

import asyncpg

from ...models._common import dump_json, utcnow
from ...models.enums import TaskStatus
from ...models.event import TaskEvent
from ...models.result import TaskResult
from ...models.schedule import Schedule
from ...models.task import Task

Model = TypeVar("Model", Task, Schedule)
Row: TypeAlias = Mapping[str, Any] | asyncpg.Record  # a row as read, or as a dict

# Model fields kept inside the *_data JSONB column instead of a column of their own.
TASK_DATA_FIELDS = ("timeout", "result_ttl")
SCHEDULE_DATA_FIELDS = ("priority", "max_retries", "retry_delay", "timeout")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _task_data(task: Task) -> dict[str, Any]:
    """The task_data column: the user's task_data with timeout and result_ttl when set."""
    if task.timeout is None and task.result_ttl is None:
        return task.task_data
    data = dict(task.task_data)
    data.update({k: getattr(task, k) for k in TASK_DATA_FIELDS if getattr(task, k) is not None})
    return data


def task_document(task: Task) -> dict[str, Any]:
    """The JSON object omniq_enqueue takes for one task.

    A key is left out when its value is what omniq_insert_tasks (sql/functions/tasks.sql)
    stores for an absent key (queue 'default', priority 0, no args, 3 retries 1 s apart...):
    the database then parses less JSON per task, which halves its time for a batch of plain
    tasks. None is left out too: that keeps "null" out of the JSON text, so dump_json's NaN
    check (which looks for "null") walks the values only when the user's own data holds one.
    """
    doc: dict[str, Any] = {
        "id": task.id,
        "func": task.func,
        "created_at": task.created_at.isoformat(),
    }
    if task.queue_name != "default":
        doc["queue_name"] = task.queue_name
    if task.priority:
        doc["priority"] = task.priority
    if task.args:
        doc["args"] = task.args
    if task.kwargs:
        doc["kwargs"] = task.kwargs
    if task.run_at is not None:
        doc["run_at"] = task.run_at.isoformat()
    if task.expires_at is not None:
        doc["expires_at"] = task.expires_at.isoformat()
    if task.retry_count:
        doc["retry_count"] = task.retry_count
    if task.max_retries != 3:
        doc["max_retries"] = task.max_retries
    if task.retry_delay != 1.0:
        doc["retry_delay"] = task.retry_delay
    if task.dependencies:
        doc["dependencies"] = task.dependencies
    if task.callbacks:
        doc["callbacks"] = task.callbacks
    if task.metadata:
        doc["metadata"] = task.metadata
    data = _task_data(task)
    if data:
        doc["task_data"] = data
    if task.unique is not None:  # only then: a batch without keys takes the plain insert
        doc["unique_key"] = task.unique_key
        doc["unique_states"] = sorted(task.unique.states)
        doc["unique_mode"] = task.unique.mode
        if task.unique.window is not None:
            doc["unique_window"] = task.unique.window.total_seconds()
    return doc


def tasks_json(tasks: Iterable[Task]) -> str:
    """One JSON array for a batch; on failure, name the task and field that cannot be stored."""
    documents = [task_document(t) for t in tasks]
    try:
        return dump_json(documents, "task")
    except TypeError:
        for doc in documents:
            for key in ("args", "kwargs", "metadata", "task_data"):
                if key in doc:
                    dump_json(doc[key], f"{key} of task {doc['id']} ({doc['func']})")
        raise


Call: TypeAlias = tuple[Any, ...] | list[Any] | dict[str, Any]  # positional or keyword arguments


def calls_json(template: Task, calls: Sequence[Call], ids: Sequence[str]) -> str:
    """The omniq_enqueue document of one task per call: ``template``'s document with the
    call's id (``ids``, in call order), its own created_at and the call's arguments. For a
    template with dependencies (the waiting tasks' path); :func:`calls_columns` otherwise.

    No Task is built per call: the template was checked once, and a call's arguments are
    checked by serialising them, as a Task's are.
    """
    shared = _shared_document(template)
    documents = []
    for n, (call, task_id) in enumerate(zip(calls, ids, strict=True)):
        doc = {"id": task_id, "created_at": utcnow().isoformat(), **shared}
        kind = _call_kind(template, n, call)
        if call:
            doc[kind] = call
        documents.append(doc)
    return _calls_dump(template, documents, calls)


def calls_columns(template: Task, calls: Sequence[Call]) -> tuple[str, list[datetime], str]:
    """The enqueue_calls query's template, created_at and calls (omniq_enqueue_calls_v1): the
    columns every task shares as one JSON object, a creation time per call, and the calls as
    one JSON array, a call's positional arguments an array and its keyword arguments an
    object. Checked as :func:`calls_json` checks them."""
    for n, call in enumerate(calls):
        _call_kind(template, n, call)
    shared = dump_json(_shared_document(template), f"template of {template.func}")
    created = [utcnow() for _ in calls]
    return shared, created, _calls_dump(template, calls, calls)


def _shared_document(template: Task) -> dict[str, Any]:
    """``template``'s document without what each call has of its own: id and created_at."""
    shared = task_document(template)
    del shared["id"], shared["created_at"]
    return shared


def _call_kind(template: Task, n: int, call: Call) -> str:
    """The column call ``n`` fills: args (a tuple or list) or kwargs (a dict)."""
    kind = call.__class__
    if kind is tuple or kind is list:
        return "args"
    if kind is dict:
        return "kwargs"
    raise TypeError(
        f"call {n} of {template.func} is {call!r}: give each call as a tuple (or list) "
        "of positional arguments or a dict of keyword arguments; nothing was enqueued"
    )


def _calls_dump(template: Task, value: Any, calls: Sequence[Call]) -> str:
    """``value`` (the calls, or documents holding them) as JSON text; on failure, name the
    call whose arguments cannot be stored."""
    try:
        return dump_json(value, "task")
    except TypeError:
        for n, call in enumerate(calls):
            dump_json(call, f"{_call_kind(template, n, call)} of call {n} of {template.func}")
        raise


def _as_stored(cls: type[Model], values: dict[str, Any]) -> Model:
    """The model of a row its checks refuse, read as stored (no check, no normalisation).

    psql users and older versions may have written rows the models would not build (an id
    of 300 characters, a func that is no import path): reading one must never stop a worker
    or a scheduler. The worker then fails such a task with a clear error when it runs it.
    """
    model = object.__new__(cls)
    for f in fields(cls):
        if f.name in values:
            value = values[f.name]
        elif f.default is not MISSING:
            value = f.default
        elif callable(f.default_factory):
            value = f.default_factory()
        else:
            raise TypeError(f"a stored {cls.__name__} has no {f.name}")
        object.__setattr__(model, f.name, value)
    return model


def _build(cls: type[Model], values: dict[str, Any]) -> Model:
    try:
        return cls(**values)
    except (TypeError, ValueError):
        return _as_stored(cls, values)


def task_from_row(row: Row) -> Task:
    """The Task of a row, as stored. It is not checked again as a producer's Task is: what
    OmniQ writes passed those checks, and every role but the table's owner writes tasks
    through omniq_insert_tasks, which refuses bad ids and queue names. A row the model would
    still refuse (the owner's psql, a func that is no import path) is read all the same, and
    the worker fails that task with a clear error when it runs it. Every read and every task
    a worker takes comes through here, so the fields are set directly: 0.75 us a task against
    4.3 us through Task(). tests/integration/test_queue.py checks that what is read back
    equals the Task that was enqueued."""
    data = dict(row["task_data"])
    task = object.__new__(Task)
    task.id = row["id"]
    task.queue_name = row["queue_name"]
    task.priority = row["priority"]
    task.status = TaskStatus(row["status"])
    task.func = row["func"]
    args = row["args"]
    task.args = tuple(args) if args.__class__ is list else args  # psql may store a non-array
    task.kwargs = row["kwargs"]
    task.created_at = row["created_at"]
    task.run_at = row["run_at"]
    task.expires_at = row["expires_at"]
    task.retry_count = row["retry_count"]
    task.max_retries = row["max_retries"]
    task.retry_delay = row["retry_delay"]
    task.dependencies = row["dependencies"]
    task.callbacks = row["callbacks"]
    task.metadata = row["metadata"]
    task.timeout = data.pop("timeout", None)
    task.result_ttl = data.pop("result_ttl", None)
    task.unique_key = None
    task.unique = None
    task.started_at = row["started_at"]
    task.finished_at = row["finished_at"]
    task.worker_id = row["worker_id"]
    task.attempts = row["attempts"]
    task.task_data = data
    return task


def task_params(task: Task) -> dict[str, Any]:
    """Parameters of the update_task query: every field, defaults included."""
    return {
        **_task_columns(task),
        "status": str(task.status),
        "dependencies": _json(task.dependencies, "dependencies", task, "[]"),
    }


def result_params(result: TaskResult) -> dict[str, Any]:
    return {
        "task_id": result.task_id,
        "status": str(result.status),
        "result": dump_json(result.result, f"result of task {result.task_id}"),
        "error": result.error,
        "error_type": result.error_type,
        "traceback": result.traceback,
        "created_at": result.created_at,
        "started_at": result.started_at,
        "completed_at": result.completed_at,
        "expires_at": result.expires_at,
        "worker_id": result.worker_id,
        "execution_time": result.execution_time,
        "memory_usage": result.memory_usage,
        "metadata": dump_json(result.metadata, "result metadata"),
        "result_data": dump_json(result.result_data, "result_data"),
    }


def known_columns(cls: type, row: Row) -> dict[str, Any]:
    """The row's values for the model's fields only. A later release may add columns (the
    migrations only add), and a model built from a whole row would refuse them."""
    values = dict(row)
    return {f.name: values[f.name] for f in fields(cls) if f.name in values}


def result_from_row(row: Row) -> TaskResult:
    return TaskResult(**known_columns(TaskResult, row))


def events_json(events: Iterable[TaskEvent]) -> str:
    documents = []
    for e in events:
        doc = {name: getattr(e, name) for name in e.__slots__}
        doc["timestamp"] = _iso(e.timestamp)
        doc["event_type"] = str(e.event_type)
        documents.append(doc)
    return dump_json(documents, "event")


def event_from_row(row: Row) -> TaskEvent:
    return TaskEvent(**known_columns(TaskEvent, row))


def schedule_params(schedule: Schedule) -> dict[str, Any]:
    data = dict(schedule.schedule_data)
    data.update({k: getattr(schedule, k) for k in SCHEDULE_DATA_FIELDS})
    values = {name: getattr(schedule, name) for name in schedule.__slots__}
    for key in SCHEDULE_DATA_FIELDS:
        values.pop(key)
    values.update(
        schedule_type=str(schedule.schedule_type),
        status=str(schedule.status),
        args=dump_json(schedule.args, f"args of schedule {schedule.id}"),
        kwargs=dump_json(schedule.kwargs, f"kwargs of schedule {schedule.id}"),
        metadata=dump_json(schedule.metadata, f"metadata of schedule {schedule.id}"),
        schedule_data=dump_json(data, f"schedule_data of schedule {schedule.id}"),
    )
    return values


def schedule_from_row(row: Row) -> Schedule:
    values = known_columns(Schedule, row)  # not the claim's db_now, nor a later release's columns
    data = dict(values.pop("schedule_data"))
    extra = {k: data.pop(k) for k in SCHEDULE_DATA_FIELDS if k in data}
    return _build(Schedule, {**values, **extra, "schedule_data": data})


def one_task_params(task: Task) -> dict[str, Any]:
    """Parameters of the enqueue_one query (omniq_enqueue_one_v1): every column of a task
    without dependencies or unique key, its JSON values serialised (TypeError, naming the
    field, before anything is sent)."""
    return {**_task_columns(task), "created_at": task.created_at}


def _task_columns(task: Task) -> dict[str, Any]:
    """The columns the typed task queries (update_task, enqueue_one) both take."""
    return {
        "id": task.id,
        "func": task.func,
        "queue_name": task.queue_name,
        "priority": task.priority,
        "args": _json(task.args, "args", task, "[]"),
        "kwargs": _json(task.kwargs, "kwargs", task, "{}"),
        "run_at": task.run_at,
        "expires_at": task.expires_at,
        "retry_count": task.retry_count,
        "max_retries": task.max_retries,
        "retry_delay": task.retry_delay,
        "callbacks": _json(task.callbacks, "callbacks", task, "{}"),
        "metadata": _json(task.metadata, "metadata", task, "{}"),
        "task_data": _json(_task_data(task), "task_data", task, "{}"),
    }


def _json(value: Any, key: str, task: Task, empty: str) -> str:
    """``value`` as JSON text; ``empty`` (no serialising) when it is empty."""
    return dump_json(value, f"{key} of task {task.id} ({task.func})") if value else empty
