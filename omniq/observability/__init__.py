"""Metrics, traces and logs: what monitoring systems read from OmniQ.

``metrics`` (Prometheus, the ``metrics`` extra), ``tracing`` (OpenTelemetry, the ``otel``
extra; nothing happens and nothing is imported when it is not installed) and ``logs`` (the
worker's structured log fields and the JSON formatter). Import the submodule you need: this
package imports none of them, so using one costs nothing of the others.
"""
