"""``omniq retry``, ``omniq cancel``, ``omniq abort`` and ``omniq cleanup``: the operator's
corrections."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from ..backend.postgres import PostgreSQLBackend
from ..backend.postgres.base import Progress
from ..models._common import utcnow
from ..models.task import Task
from . import output
from .common import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    add_command,
    add_json_option,
    days,
    either,
    open_backend,
    run,
)

RETRYABLE = ("failed", "cancelled", "expired")
CANCELLABLE = ("pending", "waiting")
PROGRESS_EVERY = 2.0  # seconds between progress lines of a long cleanup


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    retry = add_command(
        commands,
        "retry",
        run_retry,
        "send failed tasks back to the queue",
        "Give tasks a fresh start: pending now, retry count 0, old result removed.\n"
        "With IDS: those tasks, if failed, cancelled or expired. Without: every failed task\n"
        "of --queue and/or --func, or of all queues with --all.",
    )
    retry.add_argument("ids", metavar="IDS", nargs="*", help="task ids")
    retry.add_argument("--queue", help="only tasks of this queue")
    retry.add_argument("--func", help="only tasks of this function (import path)")
    retry.add_argument(
        "--all", action="store_true", help="every failed task (no IDS, --queue or --func needed)"
    )
    retry.set_defaults(parser=retry)

    cancel = add_command(
        commands,
        "cancel",
        run_cancel,
        "cancel tasks that have not started",
        "Cancel pending or waiting tasks (a 'cancelled' result is stored, and tasks that\n"
        "depend on them are cancelled too). Running and finished tasks are left alone.",
    )
    cancel.add_argument("ids", metavar="IDS", nargs="+", help="task ids")
    cancel.add_argument("--reason", default="cancelled by request", help="stored with the result")

    abort = add_command(
        commands,
        "abort",
        run_abort,
        "stop a running task (or cancel one that has not started)",
        "Ask the worker running the task to stop it, at once (NOTIFY): an async task is\n"
        "cancelled, a thread task sees omniq.current_task().should_abort(). It ends\n"
        "'cancelled', with an error naming who asked, and its dependents are cancelled.\n"
        "A pending or waiting task is cancelled right away. A finished task is left alone.",
    )
    abort.add_argument("id", metavar="ID", help="task id")
    abort.add_argument("--reason", help="why, stored with the result")
    abort.add_argument(
        "--by", help="who asks, stored with the result (default: USER@HOST (omniq abort))"
    )
    abort.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="wait this long for a running task to end (default: 10; 0: do not wait)",
    )

    cleanup = add_command(
        commands,
        "cleanup",
        run_cleanup,
        "delete expired tasks, results, schedules and old events",
        "Run the four cleanup operations (expired tasks, expired results, events older than\n"
        "--events-older-than, expired schedules) and, with --purge-finished-older-than, delete\n"
        "finished tasks too. Rows go in batches of 10,000, each its own short transaction.",
    )
    cleanup.add_argument(
        "--events-older-than",
        type=days,
        default=30.0,
        metavar="DAYS",
        help="event retention (default: 30)",
    )
    cleanup.add_argument(
        "--purge-finished-older-than",
        type=days,
        metavar="DAYS",
        help="also delete completed, failed, cancelled and expired tasks created this long ago",
    )
    add_json_option(cleanup)


def run_retry(args: argparse.Namespace) -> int:
    if not (args.ids or args.queue or args.func or args.all):
        args.parser.error("give task IDS, --queue, --func, or --all to retry every failed task")
    if args.ids and args.all:
        args.parser.error("--all retries every failed task: give it without IDS")

    async def main() -> tuple[int, dict[str, Task | None]]:
        async with open_backend(args) as backend:
            queue = backend.task_queue
            before = {i: await queue.get_task(i) for i in args.ids}
            n = await queue.retry_tasks(args.ids or None, queue_name=args.queue, func=args.func)
            return n, before

    retried, before = run(main)
    if not args.ids:
        where = "".join(
            f" {word} {value}"
            for word, value in (("in queue", args.queue), ("of", args.func))
            if value
        )
        print(f"retried {output.count(retried, 'failed task')}{where}")
        return 0
    return _report("retried", retried, before, RETRYABLE)


def run_cancel(args: argparse.Namespace) -> int:
    async def main() -> tuple[int, dict[str, Task | None]]:
        async with open_backend(args) as backend:
            queue = backend.task_queue
            before = {i: await queue.get_task(i) for i in args.ids}
            return await queue.cancel_tasks(args.ids, args.reason), before

    cancelled, before = run(main)
    return _report("cancelled", cancelled, before, CANCELLABLE)


def run_abort(args: argparse.Namespace) -> int:
    by = args.by or f"{_user()}@{socket.gethostname()} (omniq abort)"

    async def main() -> tuple[Task | None, bool, Task | None, float]:
        async with open_backend(args) as backend:
            queue = backend.task_queue
            before = await queue.get_task(args.id)
            t0 = time.monotonic()
            done = await queue.abort_task(args.id, args.reason, requested_by=by)
            if done and before is not None and before.status == "running" and args.wait > 0:
                await backend.result_storage.wait(args.id, args.wait)
            return before, done, await queue.get_task(args.id), time.monotonic() - t0

    before, done, after, took = run(main)
    if before is None or after is None:
        print(f"omniq: no task with id {args.id!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if not done:
        print(f"omniq: task {args.id} is {after.status}; nothing to abort", file=sys.stderr)
        return EXIT_ERROR
    if before.status != "running":
        print(f"cancelled task {args.id} (it was {before.status}; it never ran)")
    elif after.status == "running":
        waited = f"; not ended after {args.wait:g}s" if args.wait > 0 else ""
        print(
            f"abort requested for task {args.id} (running on worker {after.worker_id}){waited}:"
            " it ends cancelled once its worker stops it"
        )
    else:
        print(f"aborted task {args.id}: {after.status} after {took * 1000:.0f} ms")
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        return "unknown"


def _report(
    verb: str, changed: int, before: dict[str, Task | None], allowed: tuple[str, ...]
) -> int:
    """One summary line; a line on stderr for each id left alone; exit 3 if one was unknown."""
    print(f"{verb} {changed} of {output.count(len(before), 'task')}")
    code = 0
    for task_id, task in before.items():
        if task is None:
            print(f"omniq: no task with id {task_id!r}", file=sys.stderr)
            code = EXIT_NOT_FOUND
        elif task.status not in allowed:
            print(
                f"omniq: task {task_id} is {task.status}; only {either(allowed)} tasks can be {verb}",
                file=sys.stderr,
            )
            code = code or EXIT_ERROR
    if code == 0 and changed < len(before):
        left = output.count(len(before) - changed, "task")
        print(f"omniq: {left} did not match --queue/--func; left alone", file=sys.stderr)
        code = EXIT_ERROR
    return code


def run_cleanup(args: argparse.Namespace) -> int:
    async def main() -> list[tuple[str, str, int]]:
        async with open_backend(args) as backend:
            return [
                (key, label, await clean(reporter(label)))
                for key, label, clean in operations(backend, args)
            ]

    done = run(main)
    if args.json:
        output.print_json({key: n for key, _, n in done})
    else:
        print(
            output.table(
                ["CLEANUP", "DELETED"], [(label, f"{n:,}") for _, label, n in done], right=[1]
            )
        )
    return 0


Cleanup = Callable[[Progress], Awaitable[int]]


def operations(
    backend: PostgreSQLBackend, args: argparse.Namespace
) -> list[tuple[str, str, Cleanup]]:
    """The cleanups to run, each one of the backend's batched cleanup methods."""
    age = args.events_older_than
    cutoff = utcnow() - timedelta(days=age)
    ops: list[tuple[str, str, Cleanup]] = [
        ("expired_tasks", "expired tasks", backend.task_queue.cleanup_expired_tasks),
        ("expired_results", "expired results", backend.result_storage.cleanup_expired_results),
        (
            "old_events",
            f"events older than {age:g} days",
            lambda progress: backend.event_storage.cleanup_old_events(cutoff, progress),
        ),
        (
            "expired_schedules",
            "expired schedules",
            backend.schedule_storage.cleanup_expired_schedules,
        ),
    ]
    if args.purge_finished_older_than is not None:
        purge = args.purge_finished_older_than
        ops.append(
            (
                "finished_tasks",
                f"finished tasks older than {purge:g} days",
                lambda progress: backend.task_queue.purge_finished_tasks(
                    timedelta(days=purge), progress
                ),
            )
        )
    return ops


def reporter(label: str) -> Progress:
    """A progress callback printing a line on stderr at most every PROGRESS_EVERY seconds."""
    last = time.monotonic()

    def report(total: int) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_EVERY:
            print(f"omniq: {label}: {total:,} deleted so far...", file=sys.stderr, flush=True)
            last = time.monotonic()

    return report
