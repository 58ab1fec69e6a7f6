"""``omniq queue pause|resume|limit|list``: queue settings held in the database (issue 13)."""

from __future__ import annotations

import argparse

from ..models.unique import QueueSettings
from .common import add_command, add_json_option, open_backend, positive, run, whole_number
from .output import print_json, table


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    queue = commands.add_parser(
        "queue",
        help="pause, resume and limit queues",
        description="Queue settings, kept in the database and obeyed by every worker on every host.",
    )
    actions = queue.add_subparsers(dest="action", metavar="ACTION", required=True)
    pause = add_command(
        actions,
        "pause",
        run_pause,
        "pause a queue: tasks are accepted, none is started",
        "Pause a queue: it keeps accepting tasks, no worker on any host takes one, tasks\n"
        "already running finish. A queue never used before can be paused.",
    )
    pause.add_argument("name", metavar="NAME", help="queue name")
    resume = add_command(
        actions,
        "resume",
        run_resume,
        "resume a paused queue (its workers are woken at once)",
    )
    resume.add_argument("name", metavar="NAME", help="queue name")
    limit = add_command(
        actions,
        "limit",
        run_limit,
        "set a queue's concurrency and rate limits",
        "Set a queue's limits, enforced by the database across every worker:\n"
        "  --max-running N   at most N of its tasks run at once (1: one at a time, 0: paused)\n"
        "  --rate R          at most R of its tasks start per second\n"
        "  --burst B         ... with up to B at once (default: one second's worth)\n"
        "Each call sets all three: a limit left out is removed. `omniq queue limit NAME`\n"
        "alone removes every limit.",
    )
    limit.add_argument("name", metavar="NAME", help="queue name")
    limit.add_argument("--max-running", type=whole_number, metavar="N")
    limit.add_argument("--rate", type=positive(float), metavar="R", help="tasks per second")
    limit.add_argument("--burst", type=positive(int), metavar="B")
    listing = add_command(
        actions, "list", run_list, "list queues that were paused or limited, with their task counts"
    )
    add_json_option(listing)


def run_pause(args: argparse.Namespace) -> int:
    return _switch(args, pause=True)


def run_resume(args: argparse.Namespace) -> int:
    return _switch(args, pause=False)


def _switch(args: argparse.Namespace, pause: bool) -> int:
    async def main() -> bool:
        async with open_backend(args) as backend:
            q = backend.task_queue
            return await (q.pause_queue if pause else q.resume_queue)(args.name)

    changed = run(main)
    done = (
        ("paused" if changed else "was already paused")
        if pause
        else ("resumed" if changed else "was not paused")
    )
    print(f"queue {args.name!r} {done}")
    return 0


def run_limit(args: argparse.Namespace) -> int:
    async def main() -> QueueSettings:
        async with open_backend(args) as backend:
            return await backend.task_queue.set_queue_limits(
                args.name, max_running=args.max_running, rate=args.rate, burst=args.burst
            )

    settings = run(main)
    print(f"queue {args.name!r}: {limits_text(settings)}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    async def main() -> list[QueueSettings]:
        async with open_backend(args) as backend:
            return await backend.task_queue.queue_settings()

    queues = run(main)
    if args.json:
        print_json(queues)
        return 0
    if not queues:
        print("no queue is paused or limited")
        return 0
    rows = [
        (q.name, "paused" if q.paused else "active", limits_text(q, False), q.running, q.pending)
        for q in queues
    ]
    print(table(("QUEUE", "STATE", "LIMITS", "RUNNING", "PENDING"), rows, right=(3, 4)))
    return 0


def limits_text(q: QueueSettings, paused: bool = True) -> str:
    """``max_running 2, rate 5/s (burst 10)``, ``paused, ...`` (with ``paused``), or ``no limits``."""
    parts = ["paused"] if paused and q.paused else []
    if q.max_running is not None:
        parts.append(f"max_running {q.max_running}")
    if q.rate is not None:
        parts.append(f"rate {q.rate:g}/s (burst {q.burst})")
    return ", ".join(parts) or "no limits"
