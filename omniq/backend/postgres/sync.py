"""The sync API: one background event loop per backend, and ``_sync`` methods made from async ones.

asyncpg pools belong to the loop that created them, so every sync call is sent to the loop
that owns the backend's pool: a daemon thread the backend starts for sync use, or the
caller's own loop after ``async with``, when the sync call comes from another thread.

After ``fork()`` the child has a copy of that loop but not its thread, and shares the parent's
sockets: :func:`fork_generation` lets a backend notice and start afresh in the child.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=type)


_forks = 0  # how many fork()s led to this process: a backend opened under another count is stale


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def fork_generation() -> int:
    """Changes in a child process after ``fork()``; cheap enough for every call."""
    return _forks


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, name: str = "omniq-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


def run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on ``loop`` from another thread and return its result."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError(
            "a _sync method was called on the event loop that runs this backend, which would "
            "block it forever; use the async method with await, or call from another thread"
        )
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def with_sync_methods(cls: C) -> C:
    """Add ``name_sync`` for every public coroutine method ``name`` of ``cls`` and its bases.

    The wrapper sends the coroutine to the loop returned by ``self._sync_loop()``. Names in
    the class attribute ``_async_only`` get no twin (their result belongs to the loop).
    """
    async_only = getattr(cls, "_async_only", frozenset())
    for klass in reversed(cls.__mro__):
        for name, fn in list(vars(klass).items()):
            if name.startswith("_") or name in async_only or not inspect.iscoroutinefunction(fn):
                continue
            if f"{name}_sync" not in vars(cls):
                setattr(cls, f"{name}_sync", _make_sync(fn))
    return cls


def _make_sync(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        return run_on(self._sync_loop(), fn(self, *args, **kwargs))

    wrapper.__name__ = wrapper.__qualname__ = f"{fn.__name__}_sync"
    wrapper.__doc__ = f"Blocking form of :meth:`{fn.__name__}` (same arguments and result)."
    return wrapper
