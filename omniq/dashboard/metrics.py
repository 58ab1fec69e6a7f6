"""``/metrics``: the queue-wide gauges in Prometheus' text format, read by one cheap query.

The numbers come from ``backend.monitor.gauges()`` (sql/queries/monitor.sql, queue_gauges) at
every scrape: live tasks from their partial indexes and failed ones by an index-only count, so
a scrape costs the same with a million finished tasks as with none. Counters and histograms
of what tasks did (started, failed, durations) belong to the worker processes, which alone see
them: ``omniq worker --metrics-port`` (omniq/observability/metrics.py).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..backend.postgres.monitor import Gauges
from ..observability.metrics import GaugesCollector


def exposition(gauges: Gauges) -> tuple[bytes, str]:
    """The scrape body and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GaugesCollector(gauges))
    return generate_latest(registry), CONTENT_TYPE_LATEST
