"""Task functions that add an event to the current span (tests/integration/test_tracing.py): it
must be the worker's consumer span, in a thread (plain function) as on the loop (async)."""

from __future__ import annotations

from opentelemetry import trace


def traced(name: str) -> str:
    trace.get_current_span().add_event(name)
    return name


async def async_traced(name: str) -> str:
    trace.get_current_span().add_event(name)
    return name


def fails() -> None:
    raise RuntimeError("traced failure")
