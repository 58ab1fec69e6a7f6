"""String enums for statuses and types: each member compares equal to its value."""

from enum import StrEnum


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
