"""Schedule: a task fired by cron expression, fixed interval or one-shot timestamp."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ._common import as_utc, new_id, utcnow
from .enums import ScheduleStatus, ScheduleType
from .task import TASK_ID, check_queue_name, func_path

SCHEDULE_ID_MAX = 200  # a fired task's id is '<schedule id>@<due time>', at most 255 characters


# croniter is imported where a cron expression is used: importing it cost every process (a
# worker, each CLI command) 16 ms at start, and most never read a cron expression.
def valid_cron(expression: str) -> bool:
    """Whether ``expression`` is a cron expression croniter accepts."""
    from croniter import croniter

    return bool(croniter.is_valid(expression))


def next_cron_time(expression: str, after: datetime) -> datetime:
    """The first time ``expression`` matches strictly after ``after``."""
    from croniter import croniter

    return croniter(expression, after).get_next(datetime)


@dataclass(kw_only=True, slots=True, eq=True)
class Schedule:
    """Field names match the schedules table; ``schedule_type`` is inferred when omitted.

    Cron expressions are evaluated in UTC. ``next_run`` is computed when not given: the next
    cron time, ``created_at + interval_seconds``, or ``timestamp``. ``ttl_seconds`` sets
    ``expires_at`` to ``created_at + ttl_seconds`` unless ``expires_at`` is given.
    """

    func: str
    schedule_type: ScheduleType | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue_name: str = "default"
    cron_expression: str | None = None
    interval_seconds: float | None = None
    timestamp: datetime | None = None
    id: str = field(default_factory=new_id)
    status: ScheduleStatus = ScheduleStatus.ACTIVE
    created_at: datetime = field(default_factory=utcnow)
    last_run: datetime | None = None
    next_run: datetime | None = None
    max_runs: int | None = None
    run_count: int = 0
    ttl_seconds: float | None = None
    expires_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Options copied onto every task the schedule fires (kept in schedule_data).
    priority: int = 0
    max_retries: int = 3
    retry_delay: float = 1.0
    timeout: float | None = None
    schedule_data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.id, str)
            or len(self.id) > SCHEDULE_ID_MAX
            or not TASK_ID.fullmatch(self.id)
        ):
            raise ValueError(
                f"a schedule id must be 1-{SCHEDULE_ID_MAX} printable characters without spaces "
                f"or commas, got {self.id!r}"
            )
        self.func = func_path(self.func)
        self.queue_name = check_queue_name(self.queue_name)
        self.args = tuple(self.args)
        self.kwargs = dict(self.kwargs)
        self.schedule_type = ScheduleType(self.schedule_type or self._infer_type())
        self.status = ScheduleStatus(self.status)
        self.created_at = as_utc(self.created_at) or utcnow()
        self.timestamp = as_utc(self.timestamp)
        self.last_run = as_utc(self.last_run)
        self.expires_at = as_utc(self.expires_at)
        self._validate_trigger()
        if self.max_runs is not None and (not isinstance(self.max_runs, int) or self.max_runs < 1):
            raise ValueError(f"max_runs must be a positive integer or None, got {self.max_runs!r}")
        if self.ttl_seconds is not None:
            if self.ttl_seconds <= 0:
                raise ValueError(f"ttl_seconds must be positive, got {self.ttl_seconds!r}")
            if self.expires_at is None:
                self.expires_at = self.created_at + timedelta(seconds=self.ttl_seconds)
        self.next_run = as_utc(self.next_run) or self.first_run()

    def _infer_type(self) -> ScheduleType:
        given = [
            kind
            for kind, value in (
                (ScheduleType.CRON, self.cron_expression),
                (ScheduleType.INTERVAL, self.interval_seconds),
                (ScheduleType.TIMESTAMP, self.timestamp),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "a schedule needs exactly one of cron_expression, interval_seconds or timestamp "
                f"(or an explicit schedule_type), got {len(given)}"
            )
        return given[0]

    def _validate_trigger(self) -> None:
        if self.schedule_type == ScheduleType.CRON:
            if not isinstance(self.cron_expression, str) or not valid_cron(self.cron_expression):
                raise ValueError(
                    f"invalid cron expression {self.cron_expression!r}: expected five fields "
                    "'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *'"
                )
        elif self.schedule_type == ScheduleType.INTERVAL:
            value = self.interval_seconds
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"interval_seconds must be a positive number, got {value!r}")
        elif self.timestamp is None:
            raise ValueError("a timestamp schedule needs timestamp=<datetime>")

    def first_run(self) -> datetime | None:
        """When the schedule fires first, computed from ``created_at``."""
        if self.schedule_type == ScheduleType.TIMESTAMP:
            return self.timestamp
        if self.schedule_type == ScheduleType.INTERVAL:
            return self.created_at + timedelta(seconds=float(self.interval_seconds or 0))
        return self.next_after(self.created_at)

    def next_after(self, now: datetime, due: datetime | None = None) -> datetime | None:
        """The next fire time strictly after ``now``; ``None`` for a one-shot schedule.

        A window missed while nothing ran fires once, not as a burst: the result is always in
        the future. Interval schedules keep their phase (``due + k * interval``).
        """
        now = as_utc(now) or utcnow()
        if self.schedule_type == ScheduleType.TIMESTAMP:
            return None
        if self.schedule_type == ScheduleType.INTERVAL:
            step = timedelta(seconds=float(self.interval_seconds or 0))
            base = as_utc(due) or now
            if base > now:
                return base + step
            missed = int((now - base) / step) + 1
            return base + missed * step
        return next_cron_time(self.cron_expression or "", now)
