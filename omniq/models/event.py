"""TaskEvent: one entry of the append-only event log."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._common import as_utc, new_id, utcnow
from .enums import EventType, event_type_of


@dataclass(kw_only=True, slots=True, eq=True)
class TaskEvent:
    """Field names match the events table."""

    task_id: str
    event_type: EventType | str  # a member when known; any other name as given (event_type_of)
    id: str = field(default_factory=new_id)
    timestamp: datetime = field(default_factory=utcnow)
    message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    worker_id: str | None = None
    queue_name: str | None = None
    schedule_id: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    execution_time: float | None = None
    memory_usage: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    event_data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str) or not self.task_id:
            raise ValueError(f"task_id must be a non-empty string, got {self.task_id!r}")
        self.event_type = event_type_of(self.event_type)
        self.timestamp = as_utc(self.timestamp) or utcnow()
