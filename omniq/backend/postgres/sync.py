"""The sync API's plumbing: one background event loop per backend, and :func:`run_on`, which
the ``_sync`` twins (written by scripts/unasync from the async methods) call.

asyncpg pools belong to the loop that created them, so every sync call is sent to the loop
that owns the backend's pool: a daemon thread the backend starts for sync use, or the
caller's own loop after ``async with``, when the sync call comes from another thread.

After ``fork()`` the child has a copy of that loop but not its thread, and shares the parent's
sockets: :func:`fork_generation` lets a backend notice and start afresh in the child.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import threading
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

T = TypeVar("T")


_forks = 0  # how many fork()s led to this process: a backend opened under another count is stale


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def fork_generation() -> int:
    """Changes in a child process after ``fork()``; cheap enough for every call."""
    return _forks


class ForkAwareSelector(selectors.BaseSelector):
    """The loop thread's selector: in a child after ``fork()`` it starts empty.

    The child's copy of the parent's epoll instance is the parent's: the inherited pool's
    connections unregistering their sockets there (when the child drops or collects them)
    would deafen the parent's loop to its own sockets. In the child this selector forgets
    them instead, through the public selectors API (asyncio.SelectorEventLoop(selector)).
    """

    def __init__(self) -> None:
        self._generation = fork_generation()
        self._inner = selectors.DefaultSelector()

    def _current(self) -> selectors.BaseSelector:
        if self._generation != fork_generation():  # a child: leave the parent's epoll alone
            self._generation, self._inner = fork_generation(), selectors.DefaultSelector()
        return self._inner

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._current().register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._current().unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._current().modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return self._current().select(timeout)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._current().get_map()

    def close(self) -> None:
        self._current().close()


class LoopThread:
    """An event loop running forever in a daemon thread (fork-aware: see ForkAwareSelector)."""

    def __init__(self, name: str = "omniq-loop") -> None:
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop(ForkAwareSelector())
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
