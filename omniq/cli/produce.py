"""``omniq enqueue`` and ``omniq schedule add|show|pause|resume|remove``: putting work in."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from ..models._common import utcnow
from ..models.schedule import Schedule
from ..models.task import Task
from . import output
from .common import (
    CommandError,
    NotFound,
    add_command,
    add_json_option,
    cron,
    iso_time,
    json_object,
    json_value,
    open_backend,
    positive,
    run,
    seconds,
)

ARGS_HELP = (
    "positional arguments of the call; each is parsed as JSON when it is valid JSON "
    "(42, 1.5, true, null, '[1,2]', '{\"a\":1}', '\"text\"'), else kept as a string"
)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    enqueue = add_command(
        commands,
        "enqueue",
        run_enqueue,
        "queue one call of a function and print the task id",
        "Queue one call FUNC(*ARGS, **KWARGS) and print the new task's id.\n\n"
        "  omniq enqueue app.tasks.resize 42 '\"small\"' --kwargs '{\"quality\": 80}'\n"
        "  omniq enqueue app.tasks.report --queue reports --delay 10m",
    )
    add_call_arguments(enqueue)
    enqueue.add_argument("--priority", type=int, default=0, help="higher runs first (default: 0)")
    when = enqueue.add_mutually_exclusive_group()
    when.add_argument(
        "--delay",
        type=seconds,
        metavar="SECONDS",
        help="run no sooner than this from now (30, 10m, 2h)",
    )
    when.add_argument(
        "--at",
        type=iso_time,
        metavar="TIME",
        help="run no sooner than TIME (ISO 8601; naive is UTC)",
    )
    enqueue.add_argument(
        "--max-retries", type=int, default=3, help="retries after a failure (default: 3)"
    )
    enqueue.add_argument(
        "--timeout", type=positive(seconds), metavar="SECONDS", help="time limit of one run"
    )
    enqueue.add_argument("--id", help="task id (default: a new UUID); a duplicate id is refused")

    schedule = commands.add_parser(
        "schedule",
        help="add, show, pause, resume or remove a schedule",
        description="Schedules enqueue a task by cron expression, fixed interval or once at a time. "
        "A worker (or `omniq scheduler`) fires them. List them with `omniq schedules`.",
    )
    actions = schedule.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = add_command(
        actions,
        "add",
        run_schedule_add,
        "schedule a function by cron, interval or time; prints the schedule id",
        "Schedule FUNC(*ARGS, **KWARGS); prints the schedule id. Cron is evaluated in UTC.\n\n"
        "  omniq schedule add app.tasks.report --cron '0 6 * * 1-5' --id weekday-report\n"
        "  omniq schedule add app.tasks.ping --every 30s --max-runs 10",
    )
    add_call_arguments(add)
    trigger = add.add_mutually_exclusive_group(required=True)
    trigger.add_argument(
        "--cron", type=cron, metavar="EXPR", help="five-field cron expression (UTC)"
    )
    trigger.add_argument(
        "--every", type=positive(seconds), metavar="SECONDS", help="fixed interval (30, 15m, 1h)"
    )
    trigger.add_argument(
        "--at", type=iso_time, metavar="TIME", help="once, at TIME (ISO 8601; naive is UTC)"
    )
    add.add_argument("--max-runs", type=positive(int), metavar="N", help="complete after N runs")
    add.add_argument("--priority", type=int, default=0, help="priority of the tasks it enqueues")
    add.add_argument("--id", help="schedule id (default: a new UUID); an existing id is replaced")
    add_json_option(add)
    for name, handler, summary in (
        ("show", run_schedule_show, "show one schedule"),
        ("pause", run_schedule_pause, "pause a schedule (it keeps its place)"),
        (
            "resume",
            run_schedule_resume,
            "resume a paused schedule; a run missed meanwhile fires once",
        ),
        ("remove", run_schedule_remove, "delete a schedule (tasks it already enqueued stay)"),
    ):
        action = add_command(actions, name, handler, summary)
        action.add_argument("id", metavar="ID", help="schedule id")
        if name == "show":
            add_json_option(action)


def add_call_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("func", metavar="FUNC", help="import path: package.module.function")
    parser.add_argument("args", metavar="ARGS", nargs="*", type=json_value, help=ARGS_HELP)
    parser.add_argument(
        "--kwargs",
        type=json_object,
        default={},
        metavar="JSON",
        help="keyword arguments as a JSON object",
    )
    parser.add_argument("--queue", default="default", help="queue name (default: default)")


def run_enqueue(args: argparse.Namespace) -> int:
    run_at = args.at
    if args.delay is not None:
        run_at = utcnow() + timedelta(seconds=args.delay)
    extra = {"id": args.id} if args.id else {}
    task = Task(
        func=args.func,
        args=tuple(args.args),
        kwargs=args.kwargs,
        queue_name=args.queue,
        priority=args.priority,
        run_at=run_at,
        max_retries=args.max_retries,
        timeout=args.timeout,
        **extra,
    )

    async def main() -> None:
        async with open_backend(args, migrate="auto") as backend:  # first use installs
            await backend.task_queue.enqueue(task)

    run(main)
    print(task.id)
    return 0


def run_schedule_add(args: argparse.Namespace) -> int:
    extra = {"id": args.id} if args.id else {}
    schedule = Schedule(
        func=args.func,
        args=tuple(args.args),
        kwargs=args.kwargs,
        queue_name=args.queue,
        cron_expression=args.cron,
        interval_seconds=args.every,
        timestamp=args.at,
        max_runs=args.max_runs,
        priority=args.priority,
        **extra,
    )

    async def main() -> None:
        async with open_backend(args, migrate="auto") as backend:  # first use installs
            await backend.schedule_storage.save_schedule(schedule)

    run(main)
    if args.json:
        output.print_json(schedule)
    else:
        print(schedule.id)
        print(
            f"omniq: {trigger_text(schedule)}, next run {output.stamp(schedule.next_run)}",
            file=sys.stderr,
        )
    return 0


def trigger_text(schedule: Schedule) -> str:
    if schedule.cron_expression:
        return f"cron {schedule.cron_expression!r}"
    if schedule.interval_seconds:
        return f"every {output.span(schedule.interval_seconds)}"
    return f"once at {schedule.timestamp:%Y-%m-%d %H:%M:%S} UTC" if schedule.timestamp else "once"


def run_schedule_show(args: argparse.Namespace) -> int:
    async def main() -> Schedule | None:
        async with open_backend(args) as backend:
            return await backend.schedule_storage.get_schedule(args.id)

    s = run(main)
    if s is None:
        raise NotFound(f"no schedule with id {args.id!r}")
    if args.json:
        output.print_json(s)
        return 0
    runs = f"{s.run_count} of {s.max_runs}" if s.max_runs else str(s.run_count)
    print(f"schedule {s.id}")
    print(
        output.details(
            [
                ("status", s.status),
                ("call", f"{s.func}({output.call_text(s.args, s.kwargs)})"),
                ("queue", s.queue_name),
                ("trigger", trigger_text(s)),
                ("next run", output.stamp(s.next_run) if s.status == "active" else None),
                ("last run", output.stamp(s.last_run)),
                ("runs", runs),
                ("expires", output.stamp(s.expires_at)),
                ("created", output.stamp(s.created_at)),
                ("metadata", output.json_text(s.metadata) if s.metadata else None),
            ]
        )
    )
    return 0


def _change(args: argparse.Namespace, verb: str) -> int:
    async def main() -> tuple[bool, Schedule | None]:
        async with open_backend(args) as backend:
            storage = backend.schedule_storage
            if verb == "removed":
                return await storage.delete_schedule(args.id), None
            changed = await (
                storage.pause_schedule if verb == "paused" else storage.resume_schedule
            )(args.id)
            return changed, await storage.get_schedule(args.id)

    changed, schedule = run(main)
    if changed:
        when = (
            f", next run {output.stamp(schedule.next_run)}"
            if verb == "resumed" and schedule
            else ""
        )
        print(f"schedule {args.id} {verb}{when}")
        return 0
    if schedule is None:
        raise NotFound(f"no schedule with id {args.id!r}")
    raise CommandError(
        f"schedule {args.id} is {schedule.status}; only active or paused schedules can be "
        f"{verb} (delete it with `omniq schedule remove {args.id}`)"
    )


def run_schedule_pause(args: argparse.Namespace) -> int:
    return _change(args, "paused")


def run_schedule_resume(args: argparse.Namespace) -> int:
    return _change(args, "resumed")


def run_schedule_remove(args: argparse.Namespace) -> int:
    return _change(args, "removed")
