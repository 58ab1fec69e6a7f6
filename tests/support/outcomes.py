"""Outcomes for tests that play the worker through the protocol (``WorkerProtocol``)."""

from __future__ import annotations

from typing import Any

import orjson

from omniq.backend.postgres.protocol import Outcome, OutcomeKind
from omniq.models.task import Task

_NO_RESULT = object()


def outcome(task: Task, kind: OutcomeKind, result: Any = _NO_RESULT, **fields: Any) -> Outcome:
    """The outcome of ``task``'s current attempt; ``result`` is any JSON value (as a task returns)."""
    if result is not _NO_RESULT:
        fields["result"] = orjson.Fragment(orjson.dumps(result))
    return Outcome(task.id, task.attempts, kind, func=task.func, **fields)
