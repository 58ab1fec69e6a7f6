"""The worker's log fields and ``--log-format json``.

Every worker log line about a task carries ``task_id``, ``func``, ``queue`` and ``attempt`` as
attributes of its record (``extra=``), for handlers that keep structured fields.
:class:`JsonFormatter` writes each record as one JSON object per line, with those fields when
the record has them (orjson; no logging library needed).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

TASK_FIELDS = ("task_id", "func", "queue", "attempt")


class _TaskLike(Protocol):
    id: str
    func: str
    queue_name: str
    attempts: int


def fields(task_id: str, func: str, queue: str, attempt: int) -> dict[str, Any]:
    """The ``extra=`` of a log line about one attempt of a task."""
    return {"task_id": task_id, "func": func, "queue": queue, "attempt": attempt}


def task_fields(task: _TaskLike) -> dict[str, Any]:
    """The ``extra=`` of a log line about the current attempt of ``task``."""
    return fields(task.id, task.func, task.queue_name, task.attempts)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the task
    fields when present, and the formatted exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in TASK_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()
