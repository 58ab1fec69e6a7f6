"""Task functions for the fault tests (tests/acceptance/test_faults.py), imported by real worker
processes as ``tests.support.fault_jobs.<name>`` (workers start in the repository root).
``record_run`` appends one line per run, ``<key> <pid>``, with a single ``write`` on a file
opened for appending: lines from concurrent processes never interleave, and a run whose
worker is SIGKILLed later is still counted.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from pathlib import Path


async def record_run(path: str, key: str, seconds: float = 0.0) -> str:
    """Note that this run started (key and pid), then take ``seconds`` on the event loop."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        await asyncio.sleep(seconds)
    return key


def raise_text(hex_text: str) -> None:
    """Fail with a message given as hex of its UTF-8 (surrogates allowed): arguments cannot
    carry NUL or lone surrogates, exception messages can."""
    raise ValueError(bytes.fromhex(hex_text).decode("utf-8", "surrogatepass"))


def runs(path: str | Path) -> dict[str, list[int]]:
    """key -> pids of the processes that started a run of it, in order."""
    found: dict[str, list[int]] = defaultdict(list)
    p = Path(path)
    if p.exists():
        for line in p.read_text().splitlines():
            key, pid = line.rsplit(" ", 1)
            found[key].append(int(pid))
    return dict(found)
