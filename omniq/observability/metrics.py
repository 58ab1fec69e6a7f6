"""Prometheus metrics: a worker's own counters and histogram, and the queue-wide gauges.

Each :class:`WorkerMetrics` has a registry of its own (not prometheus_client's global one),
so several workers in one process, or tests, never count into each other's series. The worker
counts where it knows what happened: a start when it calls the task function, an end when the
database has recorded the outcome (the status it gave the task: completed, retried, failed,
expired), a rescue from what its rescue returned.

The queue-wide gauges come from one cheap query at scrape time (monitor.sql, queue_gauges: the
partial indexes of live tasks, never the history): :class:`GaugesCollector` turns one read into
metric families. Needs the ``metrics`` extra: ``pip install 'omniq[metrics]'``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from ..backend.postgres.monitor import LIVE_STATES, Gauges

TASK_LABELS = ("queue", "func")
# Execution time buckets, seconds: from a fast in-process call to a long batch job.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
ENDED = {  # the status the database gave a task -> the counter it counts in
    "completed": "completed",
    "pending": "retried",
    "failed": "failed",
    "expired": "expired",
}


class WorkerMetrics:
    """One worker's counters by queue and func, its execution-time histogram, its rescues."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        def counter(name: str, text: str) -> Counter:
            return Counter(f"omniq_tasks_{name}", text, TASK_LABELS, registry=r)

        self.started = counter("started", "Task attempts this worker started running.")
        self.ended = {
            "completed": counter("completed", "Task attempts that succeeded (recorded)."),
            "retried": counter("retried", "Task attempts that failed and were scheduled again."),
            "failed": counter("failed", "Task attempts that failed for good (no retry left)."),
            "expired": counter("expired", "Tasks that expired before they could run."),
        }
        self.execution = Histogram(
            "omniq_task_execution_seconds",
            "How long task functions ran, by queue and func (recorded outcomes).",
            TASK_LABELS,
            registry=r,
            buckets=BUCKETS,
        )
        self.rescued = Counter(
            "omniq_tasks_rescued",
            "Tasks this worker returned to pending from workers that stopped heartbeating.",
            registry=r,
        )

    def task_started(self, queue: str, func: str) -> None:
        self.started.labels(queue, func).inc()

    def task_ended(self, queue: str, func: str, status: str, seconds: float | None) -> None:
        """An outcome the database recorded, by the status it gave the task."""
        counter = self.ended.get(ENDED.get(status, "failed"))
        assert counter is not None
        counter.labels(queue, func).inc()
        if seconds is not None and status != "expired":
            self.execution.labels(queue, func).observe(seconds)

    def tasks_rescued(self, count: int) -> None:
        if count:
            self.rescued.inc(count)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve this registry on ``http://addr:port/metrics`` (prometheus_client's own
        server, in a daemon thread)."""
        start_http_server(port, addr, registry=self.registry)

    def add_gauges(
        self,
        read: Callable[[], Coroutine[Any, Any, Gauges]],
        loop: asyncio.AbstractEventLoop,
        timeout: float = 10.0,
    ) -> None:
        """Add the queue-wide gauges, read by ``read()`` on ``loop`` at each scrape (from the
        HTTP server's thread: one statement per scrape, none between scrapes)."""
        self.registry.register(ScrapedGauges(read, loop, timeout))


class GaugesCollector:
    """Turns one read of the gauges into metric families (a collector for one scrape)."""

    def __init__(self, gauges: Gauges) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        g = self.gauges
        depth = GaugeMetricFamily(
            "omniq_queue_depth",
            "Tasks per queue and status: ready (due now), later (run_at in the future), "
            "waiting (on dependencies), running, failed (kept for retry).",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            "omniq_queue_oldest_ready_age_seconds",
            "How long the longest-waiting ready task of the queue has been due (0: none ready).",
            labels=["queue"],
        )
        for name in sorted(g.queues):
            stats = g.queues[name]
            for status in LIVE_STATES:
                depth.add_metric([name, status], getattr(stats, status))
            oldest.add_metric([name], stats.oldest_ready_seconds(g.at) or 0.0)
        yield depth
        yield oldest
        yield GaugeMetricFamily(
            "omniq_workers_alive",
            "Registered workers that heartbeat within their own timeout.",
            value=g.workers_alive,
        )
        yield GaugeMetricFamily(
            "omniq_workers_stale",
            "Registered workers silent for longer than their timeout (their tasks get rescued).",
            value=g.workers_stale,
        )


class ScrapedGauges:
    """The gauges read at each scrape, on the event loop that owns the backend."""

    def __init__(
        self,
        read: Callable[[], Coroutine[Any, Any, Gauges]],
        loop: asyncio.AbstractEventLoop,
        timeout: float,
    ) -> None:
        self._read, self._loop, self._timeout = read, loop, timeout

    def collect(self) -> Iterator[Metric]:
        gauges = asyncio.run_coroutine_threadsafe(self._read(), self._loop).result(self._timeout)
        yield from GaugesCollector(gauges).collect()
