"""Abort requests reaching a worker: heard on its LISTEN connection, looked up again after it
reconnects, and remembered for a moment when they arrive before the task does.

``omniq_abort_task`` (sql/functions/abort.sql) records the request on the task row and sends
``'<worker id> <attempt> <task id>'`` on the 'aborts' channel. The worker stops the attempt it
runs (``stop(task_id, attempt)``: an ``async def`` task is cancelled, a thread task's
``should_abort()`` becomes True); a notice for another worker, or for an attempt this worker
no longer runs, is ignored. Races, and what covers each:

- the NOTIFY arrives before the reply of the dequeue that took the task (two connections):
  the notice is kept (a bounded memory) and applied when the task starts here;
- the LISTEN connection was down when it was sent: after every reconnect the worker asks the
  database which of its running tasks have a request (one indexed query, never while idle);
- the worker dies, or releases the task at shutdown: the database ends the task 'cancelled'
  instead of running it again (the rescue guard); a burst worker (no LISTEN) is not told,
  and its task ends 'cancelled' when it finishes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from ..backend.postgres.protocol import WorkerProtocol
from ..errors import is_transient
from ..models.task import Task
from .outcomes import failure

log = logging.getLogger("omniq.worker")

EARLY_NOTICES = 1000  # notices kept for tasks not (yet) running here, oldest dropped first


class Aborts:
    """The abort notices of one worker. ``stop(task_id, attempt)`` stops that attempt if this
    worker runs it, and says whether it did; everything here runs on the worker's loop."""

    def __init__(
        self, worker_id: str, protocol: WorkerProtocol, stop: Callable[[str, int], bool]
    ) -> None:
        self._worker_id = worker_id
        self._protocol = protocol
        self._stop = stop
        self._early: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._lookups: set[asyncio.Task[None]] = set()

    def on_notice(self, payload: str | None) -> None:
        """A notification of the 'aborts' channel (None: the LISTEN connection came back)."""
        if payload is None:
            lookup = asyncio.get_running_loop().create_task(self.look_up())
            self._lookups.add(lookup)
            lookup.add_done_callback(self._lookups.discard)
            return
        worker_id, _, rest = payload.partition(" ")
        attempt, _, task_id = rest.partition(" ")
        if worker_id != self._worker_id or not attempt.isdigit() or not task_id:
            return  # another worker's task, or not a notice of ours
        if not self._stop(task_id, int(attempt)):
            self._early[task_id, int(attempt)] = None  # its dequeue's reply may be on its way
            while len(self._early) > EARLY_NOTICES:
                self._early.popitem(last=False)

    def requested(self, task: Task) -> bool:
        """Whether a notice for this attempt of ``task`` came before the task itself."""
        return self._early.pop((task.id, task.attempts), 0) is None

    async def look_up(self) -> None:
        """Stop the tasks of this worker that have a request it may have missed."""
        try:
            requests = await self._protocol.abort_requests(self._worker_id)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("looking up abort requests failed (%s); they apply at the finish", exc)
            return
        for task_id, attempt in requests:
            self._stop(task_id, attempt)


def stopped(exc: BaseException | None) -> dict[str, str | None]:
    """The outcome fields of an attempt that ended after an abort request: ``exc`` is what it
    raised (``CancelledError`` for an ``async def`` task), None if it returned. The database
    replaces error and error_type with the request's (who asked, and why); the traceback
    shows where the task was when it stopped."""
    if exc is None:
        return {"error": "returned after the abort request (its value is discarded)"}
    return {**failure(exc)}
