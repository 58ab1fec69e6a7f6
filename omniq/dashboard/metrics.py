"""``/metrics``: the queue-wide gauges in Prometheus' text format, read by one cheap query.

The numbers come from ``backend.monitor.gauges()`` (sql/queries/monitor.sql, queue_gauges) at
every scrape: live tasks from their partial indexes and failed ones by an index-only count, so
a scrape costs the same with a million finished tasks as with none. Counters and histograms
of what tasks did (started, failed, durations) belong to the worker processes, which alone see
them: ``omniq worker --metrics-port`` (a later phase).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from ..backend.postgres.monitor import LIVE_STATES, Gauges


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


def exposition(gauges: Gauges) -> tuple[bytes, str]:
    """The scrape body and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GaugesCollector(gauges))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
