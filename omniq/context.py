"""What a running task knows about itself: ``omniq.current_task()``.

The worker sets the context before it calls the task function, in a context variable: an
``async def`` task sees its own (each asyncio task runs in a copy of the context), and a plain
function sees the one its pool thread was started with (the worker runs it in that copy).

A task someone asked to abort (``abort_task``, ``omniq abort``, ``omniq_abort_task``) learns it
two ways: an ``async def`` task is cancelled (``asyncio.CancelledError`` at its next ``await``);
a plain function, which no one can interrupt, sees ``should_abort()`` become True and stops by
raising :class:`TaskAborted` (``raise_if_aborted()`` does both). Either way the task ends
``cancelled``, with an error naming who asked; a function that returns normally after the
request ends ``cancelled`` too, its return value discarded (see README, "Aborting a task").
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field

from .errors import OmniQError


class TaskAborted(OmniQError):
    """Raised by a task function that stops because someone asked to abort it."""


class _AbortSignal:
    """Whether an abort was requested, with an Event for waiters made only when one waits:
    a threading.Event per task run cost 1.5 us, and few tasks ever wait for an abort."""

    __slots__ = ("requested", "_event")
    _lock = threading.Lock()  # guards the making of _event

    def __init__(self) -> None:
        self.requested = False
        self._event: threading.Event | None = None

    def set(self) -> None:
        self.requested = True
        event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None) -> bool:
        with self._lock:
            if self._event is None:
                self._event = threading.Event()
        if self.requested:  # set before the Event existed (set() saw none): it wakes no one
            self._event.set()
        return self._event.wait(timeout)


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The running task: its id, attempt (1 for the first run), retries already made, the
    worker running it, its queue and its function."""

    id: str
    attempt: int
    retry_count: int
    worker_id: str
    queue: str
    func: str
    _abort: _AbortSignal = field(default_factory=_AbortSignal, repr=False, compare=False)

    def should_abort(self) -> bool:
        """True once someone asked to abort this task: stop, then raise :class:`TaskAborted`."""
        return self._abort.requested

    def raise_if_aborted(self) -> None:
        """Raise :class:`TaskAborted` if someone asked to abort this task."""
        if self._abort.requested:
            raise TaskAborted(f"task {self.id} stopped: an abort was requested")

    def request_abort(self) -> None:
        """Make :meth:`should_abort` True (the worker calls this when the request reaches it)."""
        self._abort.set()

    def wait_for_abort(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on an abort request; True if one came
        (for a plain function that waits between steps)."""
        return self._abort.wait(timeout)


_current: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("omniq_current_task")


def current_task() -> TaskContext:
    """The context of the task running here; RuntimeError outside a task run by a worker."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "omniq.current_task() is only available inside a task function run by an OmniQ "
            "worker (not at import time, nor in a thread or task the function started itself "
            "without copying its context)"
        ) from None


def enter(context: TaskContext) -> None:
    """Make ``context`` current (the worker calls this in the asyncio task that runs the task
    function: that task's own copy of the context ends with it)."""
    _current.set(context)
