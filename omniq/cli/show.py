"""``omniq tasks | task ID | results | events | schedules``: reading what is stored."""

from __future__ import annotations

import argparse
import textwrap
from enum import StrEnum
from typing import Any

from ..models.enums import EventType, ResultStatus, ScheduleStatus, ScheduleType, TaskStatus
from ..models.event import TaskEvent
from ..models.result import TaskResult
from ..models.schedule import Schedule
from ..models.task import Task
from . import output
from .common import (
    NotFound,
    add_command,
    add_json_option,
    add_page_options,
    add_time_range,
    one_of,
    open_backend,
    run,
)
from .produce import trigger_text

HISTORY_PAGE = 1000
SHOWN = 1000  # characters of a result, error or call shown by `omniq task` without --full
SHOWN_LINES = 60  # lines of a traceback shown without --full


def _choices(kind: type[StrEnum]) -> str:
    return ", ".join(kind)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tasks = add_command(commands, "tasks", run_tasks, "list tasks, newest first")
    tasks.add_argument(
        "--status", type=one_of(TaskStatus), help=f"comma-separated: {_choices(TaskStatus)}"
    )
    tasks.add_argument("--queue", help="only this queue")
    tasks.add_argument("--func", help="only this function (import path)")
    add_time_range(tasks, "created")
    add_page_options(tasks)
    add_json_option(tasks)

    task = add_command(
        commands, "task", run_task, "show one task with its result and event history"
    )
    task.add_argument("id", metavar="ID", help="task id")
    task.add_argument(
        "--full",
        action="store_true",
        help=f"show long values whole (default: cut at {SHOWN:,} characters, "
        f"tracebacks at their last {SHOWN_LINES} lines)",
    )
    add_json_option(task)

    results = add_command(commands, "results", run_results, "list task results, newest first")
    results.add_argument(
        "--status", type=one_of(ResultStatus), help=f"comma-separated: {_choices(ResultStatus)}"
    )
    results.add_argument("--worker", help="only results written by this worker id")
    add_time_range(results, "stored")
    add_page_options(results)
    add_json_option(results)

    events = add_command(commands, "events", run_events, "list task events, newest first")
    events.add_argument("--task", metavar="ID", help="only events of this task")
    events.add_argument(
        "--type", type=one_of(EventType), help=f"comma-separated: {_choices(EventType)}"
    )
    events.add_argument("--queue", help="only this queue")
    events.add_argument("--worker", help="only this worker id")
    add_time_range(events, "logged")
    add_page_options(events)
    add_json_option(events)

    schedules = add_command(
        commands, "schedules", run_schedules, "list schedules, soonest next run first"
    )
    schedules.add_argument(
        "--status", type=one_of(ScheduleStatus), help=f"comma-separated: {_choices(ScheduleStatus)}"
    )
    schedules.add_argument("--type", choices=list(ScheduleType), help="cron, interval or timestamp")
    schedules.add_argument("--queue", help="only this queue")
    schedules.add_argument("--func", help="only this function (import path)")
    add_page_options(schedules)
    add_json_option(schedules)


def _page(args: argparse.Namespace) -> dict[str, int]:
    return {"limit": args.limit, "offset": args.offset}


def _emit(
    args: argparse.Namespace,
    items: list[Any],
    noun: str,
    headers: list[str],
    rows: Any,
    right: Any = (),
) -> int:
    if args.json:
        output.print_json(items)
        return 0
    if not items:
        print(f"No {noun} match." if args.offset == 0 else f"No {noun} past offset {args.offset}.")
        return 0
    print(output.table(headers, rows, right))
    output.more_hint(len(items), args.limit, args.offset)
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    async def main() -> list[Task]:
        async with open_backend(args) as backend:
            return await backend.task_queue.list_tasks(
                queue_name=args.queue,
                status=args.status,
                func=args.func,
                created_after=args.since,
                created_before=args.until,
                **_page(args),
            )

    found = run(main)
    rows = [
        [
            t.id,
            t.status,
            t.queue_name,
            t.priority,
            t.func,
            f"{t.retry_count}/{t.max_retries}",
            output.ago(t.created_at),
            output.ago(t.run_at) if t.run_at and t.status == "pending" else None,
        ]
        for t in found
    ]
    headers = ["ID", "STATUS", "QUEUE", "PRI", "FUNC", "RETRIES", "CREATED", "RUN AT"]
    return _emit(args, found, "tasks", headers, rows, right=[3])


def run_results(args: argparse.Namespace) -> int:
    async def main() -> list[TaskResult]:
        async with open_backend(args) as backend:
            return await backend.result_storage.list_results(
                status=args.status,
                worker_id=args.worker,
                created_after=args.since,
                created_before=args.until,
                **_page(args),
            )

    found = run(main)
    rows = [
        [
            r.task_id,
            r.status,
            output.span(r.execution_time) if r.execution_time is not None else None,
            r.worker_id,
            output.ago(r.completed_at or r.created_at),
            _outcome(r),
        ]
        for r in found
    ]
    headers = ["TASK ID", "STATUS", "TOOK", "WORKER", "FINISHED", "RESULT OR ERROR"]
    return _emit(args, found, "results", headers, rows)


def _outcome(r: TaskResult) -> str:
    if r.error or r.error_type:
        return f"{r.error_type or 'Error'}: {r.error or ''}".strip()
    return output.json_text(r.result)


def run_events(args: argparse.Namespace) -> int:
    async def main() -> list[TaskEvent]:
        async with open_backend(args) as backend:
            return await backend.event_storage.get_events(
                task_id=args.task,
                event_type=args.type,
                queue_name=args.queue,
                worker_id=args.worker,
                after=args.since,
                before=args.until,
                **_page(args),
            )

    found = run(main)
    rows = [
        [
            f"{e.timestamp:%Y-%m-%d %H:%M:%S}",
            e.event_type,
            e.task_id,
            e.queue_name,
            e.worker_id,
            _event_text(e),
        ]
        for e in found
    ]
    headers = ["TIME (UTC)", "EVENT", "TASK ID", "QUEUE", "WORKER", "DETAILS"]
    return _emit(args, found, "events", headers, rows)


def _event_text(e: TaskEvent) -> str:
    parts = [e.message or ""]
    if e.error_type or e.error_message:
        parts.append(f"{e.error_type or 'Error'}: {e.error_message or ''}")
    if e.execution_time is not None:
        parts.append(f"took {output.span(e.execution_time)}")
    return "; ".join(p for p in parts if p)


def run_schedules(args: argparse.Namespace) -> int:
    async def main() -> list[Schedule]:
        async with open_backend(args) as backend:
            return await backend.schedule_storage.list_schedules(
                status=args.status,
                schedule_type=args.type,
                queue_name=args.queue,
                func=args.func,
                **_page(args),
            )

    found = run(main)
    rows = [
        [
            s.id,
            s.status,
            trigger_text(s),
            s.func,
            s.queue_name,
            f"{s.run_count}/{s.max_runs}" if s.max_runs else s.run_count,
            output.ago(s.next_run) if s.status == "active" else None,
            output.ago(s.last_run),
        ]
        for s in found
    ]
    headers = ["ID", "STATUS", "WHEN", "FUNC", "QUEUE", "RUNS", "NEXT RUN", "LAST RUN"]
    return _emit(args, found, "schedules", headers, rows, right=[5])


# -- omniq task ID -------------------------------------------------------------------------


def run_task(args: argparse.Namespace) -> int:
    async def main() -> tuple[Task | None, TaskResult | None, list[TaskEvent]]:
        async with open_backend(args) as backend:
            task = await backend.task_queue.get_task(args.id)
            result = await backend.result_storage.get(args.id)
            events: list[TaskEvent] = []
            while True:  # the whole history, however long
                page = await backend.event_storage.get_events(
                    task_id=args.id, limit=HISTORY_PAGE, offset=len(events)
                )
                events += page
                if len(page) < HISTORY_PAGE:
                    break
            return task, result, events[::-1]

    task, result, events = run(main)
    if task is None and result is None and not events:
        raise NotFound(f"no task with id {args.id!r}")
    if args.json:
        output.print_json({"task": task, "result": result, "events": events})
        return 0
    limit = None if args.full else SHOWN
    print(_task_block(task, args.id, limit))
    if result is not None:
        print()
        print(_result_block(result, limit))
    print()
    print("events (oldest first)")
    rows = [
        [f"{e.timestamp:%Y-%m-%d %H:%M:%S.%f}"[:-3], e.event_type, e.worker_id, _event_text(e)]
        for e in events
    ]
    headers = ["TIME (UTC)", "EVENT", "WORKER", "DETAILS"]
    print(textwrap.indent(output.table(headers, rows), "  ") if rows else "  none")
    return 0


def _task_block(t: Task | None, task_id: str, limit: int | None) -> str:
    if t is None:
        return f"task {task_id}: no longer stored (purged); its result and events remain"
    tries = f"{t.retry_count} of {t.max_retries} retries used, delay {output.span(t.retry_delay)}"
    data = {k: v for k, v in t.task_data.items()}
    return f"task {t.id}\n" + output.details(
        [
            ("status", t.status),
            ("call", output.clip(f"{t.func}({output.call_text(t.args, t.kwargs)})", limit)),
            ("queue", f"{t.queue_name}, priority {t.priority}"),
            ("created", output.stamp(t.created_at)),
            ("run at", output.stamp(t.run_at)),
            ("started", output.stamp(t.started_at)),
            ("finished", output.stamp(t.finished_at)),
            ("worker", t.worker_id),
            ("attempts", f"{t.attempts}; {tries}"),
            ("timeout", output.span(t.timeout) if t.timeout else None),
            ("expires", output.stamp(t.expires_at)),
            ("depends on", ", ".join(t.dependencies)),
            ("callbacks", ", ".join(f"{k}={v}" for k, v in t.callbacks.items())),
            ("metadata", output.clip(output.json_text(t.metadata), limit) if t.metadata else None),
            ("task data", output.clip(output.json_text(data), limit) if data else None),
        ]
    )


def _result_block(r: TaskResult, limit: int | None) -> str:
    took = f" in {output.span(r.execution_time)}" if r.execution_time is not None else ""
    lines = [f"result {r.status}{took}"]
    pairs = [
        (
            "value",
            output.clip(output.json_text(r.result), limit) if r.status == "success" else None,
        ),
        (
            "error",
            output.clip(f"{r.error_type or 'Error'}: {r.error or ''}", limit)
            if r.error or r.error_type
            else None,
        ),
        ("worker", r.worker_id),
        ("completed", output.stamp(r.completed_at)),
        ("expires", output.stamp(r.expires_at)),
    ]
    lines.append(output.details(pairs))
    if r.traceback:
        trace = r.traceback.rstrip().splitlines()
        if limit is not None and len(trace) > SHOWN_LINES:
            lines.append(
                f"  traceback (its last {SHOWN_LINES} of {len(trace)} lines; --full shows all)"
            )
            trace = trace[-SHOWN_LINES:]
        else:
            lines.append("  traceback")
        lines += ["    " + output.clip(line, limit) for line in trace]
    return "\n".join(lines)
