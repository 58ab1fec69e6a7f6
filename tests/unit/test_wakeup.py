"""listener.Wakeup: the flag a waiter clears before looking and waits on afterwards."""

from __future__ import annotations

import asyncio

import pytest

from omniq.backend.postgres.listener import Wakeup


async def test_a_set_before_the_wait_is_not_missed() -> None:
    wakeup = Wakeup(None)
    wakeup.set()  # a NOTIFY between the look and the wait
    assert await wakeup.wait(None) is True
    wakeup.clear()
    assert not wakeup.is_set()


async def test_set_wakes_the_waiter_and_a_timeout_ends_the_wait() -> None:
    wakeup = Wakeup(frozenset({"q"}))
    waiting = asyncio.create_task(wakeup.wait(5.0))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    wakeup.set()
    assert await asyncio.wait_for(waiting, 1.0) is True
    wakeup.clear()
    assert await wakeup.wait(0.05) is False  # nobody set it
    assert await wakeup.wait(0) is False  # no time left: just the flag


async def test_a_cancelled_wait_leaves_the_wakeup_usable() -> None:
    wakeup = Wakeup(None)
    waiting = asyncio.create_task(wakeup.wait(None))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    wakeup.set()  # no waiter now: only the flag
    assert await asyncio.wait_for(wakeup.wait(None), 1.0) is True


async def test_each_wait_resumes_on_the_loop_turn_after_set() -> None:
    # The reason for the class: asyncio.wait_for over an Event took two more turns.
    wakeup = Wakeup(None)
    resumed: list[int] = []
    turns = 0

    async def waiter() -> None:
        await wakeup.wait(5.0)
        resumed.append(turns)

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # the waiter is waiting
    wakeup.set()
    while not resumed:
        turns += 1
        await asyncio.sleep(0)  # one loop turn
    assert resumed == [1]
    await task
