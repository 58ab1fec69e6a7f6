"""OmniQ's data models: plain typed data, no I/O."""

from .config import PostgresConfig
from .enums import EventType, ResultStatus, ScheduleStatus, ScheduleType, TaskStatus
from .event import TaskEvent
from .result import TaskResult
from .schedule import Schedule
from .task import Task
from .unique import Enqueued, QueueSettings, Unique, unique_key_for

__all__ = [
    "Enqueued",
    "EventType",
    "PostgresConfig",
    "QueueSettings",
    "ResultStatus",
    "Schedule",
    "ScheduleStatus",
    "ScheduleType",
    "Task",
    "TaskEvent",
    "TaskResult",
    "TaskStatus",
    "Unique",
    "unique_key_for",
]
