"""How many tasks a worker holds beyond those running, when ``prefetch`` is not set.

Prefetch hides the dequeue's round trip: while the next batch is on its way, held tasks keep
the slots busy. Tasks that run longer than a round trip need no more than ``concurrency``
held (the fixed default before). Tasks that finish faster leave the slots idle while the
worker waits for its next batch, so the worker holds as many as its slots run in one round
trip: ``concurrency * round trip / task time``, at most ``MAX_FACTOR * concurrency``. Tasks
held that way all finish within about one round trip, about as soon as they would have
started had they stayed in the table.

Both times are moving averages of what this worker measured, so a worker whose tasks turn
slow holds fewer within a few tasks. Tasks it took while they were fast are not kept waiting
behind slow ones: when tasks are held beyond ``concurrency`` and no task has started for
``HOLD_LIMIT`` (every slot busy with a task that has run that long), the worker gives those
back to the queue (untouched, no retry counted), where an idle worker can take them, and holds
``concurrency`` again until its tasks are fast again. It goes by the slots, not by how long the
tasks held have waited: on a machine short of CPU, short tasks wait too, and giving them back
would only make them be taken again.
"""

from __future__ import annotations

MAX_FACTOR = 20  # hold at most this many times concurrency beyond the running tasks
HOLD_LIMIT = 1.0  # seconds without a task starting before those held beyond concurrency go
_WEIGHT = 0.2  # of the newest measurement in each moving average


class AdaptivePrefetch:
    """The prefetch of a worker of ``concurrency`` slots, from its task and dequeue times."""

    __slots__ = ("_concurrency", "_task_time", "_dequeue_time")

    def __init__(self, concurrency: int) -> None:
        self._concurrency = concurrency
        self._task_time: float | None = None  # seconds, moving average of task runs
        self._dequeue_time: float | None = None  # seconds, moving average of dequeue calls

    def task_ran(self, seconds: float) -> None:
        self._task_time = _average(self._task_time, seconds)

    def dequeued(self, seconds: float) -> None:
        self._dequeue_time = _average(self._dequeue_time, seconds)

    def slowed(self, seconds: float) -> None:
        """No task started for ``seconds``: tasks take at least that long now."""
        self._task_time = max(self._task_time or 0.0, seconds)

    @property
    def value(self) -> int:
        """Tasks to hold beyond those running: ``concurrency`` until both times are known."""
        low, high = self._concurrency, MAX_FACTOR * self._concurrency
        if self._task_time is None or self._dequeue_time is None:
            return low
        if self._task_time * high <= self._dequeue_time * self._concurrency:
            return high  # also covers a task time of 0
        return max(low, int(self._concurrency * self._dequeue_time / self._task_time))


def _average(mean: float | None, sample: float) -> float:
    return sample if mean is None else mean + _WEIGHT * (sample - mean)
