"""Reading a Prometheus scrape in tests: samples by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape (parsed with prometheus_client's parser), keyed by its name and
    its sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def of(queue: str, func: str) -> tuple[tuple[str, str], ...]:
    """The labels of a worker counter."""
    return (("func", func), ("queue", queue))
