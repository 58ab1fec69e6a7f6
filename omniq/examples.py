"""Example tasks used by ``omniq demo`` (and handy for trying OmniQ by hand).

They do small real work: count words, hash text, compute primes, wait on I/O, and one
fails twice before it succeeds so retries can be watched.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any


def word_count(text: str) -> dict[str, int]:
    """Count the words of a text."""
    counts: dict[str, int] = {}
    for word in text.lower().split():
        word = word.strip(".,;:!?\"'()")
        if word:
            counts[word] = counts.get(word, 0) + 1
    return counts


def sha256(text: str, rounds: int = 1000) -> str:
    """Hash a text ``rounds`` times (a little CPU work, run in a worker thread)."""
    digest = text.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def primes_below(limit: int) -> int:
    """How many primes are below ``limit`` (sieve of Eratosthenes)."""
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\0\0"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytearray(len(sieve[n * n :: n]))
    return sum(sieve)


async def fetch_later(name: str, seconds: float = 0.5) -> str:
    """Wait like an I/O call would (an async task: runs on the worker's event loop)."""
    await asyncio.sleep(seconds)
    return f"{name} fetched after {seconds:g}s"


def flaky(key: str, failures: int = 2) -> str:
    """Fail ``failures`` times, then succeed: shows retries with backoff.

    Attempts are counted in a file named after ``key``, so they survive worker restarts.
    """
    marker = Path(tempfile.gettempdir()) / f"omniq-flaky-{os.getuid()}-{key}"
    attempt = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(attempt))
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt}: the remote service is unavailable")
    marker.unlink()
    return f"succeeded on attempt {attempt}"


def always_fails(reason: str) -> None:
    """Fail every time: shows a task that ends failed, and its dependents cancelled."""
    raise RuntimeError(reason)


def summarize(*parts: Any) -> str:
    """Join the results handed to it (used at the end of a dependency chain)."""
    return " | ".join(str(p) for p in parts)


def notify(outcome: dict[str, Any]) -> str:
    """A callback: receives the outcome of the task it is attached to."""
    return f"callback saw task {outcome['task_id']} end with {outcome['status']}"


def tick(label: str) -> str:
    """Fired by a schedule."""
    return f"{label}: tick"
