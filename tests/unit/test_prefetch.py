"""The adaptive prefetch's arithmetic (omniq/worker/prefetch.py): no database needed; the
worker's use of it is tests/integration/test_prefetch.py."""

from __future__ import annotations

from omniq.worker.prefetch import HOLD_LIMIT, MAX_FACTOR, AdaptivePrefetch


def test_the_prefetch_follows_the_two_times() -> None:
    pace = AdaptivePrefetch(concurrency=4)
    assert pace.value == 4  # nothing measured yet: concurrency, as before
    pace.dequeued(0.001)
    assert pace.value == 4
    pace.task_ran(0.010)  # tasks 10x a dequeue: concurrency
    assert pace.value == 4
    for _ in range(50):
        pace.task_ran(0.0001)  # tasks a tenth of a dequeue: 10 x concurrency
    assert 38 <= pace.value <= 40
    for _ in range(50):
        pace.task_ran(0.0)  # instant: the cap
    assert pace.value == MAX_FACTOR * 4
    for _ in range(50):
        pace.task_ran(1.0)  # slow again: back to concurrency within a few tasks
    assert pace.value == 4
    for _ in range(50):
        pace.task_ran(0.0)
    pace.slowed(HOLD_LIMIT)  # tasks held waited that long: concurrency at once
    assert pace.value == 4
