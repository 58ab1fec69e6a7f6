"""String enums for statuses and types: each member compares equal to its value.

The ``...Name`` literals are the values as strings, so that ``status="success"`` type-checks
as well as runs (tests/unit/test_models.py keeps each equal to its enum's values).
"""

import re
from enum import StrEnum
from typing import Literal


class TaskStatus(StrEnum):
    PENDING = "pending"  # ready now, or at run_at
    WAITING = "waiting"  # held until every dependency has completed
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class ResultStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


ResultStatusName = Literal["pending", "running", "success", "failure", "cancelled", "expired"]


class EventType(StrEnum):
    ENQUEUED = "enqueued"
    DEQUEUED = "dequeued"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY = "retry"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    RESCUED = "rescued"
    REQUEUED = "requeued"
    SCHEDULED = "scheduled"
    CALLBACK = "callback"


# A type of its own a user logs (TaskEvent(event_type="progress")): the column is TEXT.
CUSTOM_EVENT_TYPE = re.compile(r"[^\s\x00-\x1f\x7f]{1,100}")


def event_type_of(value: object) -> EventType | str:
    """A known event type as its member, any other name as the string itself."""
    if isinstance(value, str):
        try:
            return EventType(value)
        except ValueError:
            if CUSTOM_EVENT_TYPE.fullmatch(value):
                return value
    raise ValueError(
        f"event_type must be one of {', '.join(EventType)} or a name of your own (1 to 100 "
        f"characters, no spaces or control characters), got {value!r}"
    )


class ScheduleType(StrEnum):
    CRON = "cron"
    INTERVAL = "interval"
    TIMESTAMP = "timestamp"


class ScheduleStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
