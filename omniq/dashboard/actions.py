"""What an operator can do from the dashboard: one registry entry per action.

An action names its target (a task, a schedule, later a queue), the states it applies to (the
buttons show only there, and the server checks again), and the backend call that does it. The
calls are the public API's (retry_tasks, cancel_tasks, pause_schedule ...), so the stored
functions decide, exactly as from Python, the CLI or psql.

Issue 13 adds two entries and nothing else: ``abort`` (target "task", states {"running"},
calling ``task_queue.abort_task``) and ``pause``/``resume`` with target "queue" (calling
``task_queue.pause_queue``/``resume_queue``; the overview already lists queues with a form slot).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..backend.postgres import PostgreSQLBackend

FINISHED = frozenset({"completed", "failed", "cancelled", "expired"})
BULK_LIMIT = 10_000  # tasks one bulk action on a filtered selection changes, at most
BULK_BATCH = 500

Run = Callable[[PostgreSQLBackend, Sequence[str]], Awaitable[int]]


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    target: str  # "task" or "schedule" (issue 13: "queue")
    states: frozenset[str]  # the states it applies to
    run: Run
    past: str  # "retried": for "3 tasks retried"
    confirm: str | None = None  # the question a browser asks first
    danger: bool = False

    def applies(self, state: str | None) -> bool:
        return state in self.states


async def _retry(backend: PostgreSQLBackend, ids: Sequence[str]) -> int:
    return await backend.task_queue.retry_tasks(list(ids))


async def _cancel(backend: PostgreSQLBackend, ids: Sequence[str]) -> int:
    return await backend.task_queue.cancel_tasks(list(ids), "cancelled from the dashboard")


async def _abort(backend: PostgreSQLBackend, ids: Sequence[str]) -> int:
    """Ask the workers running these tasks to stop them (they end cancelled)."""
    queue = backend.task_queue
    return sum(
        [
            await queue.abort_task(i, "aborted from the dashboard", requested_by="dashboard")
            for i in ids
        ]
    )


async def _delete(backend: PostgreSQLBackend, ids: Sequence[str]) -> int:
    """Delete finished tasks with their results (their events stay in the log)."""
    states = await backend.monitor.task_states(ids)
    deleted = 0
    for task_id, row in states.items():
        if row["status"] in FINISHED and await backend.task_queue.delete_task(task_id):
            await backend.result_storage.delete(task_id)
            deleted += 1
    return deleted


async def _pause_schedule(backend: PostgreSQLBackend, ids: Sequence[str]) -> int:
    return sum([await backend.schedule_storage.pause_schedule(i) for i in ids])


async def _resume_schedule(backend: PostgreSQLBackend, ids: Sequence[str]) -> int:
    return sum([await backend.schedule_storage.resume_schedule(i) for i in ids])


ACTIONS: dict[tuple[str, str], Action] = {
    (a.target, a.name): a
    for a in [
        Action("retry", "Retry", "task", frozenset({"failed", "cancelled", "expired"}), _retry,
               "retried"),
        Action("cancel", "Cancel", "task", frozenset({"pending", "waiting"}), _cancel,
               "cancelled", "Cancel? Tasks that depend on it are cancelled too.", danger=True),
        Action("abort", "Abort", "task", frozenset({"running"}), _abort, "aborted",
               "Abort? Its worker stops it now; it ends cancelled, and tasks that depend on "
               "it are cancelled too.", danger=True),
        Action("delete", "Delete", "task", FINISHED, _delete, "deleted",
               "Delete for good? Its result goes too; its events stay.", danger=True),
        Action("pause", "Pause", "schedule", frozenset({"active"}), _pause_schedule, "paused"),
        Action("resume", "Resume", "schedule", frozenset({"paused"}), _resume_schedule,
               "resumed"),
    ]
}  # fmt: skip


def for_target(target: str) -> list[Action]:
    return [a for (t, _n), a in ACTIONS.items() if t == target]
