"""OmniQ: a PostgreSQL task queue for Python.

Tasks, results, events and schedules live in PostgreSQL; every query is a named .sql file;
dequeue, retries and schedule advancement are stored procedures; workers wake on NOTIFY.
"""

from .context import TaskAborted, TaskContext, current_task
from .models import (
    EventType,
    PostgresConfig,
    ResultStatus,
    Schedule,
    ScheduleStatus,
    ScheduleType,
    Task,
    TaskEvent,
    TaskResult,
    TaskStatus,
    Unique,
)

__version__ = "0.1.0"

__all__ = [
    "EventType",
    "PostgresConfig",
    "ResultStatus",
    "Schedule",
    "ScheduleStatus",
    "ScheduleType",
    "Task",
    "TaskEvent",
    "TaskAborted",
    "TaskContext",
    "TaskResult",
    "TaskStatus",
    "Unique",
    "__version__",
    "current_task",
]
