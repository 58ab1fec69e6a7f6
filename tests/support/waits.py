"""Waits that a wake-up must end, checked without timing: the call gets a LONG timeout, and
``soon`` fails unless it returns well before it. A missing wake-up (NOTIFY, commit, close)
fails the test; a slow, loaded machine does not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

LONG = 120.0  # seconds: the timeout given to the waits under test


async def soon(awaitable: Awaitable[T]) -> T:
    """What ``awaitable`` returns, as long as it comes well before a LONG timeout."""
    return await asyncio.wait_for(awaitable, LONG / 2)
