"""Task functions for scripts/bench.py; the benchmark starts OmniQ workers in scripts/, so
these import as ``bench_tasks.noop`` and ``bench_tasks.stamp``.

Both are ``async def``, like the peers' benchmark jobs, so every system runs its no-op on the
event loop (a plain function would go through OmniQ's thread pool).
"""

from __future__ import annotations

import time


async def noop() -> None:
    """Does nothing: processing throughput measures the queue, not the work."""


async def stamp(enqueued_at: float) -> float:
    """Returns when it started (``time.time()``); the benchmark subtracts ``enqueued_at``."""
    return time.time()
