"""Task functions of the model-based chaos run (tests/support/chaos.py), imported by real `omniq
worker` processes (which start in the repository root). What a task does is decided by its arguments, so
the driver knows it: ``work("ok")`` succeeds, ``work("fail")`` always fails.
"""

from __future__ import annotations

import time
from typing import Any


def work(kind: str, pause: float = 0.0) -> str:
    if pause:
        time.sleep(pause)
    if kind == "fail":
        raise RuntimeError("chaos: this task always fails")
    return kind


def callback(outcome: dict[str, Any]) -> str:
    """A callback: receives the outcome of the task it follows."""
    return str(outcome["status"])
