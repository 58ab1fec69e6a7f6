"""Task functions for the worker and scheduler tests, imported by real `omniq worker` processes.

The worker processes run with ``tests/`` as their working directory, so these are ``jobs.<name>``
(and ``jobs:Calculator.add``). Functions that leave a trace append one line per call to a file
whose path the test passes in: ``<what> <time.time()> <pid>``, so tests can count attempts, see
their order and measure delays across processes.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

NOT_CALLABLE = 42  # a task whose func names this fails with "is not callable"


def _trace(path: str, what: str) -> int:
    """Append ``what time pid`` to ``path``; returns the number of lines now in the file."""
    with open(path, "a") as f:
        f.write(f"{what} {time.time():.6f} {os.getpid()}\n")
    return len(Path(path).read_text().splitlines())


def read_trace(path: str | Path) -> list[tuple[str, float, int]]:
    """The lines written by ``_trace``: (what, unix time, pid), oldest first."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        what, at, pid = line.rsplit(" ", 2)
        rows.append((what, float(at), int(pid)))
    return rows


def noop() -> None:
    return None


def add(a: int, b: int) -> int:
    return a + b


def echo(value: Any) -> Any:
    """Return the argument: the callback tests store the outcome dict a callback received."""
    return value


def marker(path: str, text: str) -> str:
    """Leave ``text`` in the trace file (to show that, when and in which order a task ran)."""
    _trace(path, text)
    return text


async def async_sleep(seconds: float, path: str | None = None) -> float:
    """Sleep on the worker's event loop; with ``path``, trace 'start' and 'end'."""
    if path:
        _trace(path, "start")
    await asyncio.sleep(seconds)
    if path:
        _trace(path, "end")
    return seconds


def thread_sleep(seconds: float, path: str | None = None) -> float:
    """Sleep in a worker thread (a plain function); with ``path``, trace 'start' and 'end'."""
    if path:
        _trace(path, "start")
    time.sleep(seconds)
    if path:
        _trace(path, "end")
    return seconds


async def sleep_once(path: str, seconds: float) -> str:
    """Sleep ``seconds`` on the first run only (traced 'start'); later runs return at once."""
    first = not Path(path).exists()
    _trace(path, "start")
    if first:
        await asyncio.sleep(seconds)
    _trace(path, "end")
    return "slept" if first else "quick"


def thread_sleep_once(path: str, seconds: float) -> str:
    """``sleep_once`` in a thread: a task whose first run cannot be interrupted."""
    first = not Path(path).exists()
    _trace(path, "start")
    if first:
        time.sleep(seconds)
    _trace(path, "end")
    return "slept" if first else "quick"


def fail_always(message: str = "this task always fails") -> None:
    raise ValueError(message)


def flaky(path: str, failures: int) -> int:
    """Fail the first ``failures`` attempts (counted in ``path``), then return the attempt number."""
    attempt = _trace(path, "attempt")
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} of {failures + 1} fails on purpose")
    return attempt


def not_json() -> Any:
    """Return a value JSON cannot hold: the run is a failure with a clear error."""
    return {1, 2, 3}


class Calculator:
    """Reached as ``jobs:Calculator.add`` (the ``module:Class.method`` form)."""

    @staticmethod
    def add(a: int, b: int) -> int:
        return a + b

    @classmethod
    def describe(cls, value: int) -> str:
        return f"{cls.__name__} got {value}"
