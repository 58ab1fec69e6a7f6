"""Task: one unit of work, a function import path plus its arguments."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._common import as_utc, new_id, utcnow
from .enums import TaskStatus
from .unique import Unique, check_unique_key, unique_key_for

# "package.module.function" or "package.module:Class.method"
_IDENT = r"[A-Za-z_]\w*"
FUNC_PATH = re.compile(rf"^{_IDENT}(\.{_IDENT})*([.:]){_IDENT}(\.{_IDENT})*$")
TASK_ID = re.compile(r"^[^\s,\x00-\x1f\x7f]{1,255}$")
# Ids OmniQ gives its own tasks (sql: omniq_reserved_id): schedule fires and callbacks.
RESERVED_ID = re.compile(
    r"@(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z|on_success|on_failure|on_complete)$"
)
QUEUE_NAME_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
CALLBACK_KINDS = frozenset({"on_success", "on_failure", "on_complete"})


@functools.lru_cache(maxsize=4096)
def _valid_path(path: str) -> bool:
    return FUNC_PATH.match(path) is not None


def func_path(func: Any) -> str:
    """Return the import path of ``func`` (a path string or a module-level callable)."""
    if callable(func) and not isinstance(func, str):
        module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
        if not module or "<" in qualname:
            raise ValueError(
                f"{func!r} has no import path (lambdas and nested functions cannot be queued); "
                "define it at module level or pass 'package.module.function'."
            )
        return f"{module}.{qualname}" if "." not in qualname else f"{module}:{qualname}"
    if not isinstance(func, str) or not _valid_path(func):
        raise ValueError(
            f"func must be an import path like 'package.module.function' or "
            f"'package.module:Class.method', got {func!r}"
        )
    return func


def check_queue_name(name: Any) -> str:
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > 200
        or QUEUE_NAME_FORBIDDEN.search(name)
    ):
        raise ValueError(
            "queue_name must be a non-empty string of at most 200 characters without control "
            f"characters, got {name!r}"
        )
    return name


def is_reserved_id(task_id: str) -> bool:
    """Whether ``task_id`` is one OmniQ gives its own tasks ('<schedule>@<due time>',
    '<task>@on_success', ...): producers may not enqueue such ids."""
    return "@" in task_id and RESERVED_ID.search(task_id) is not None


@dataclass(kw_only=True, slots=True, eq=True)
class Task:
    """A queued call of ``func(*args, **kwargs)``; field names match the tasks table."""

    func: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue_name: str = "default"
    priority: int = 0
    id: str = ""  # "" means: generate a time-ordered UUID
    status: TaskStatus = TaskStatus.PENDING
    created_at: datetime = field(default_factory=utcnow)
    run_at: datetime | None = None
    expires_at: datetime | None = None
    retry_count: int = 0
    max_retries: int = 3
    retry_delay: float = 1.0
    dependencies: list[str] = field(default_factory=list)
    callbacks: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None  # seconds; None uses the worker's default
    result_ttl: float | None = None  # seconds to keep the result; None keeps it
    # A second task with the same key is not created while this one holds it (models/unique.py).
    unique_key: str | None = None
    unique: Unique | None = None
    # Set by workers, read-only for producers.
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    attempts: int = 0
    task_data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.func = func_path(self.func)
        self.queue_name = check_queue_name(self.queue_name)
        self.args = tuple(self.args)
        self.kwargs = dict(self.kwargs)  # a copy: later changes to the caller's dict don't leak in
        if self.kwargs and any(not isinstance(k, str) for k in self.kwargs):
            raise TypeError(f"kwargs keys must be strings, got {list(self.kwargs)!r}")
        if self.status.__class__ is not TaskStatus:
            self.status = TaskStatus(self.status)
        self.created_at = as_utc(self.created_at) or utcnow()
        self.run_at = as_utc(self.run_at)
        self.expires_at = as_utc(self.expires_at)
        self.started_at = as_utc(self.started_at)
        self.finished_at = as_utc(self.finished_at)
        self.id = check_task_id(self.id) if self.id else new_id()
        _check_int("priority", self.priority, low=-(2**31), high=2**31 - 1)
        _check_int("max_retries", self.max_retries, low=0, high=10_000)
        _check_int("retry_count", self.retry_count, low=0, high=2**31 - 1)
        _check_positive("retry_delay", self.retry_delay, allow_zero=True)
        if self.timeout is not None:
            _check_positive("timeout", self.timeout)
        if self.result_ttl is not None:
            _check_positive("result_ttl", self.result_ttl)
        self.dependencies = [_task_id(d) for d in self.dependencies]
        if self.id in self.dependencies:
            raise ValueError(f"task {self.id} cannot depend on itself")
        if self.callbacks:
            self._check_callbacks()
        if self.unique is not None or self.unique_key is not None:
            self._resolve_unique()

    def _check_callbacks(self) -> None:
        unknown = set(self.callbacks) - CALLBACK_KINDS
        if unknown:
            raise ValueError(
                f"callbacks keys must be among {sorted(CALLBACK_KINDS)}, got {sorted(unknown)}"
            )
        self.callbacks = {kind: func_path(path) for kind, path in self.callbacks.items()}

    def _resolve_unique(self) -> None:
        unique = self.unique or Unique(key=check_unique_key(self.unique_key))
        if not isinstance(unique, Unique):
            raise TypeError(f"unique must be a Unique, got {unique!r}")
        if self.unique_key is not None and unique.key not in (None, self.unique_key):
            raise ValueError(
                f"unique_key {self.unique_key!r} and unique.key {unique.key!r} differ; give one"
            )
        key = unique.key or self.unique_key
        if key is None:
            key = unique_key_for(self.func, self.args, self.kwargs, self.queue_name)
        self.unique_key = check_unique_key(key)
        self.unique = unique


def check_task_id(value: Any) -> str:
    """Task ids are 1-255 printable characters without spaces or commas."""
    if not isinstance(value, str) or not TASK_ID.fullmatch(value):
        raise ValueError(
            f"a task id must be 1-255 printable characters without spaces or commas, got {value!r}"
        )
    return value


def _task_id(dep: Any) -> str:
    if isinstance(dep, Task):
        return dep.id
    try:
        return check_task_id(dep)
    except ValueError:
        raise ValueError(f"dependencies must be task ids or Task objects, got {dep!r}") from None


def _check_int(name: str, value: Any, *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer between {low} and {high}, got {value!r}")


def _check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ValueError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} number of seconds, got {value!r}"
        )
