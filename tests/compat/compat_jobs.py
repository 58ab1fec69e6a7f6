"""Task functions for the compatibility test, run by the workers of both releases.

Every run appends one line to a file of its own process in $OMNIQ_COMPAT_RUNS: the task's key
and which OmniQ ran it, so the test counts runs per task and per release. The workers import
this module from their working directory, a scratch directory the test copies it into (never
the repository root, whose omniq/ would shadow the release under test).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _runs() -> Path:
    return Path(os.environ["OMNIQ_COMPAT_RUNS"])


def _record(key: str, ok: bool) -> None:
    line = {"key": key, "ok": ok, "omniq": sys.modules["omniq"].__file__, "pid": os.getpid()}
    with (_runs() / f"{os.getpid()}.jsonl").open("a") as out:
        out.write(json.dumps(line) + "\n")


def _earlier_runs(key: str) -> int:
    count = 0
    for path in _runs().glob("*.jsonl"):
        for line in path.read_text().splitlines():
            count += json.loads(line)["key"] == key
    return count


def plain(key: str) -> str:
    _record(key, True)
    return key


def flaky(key: str) -> str:
    """Fails its first run, succeeds on its retry."""
    if _earlier_runs(key) == 0:
        _record(key, False)
        raise RuntimeError(f"{key}: failing the first run on purpose")
    _record(key, True)
    return key


def callback(outcome: dict[str, Any]) -> None:
    _record(f"callback:{outcome['task_id']}", True)
