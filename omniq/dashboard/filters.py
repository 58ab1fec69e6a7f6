"""The task list's filters and cursor, read from a query string or a form, checked."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..backend.postgres.monitor import ALL_STATUSES

PAGE_SIZES = (25, 50, 100, 200)


class BadFilter(ValueError):
    """A filter value the task list cannot use; the message says which and why."""


@dataclass(frozen=True)
class TaskFilter:
    status: str = ""  # one status, or "" for all
    queue: str = ""
    func: str = ""
    search: str = ""
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50

    @classmethod
    def from_query(cls, params: Mapping[str, Any]) -> TaskFilter:
        status = str(params.get("status") or "").strip()
        if status and status not in ALL_STATUSES:
            raise BadFilter(f"unknown status {status!r}: use one of {', '.join(ALL_STATUSES)}")
        limit_text = str(params.get("limit") or 50)
        if not limit_text.isdigit() or int(limit_text) not in PAGE_SIZES:
            raise BadFilter(f"page size must be one of {PAGE_SIZES}, got {limit_text!r}")
        return cls(
            status=status,
            queue=str(params.get("queue") or "").strip(),
            func=str(params.get("func") or "").strip(),
            search=str(params.get("q") or "").strip(),
            since=_moment(params.get("since"), "from"),
            until=_moment(params.get("until"), "until"),
            limit=int(limit_text),
        )

    @property
    def statuses(self) -> list[str]:
        return [self.status] if self.status else []

    def query(self) -> dict[str, Any]:
        """Keyword arguments of ``backend.monitor.task_page``."""
        return {
            "status": self.statuses or None,
            "queue_name": self.queue or None,
            "func": self.func or None,
            "search": self.search or None,
            "created_after": self.since,
            "created_before": self.until,
        }

    def params(self, **change: Any) -> dict[str, str]:
        """The query string of this filter (with ``change`` applied), empty values left out."""
        values = {
            "status": self.status,
            "queue": self.queue,
            "func": self.func,
            "q": self.search,
            "since": _local_input(self.since),
            "until": _local_input(self.until),
            "limit": "" if self.limit == 50 else str(self.limit),
        }
        values.update({k: str(v) for k, v in change.items()})
        return {k: v for k, v in values.items() if v}

    @property
    def active(self) -> bool:
        return bool(self.queue or self.func or self.search or self.since or self.until)


def _moment(value: Any, label: str) -> datetime | None:
    """A datetime-local input (``2026-12-02T12:30``), read as UTC; ISO 8601 with a zone too."""
    text = str(value or "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadFilter(
            f"'{label}' must be a date and time like 2026-12-02T12:30 (UTC), got {text!r}"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _local_input(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") if moment else ""


def encode_cursor(before: tuple[datetime, str]) -> str:
    """The position after a page's last row, as one URL-safe word."""
    at, task_id = before
    raw = orjson.dumps([at.astimezone(UTC).isoformat(), task_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str | None) -> tuple[datetime, str] | None:
    if not text:
        return None
    try:
        at, task_id = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return datetime.fromisoformat(at), str(task_id)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadFilter(
            "the page position in the link ('before') is damaged: start again from the first page"
        ) from None
