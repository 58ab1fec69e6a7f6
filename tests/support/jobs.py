"""Task functions for the worker and scheduler tests, imported by real `omniq worker` processes.

Worker processes start in the repository root, so these are ``tests.support.jobs.<name>`` (and
``tests.support.jobs:Calculator.add``). Functions that leave a trace append one line per call to
a file whose path the test passes in: ``<what> <time.time()> <pid>``, so tests can count
attempts, see their order and measure delays across processes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
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
    """Reached as ``tests.support.jobs:Calculator.add`` (the ``module:Class.method`` form)."""

    @staticmethod
    def add(a: int, b: int) -> int:
        return a + b

    @classmethod
    def describe(cls, value: int) -> str:
        return f"{cls.__name__} got {value}"


# -- hostile tasks (tests/test_hostile_tasks.py): each does something ordinary-but-wrong ---------


def window(path: str, key: str, what: str) -> None:
    """One line ``<what> <key> <time> <pid>`` with a single append: run windows across workers."""
    line = f"{what} {key} {time.time():.6f} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_windows(path: str | Path) -> dict[str, list[tuple[float, float | None, int]]]:
    """key -> [(start, end or None, pid)] of each run, from ``window`` lines."""
    runs: dict[str, list[tuple[float, float | None, int]]] = {}
    p = Path(path)
    for line in p.read_text().splitlines() if p.exists() else []:
        what, key, at, pid = line.split(" ")
        if what == "start":
            runs.setdefault(key, []).append((float(at), None, int(pid)))
        else:
            for i, (start, end, run_pid) in enumerate(runs[key]):
                if end is None and run_pid == int(pid):
                    runs[key][i] = (start, float(at), run_pid)
                    break
    return runs


async def async_block(seconds: float, path: str | None = None, key: str = "block") -> float:
    """The trap: a blocking call inside ``async def`` freezes the worker's event loop."""
    if path:
        window(path, key, "start")
    time.sleep(seconds)
    if path:
        window(path, key, "end")
    return seconds


def exit_now(code: int = 3) -> None:
    sys.exit(code)


async def async_exit(code: int = 3) -> None:
    sys.exit(code)


def interrupt() -> None:
    raise KeyboardInterrupt


async def async_interrupt() -> None:
    raise KeyboardInterrupt


def generator_exit() -> None:
    raise GeneratorExit


def generator_exit_later() -> None:
    """Raises GeneratorExit once the worker is already awaiting the thread (the case where
    asyncio throws the exception into the awaiting coroutine)."""
    time.sleep(0.3)
    raise GeneratorExit


async def async_cancelled() -> None:
    """Raises CancelledError without being cancelled (the worker did not ask it to stop)."""
    raise asyncio.CancelledError()


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ of UnprintableError raises")


class Doom(BaseException):
    """Not an Exception: ``except Exception`` does not catch it."""


def raise_unprintable() -> None:
    raise UnprintableError("you will never read this")


async def async_raise_unprintable() -> None:
    raise UnprintableError("you will never read this")


def raise_doom(text: str = "doom") -> None:
    raise Doom(text)


async def async_raise_doom(text: str = "doom") -> None:
    raise Doom(text)


def crash_once(path: str, key: str) -> str:
    """Kill the worker process outright (no cleanup, no outcome) the first time only."""
    first = not Path(f"{path}.{key}.crashed").exists()
    window(path, key, "start")
    if first:
        Path(f"{path}.{key}.crashed").touch()
        window(path, key, "end")
        os._exit(13)
    window(path, key, "end")
    return "survived"


def huge(n: int) -> str:
    return "x" * n


def windowed(path: str, key: str, seconds: float = 0.0) -> str:
    """An ordinary task that records its run window."""
    window(path, key, "start")
    time.sleep(seconds)
    window(path, key, "end")
    return key


def leave_thread(seconds: float) -> str:
    """Start a non-daemon thread and return: the interpreter would wait for it at exit."""
    threading.Thread(target=time.sleep, args=(seconds,), name="left-by-a-task").start()
    return "left a thread"
