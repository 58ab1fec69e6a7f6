"""``omniq status``: queues, workers and schedules at a glance; ``--watch`` keeps it fresh."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import timedelta
from typing import Any

from ..backend.postgres import PostgreSQLBackend
from ..backend.postgres.connection import target
from ..errors import is_transient
from ..models._common import utcnow
from ..models.config import redact_dsn
from ..models.unique import QueueSettings
from . import output
from .common import add_command, add_json_option, open_backend, positive, run, seconds
from .queues import limits_text

LIMITS = ("max_running", "rate", "burst")

HOME, CLEAR_SCREEN, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[2J", "\x1b[K", "\x1b[J"


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(
        commands,
        "status",
        run_status,
        "queues, workers and schedules at a glance",
        "Per queue: tasks ready to run, scheduled for later, waiting on dependencies, running,\n"
        "failed (kept for `omniq retry`), done and failed recently, and the age of the oldest\n"
        "ready task. Then the registered workers and the schedules.",
    )
    add_json_option(parser)
    parser.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=positive(seconds),
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C; with --json, one line per refresh",
    )
    parser.add_argument(
        "--recent",
        type=positive(seconds),
        default=3600.0,
        metavar="SECONDS",
        help="window of the done/failed-recently counts (default: 1h)",
    )


def run_status(args: argparse.Namespace) -> int:
    async def main() -> None:
        async with open_backend(args) as backend:
            if args.watch is None:
                snap = await snapshot(backend, args.recent)
                if args.json:
                    output.print_json(snap)
                else:
                    print(render(snap))
                return
            await watch(backend, args)

    try:
        run(main)
    except KeyboardInterrupt:
        if args.watch is None:
            raise
        if not args.json:
            print()
    return 0


async def watch(backend: PostgreSQLBackend, args: argparse.Namespace) -> None:
    every = f"every {output.span(args.watch)}, Ctrl-C to stop"
    if not args.json:
        sys.stdout.write(CLEAR_SCREEN)
    while True:
        try:
            snap = await snapshot(backend, args.recent)
        except Exception as exc:  # keep watching through restarts and failovers
            if not is_transient(exc):
                raise
            snap = None
            problem = f"omniq: {exc} (retrying {every})"
        if args.json:
            if snap is not None:
                output.print_json(snap, compact=True)
            else:
                print(problem, file=sys.stderr, flush=True)
        else:
            text = render(snap) + f"\n\n(refreshing {every})" if snap else problem
            lines = text.split("\n")
            sys.stdout.write(
                HOME + "".join(line + CLEAR_LINE + "\n" for line in lines) + CLEAR_BELOW
            )
            sys.stdout.flush()
        await asyncio.sleep(args.watch)


async def snapshot(backend: PostgreSQLBackend, recent: float) -> dict[str, Any]:
    """Everything status shows, as plain data (this is also the --json document)."""
    now = utcnow()
    monitor = backend.monitor
    overview = await monitor.queue_counts()
    outcomes = await monitor.recent_outcomes(now - timedelta(seconds=recent))
    schedules = await monitor.schedule_counts()
    workers = await monitor.workers()
    upcoming = await backend.schedule_storage.list_schedules(status="active", limit=1)
    queues = []
    for row in overview:
        done = outcomes.pop(row["queue_name"], None)
        queues.append(_queue(row, done))
    queues += [_queue({"queue_name": name}, done) for name, done in outcomes.items() if name]
    settings = {q.name: q for q in await backend.task_queue.queue_settings()}
    named = {q["queue"] for q in queues}
    queues += [_queue({"queue_name": name}, None) for name in settings if name not in named]
    for q in queues:  # paused and limited queues (omniq queue ...), shown even when empty
        held = settings.get(q["queue"])
        q["paused"] = bool(held and held.paused)
        q.update({k: getattr(held, k, None) for k in ("max_running", "rate", "burst")})
    queues.sort(key=lambda q: q["queue"])
    if upcoming:
        s = upcoming[0]
        schedules["next"] = {
            "id": s.id,
            "func": s.func,
            "queue": s.queue_name,
            "next_run": s.next_run,
        }
    else:
        schedules["next"] = None
    return {
        "server": _where(backend),
        "schema": backend.config.schema,
        "at": now,
        "recent_seconds": recent,
        "queues": queues,
        "workers": [_worker(w) for w in workers],
        "schedules": schedules,
    }


def _queue(row: dict[str, Any], done: Any) -> dict[str, Any]:
    age = row.get("oldest_ready_age")
    return {
        "queue": row["queue_name"],
        "ready": row.get("ready", 0),
        "scheduled_later": row.get("scheduled_later", 0),
        "waiting": row.get("waiting", 0),
        "running": row.get("running", 0),
        "failed": row.get("failed", 0),
        "completed": row.get("completed", 0),
        "cancelled_or_expired": row.get("cancelled_or_expired", 0),
        "completed_recently": done["completed"] if done else 0,
        "failed_recently": done["failed"] if done else 0,
        "oldest_ready_seconds": round(age.total_seconds(), 3) if age is not None else None,
    }


def _worker(row: dict[str, Any]) -> dict[str, Any]:
    """A worker holding tasks is "silent" once quiet for longer than the ``stale_after`` it
    registered: any other worker rescues its tasks from then on."""
    held = row["held"]
    state = "idle" if not held else ("silent" if row["stale"] else "busy")
    return {
        "id": row["id"],
        "hostname": row.get("hostname"),
        "pid": row.get("pid"),
        "version": row.get("version"),  # None: an earlier release's worker does not say
        "queues": list(row.get("queues") or []),
        "concurrency": row.get("concurrency"),
        "held": held,
        "stuck_threads": row.get("stuck_threads") or 0,  # threads running given-up tasks
        "state": state,
        "started_at": row.get("started_at"),
        "last_heartbeat": row["last_heartbeat"],
        "stale_after_seconds": row["stale_after"].total_seconds(),
    }


def _where(backend: PostgreSQLBackend) -> str:
    dsn = backend.config.dsn
    if dsn and dsn.rstrip("/") not in ("postgresql:", "postgres:"):
        return redact_dsn(dsn)
    if dsn:  # "postgresql://": the libpq PG* variables say where
        env = os.environ
        where = f"{env.get('PGHOST') or 'localhost'}:{env.get('PGPORT') or 5432}"
        return f"{where}/{env.get('PGDATABASE') or env.get('PGUSER') or '?'} (from PG* variables)"
    return target(backend.config)


def window(recent: float) -> str:
    s = int(recent)
    if s % 3600 == 0:
        return f"{s // 3600}h"
    return f"{s // 60}m" if s % 60 == 0 else f"{s}s"


def render(snap: dict[str, Any]) -> str:
    """The table form: one block each for queues, workers and schedules."""
    now = snap["at"]
    recent = window(snap["recent_seconds"])
    parts = [f"OmniQ at {snap['server']}, schema {snap['schema']}, {now:%Y-%m-%d %H:%M:%S} UTC"]
    queues = snap["queues"]
    if queues:
        headers = ["QUEUE", "READY", "LATER", "WAITING", "RUNNING", "FAILED"]
        headers += [f"DONE {recent}", f"FAILED {recent}", "OLDEST READY"]
        rows = [
            [q["queue"] + (" (paused)" if q["paused"] else "")]
            + [q["ready"], q["scheduled_later"], q["waiting"], q["running"], q["failed"]]
            + [
                q["completed_recently"],
                q["failed_recently"],
                output.span(q["oldest_ready_seconds"]),
            ]
            for q in queues
        ]
        parts.append(output.table(headers, rows, right=range(1, 9)))
        limited = [
            f"{q['queue']}: {limits_text(QueueSettings(q['queue'], **{k: q[k] for k in LIMITS}), False)}"
            for q in queues
            if any(q[k] is not None for k in LIMITS)
        ]
        if limited:
            parts.append("Limits: " + "; ".join(limited))
    else:
        parts.append(
            "No tasks yet. Queue one with: omniq enqueue package.module.function [ARGS...]"
        )
    workers = snap["workers"]
    if workers:
        rows = [
            [
                w["id"],
                w["hostname"],
                w["pid"],
                w["version"] or "unknown",
                ",".join(w["queues"]),
                w["held"],
                w["concurrency"],
                w["state"],
                output.ago(w["last_heartbeat"], now),
                output.ago(w["started_at"], now),
            ]
            for w in workers
        ]
        headers = ["WORKER", "HOST", "PID", "VERSION", "QUEUES", "HELD", "CONCURRENCY", "STATE"]
        headers += ["LAST HEARTBEAT", "STARTED"]
        right = [2, 5, 6]
        if any(w["stuck_threads"] for w in workers):  # only then: it is rare, and explained
            headers.insert(7, "STUCK")
            right.append(7)
            for w, row in zip(workers, rows, strict=True):
                row.insert(7, w["stuck_threads"])
        parts.append(output.table(headers, rows, right=right))
        stuck = [w for w in workers if w["stuck_threads"]]
        if stuck:
            parts[-1] += (
                "\nSTUCK: threads still running task functions that timed out (Python cannot "
                "interrupt a thread); each keeps a slot of its worker until the function returns."
            )
    else:
        ready = sum(q["ready"] for q in queues)
        hint = f"; {output.count(ready, 'task')} ready to run" if ready else ""
        parts.append(
            f"No workers running{hint}. Start one with: omniq worker --queues NAME[,NAME...]"
        )
    parts.append(_schedules_line(snap["schedules"], now))
    return "\n\n".join(parts)


def _schedules_line(s: dict[str, Any], now: Any) -> str:
    if not (s["active"] or s["paused"]):
        return "No active schedules."
    line = f"Schedules: {s['active']} active, {s['paused']} paused, {s['due']} due now"
    nxt = s.get("next")
    if nxt:
        when = output.ago(nxt["next_run"], now)
        line += f"\nNext: {nxt['id']} ({nxt['func']} on {nxt['queue']}) {when}"
        line += f", at {nxt['next_run']:%Y-%m-%d %H:%M:%S} UTC"
    return line
