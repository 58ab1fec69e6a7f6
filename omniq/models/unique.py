"""Unique tasks and queue settings: what a producer asks for, what an operator sets."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

import orjson

UniqueMode = Literal["skip", "replace", "keep_run_at"]
UNIQUE_MODES = ("skip", "replace", "keep_run_at")
# A task passes through these before it ends: a key that stopped counting in one of them could
# meet a second task, and the database would refuse the first one's next step.
REQUIRED_UNIQUE_STATES = frozenset({"pending", "waiting", "running"})
ALL_STATES = REQUIRED_UNIQUE_STATES | {"completed", "failed", "cancelled", "expired"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True, kw_only=True)
class Unique:
    """How a task is unique (``Task(unique=Unique(...))``; ``Task(unique_key=k)`` is
    ``Unique(key=k)``).

    key: 1-255 characters; None derives one from the task's queue, func, args and kwargs.
    states: the states in which a task holds its key (pending, waiting and running always;
    add completed, failed, cancelled or expired to refuse a new task after such an ending).
    window: the key is unique per window of this length (whole seconds, UTC-aligned): a
    task per hour, for example.
    mode: when the key is held: "skip" leaves the holder alone; "replace" gives it the new
    args, kwargs and run_at; "keep_run_at" the new args and kwargs. The holder changes only
    while it has not started; in every mode enqueue returns the holder's id.
    """

    key: str | None = None
    states: frozenset[str] = REQUIRED_UNIQUE_STATES
    window: timedelta | None = None
    mode: UniqueMode = "skip"

    def __post_init__(self) -> None:
        if self.key is not None:
            check_unique_key(self.key)
        states = frozenset(self.states)
        if not REQUIRED_UNIQUE_STATES <= states <= ALL_STATES:
            raise ValueError(
                "unique states must include pending, waiting and running, and may add "
                f"completed, failed, cancelled or expired; got {sorted(states)!r}"
            )
        object.__setattr__(self, "states", states)
        if self.window is not None:
            if not isinstance(self.window, timedelta):
                raise TypeError(f"window must be a timedelta, got {self.window!r}")
            if not timedelta(seconds=1) <= self.window <= timedelta(days=3650):
                raise ValueError(f"window must be from 1 second to 10 years, got {self.window}")
        if self.mode not in UNIQUE_MODES:
            raise ValueError(f"mode must be one of {UNIQUE_MODES}, got {self.mode!r}")


def check_unique_key(key: Any) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= 255 or _CONTROL.search(key):
        shown = key[:300] if isinstance(key, str) else key
        raise ValueError(
            "a unique key must be a string of 1-255 characters without control characters, "
            f"got {shown!r} ({len(key) if isinstance(key, str) else type(key).__name__}); "
            "use a shorter key, for example a hash of what makes the task unique"
        )
    return key


def unique_key_for(
    func: str,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    queue_name: str = "default",
) -> str:
    """A unique key derived from a call: equal for equal queue, func, args and kwargs."""
    text = orjson.dumps([queue_name, func, list(args), kwargs or {}], option=orjson.OPT_SORT_KEYS)
    return "call:" + hashlib.sha256(text).hexdigest()


class Enqueued(NamedTuple):
    """What ``enqueue_unique`` did: the task's id, and whether it was created (False: another
    task held its unique key; ``id`` is that task's)."""

    id: str
    created: bool


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """A queue's settings (omniq_queues) with its running and pending task counts.

    max_running: at most this many of its tasks run at once, across all workers (0 pauses);
    rate: at most this many start per second, up to burst at once; tokens: what the rate's
    bucket holds now. None: no such limit.
    """

    name: str
    paused: bool = False
    max_running: int | None = None
    rate: float | None = None
    burst: int | None = None
    tokens: float | None = None
    running: int = 0
    pending: int = 0
    updated_at: datetime | None = None


def check_limits(max_running: Any, rate: Any, burst: Any) -> None:
    """What omniq_set_queue_limits_v1 checks, checked first in Python (None: no limit)."""
    if max_running is not None and (
        isinstance(max_running, bool)
        or not isinstance(max_running, int)
        or not 0 <= max_running < 2**31
    ):
        raise ValueError(
            f"max_running must be an integer of 0 or more (0 pauses the queue), got {max_running!r}"
        )
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < float("inf")
    ):
        raise ValueError(f"rate must be a positive number of tasks per second, got {rate!r}")
    if burst is not None:
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst < 2**31:
            raise ValueError(f"burst must be an integer of 1 or more, got {burst!r}")
        if rate is None:
            raise ValueError("burst needs a rate: it is how many tasks may start at once under it")
