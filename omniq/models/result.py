"""TaskResult: the outcome of running a task, keyed by its task id."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._common import as_utc, utcnow
from .enums import ResultStatus, ResultStatusName


@dataclass(kw_only=True, slots=True, eq=True)
class TaskResult:
    """Field names match the results table."""

    task_id: str
    status: ResultStatus | ResultStatusName = ResultStatus.PENDING  # a member once made
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    expires_at: datetime | None = None
    worker_id: str | None = None
    execution_time: float | None = None
    memory_usage: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    result_data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str) or not self.task_id:
            raise ValueError(f"task_id must be a non-empty string, got {self.task_id!r}")
        self.status = ResultStatus(self.status)
        self.created_at = as_utc(self.created_at) or utcnow()
        self.started_at = as_utc(self.started_at)
        self.completed_at = as_utc(self.completed_at)
        self.expires_at = as_utc(self.expires_at)

    @property
    def is_success(self) -> bool:
        return self.status == ResultStatus.SUCCESS
