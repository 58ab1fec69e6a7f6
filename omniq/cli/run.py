"""``omniq worker``, ``omniq scheduler`` and ``omniq embedded``: the long-running commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading

from ..backend.postgres import PostgreSQLBackend
from .common import positive, whole_number
from .options import add_connection_options, config_from_args

log = logging.getLogger("omniq.worker")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    worker = commands.add_parser("worker", help="run tasks (and fire schedules) until stopped")
    add_connection_options(worker)
    worker.add_argument(
        "--queues", default="default", help="comma-separated, in priority order (default: default)"
    )
    worker.add_argument(
        "--concurrency", type=positive(int), default=10, help="tasks run at once (default: 10)"
    )
    worker.add_argument(
        "--prefetch",
        type=whole_number,
        help="tasks held beyond those running, for bigger dequeue batches (default: concurrency)",
    )
    worker.add_argument(
        "--burst", action="store_true", help="exit once no task is ready and none is running"
    )
    worker.add_argument(
        "--no-scheduler",
        dest="scheduler",
        action="store_false",
        help="do not fire schedules in this worker",
    )
    worker.add_argument("--worker-id", help="name of this worker (default: host-pid-random)")
    worker.add_argument(
        "--task-timeout",
        type=positive(float),
        help="default timeout in seconds for tasks without their own",
    )
    worker.add_argument(
        "--shutdown-grace",
        type=_not_negative,
        default=30.0,
        help="seconds running tasks get after SIGTERM/SIGINT (default: 30)",
    )
    worker.add_argument(
        "--heartbeat",
        type=positive(float),
        default=5.0,
        help="heartbeat interval in seconds while holding tasks (default: 5)",
    )
    worker.add_argument(
        "--worker-timeout",
        type=positive(float),
        default=30.0,
        help="a worker silent this long is presumed dead and its tasks rescued (default: 30)",
    )
    worker.add_argument(
        "-q",
        "--quiet",
        dest="log_level",
        action="store_const",
        const=logging.WARNING,
        default=logging.INFO,
        help="log only warnings",
    )
    worker.set_defaults(handler=run_worker)

    scheduler = commands.add_parser(
        "scheduler", help="fire due schedules until stopped (no tasks run)"
    )
    add_connection_options(scheduler)
    scheduler.set_defaults(handler=run_scheduler, log_level=logging.INFO)

    embedded = commands.add_parser("embedded", help="the embedded PostgreSQL of this directory")
    embedded.add_argument("action", choices=["start", "stop", "status"])
    embedded.set_defaults(handler=run_embedded)


def run_worker(args: argparse.Namespace) -> int:
    from ..worker import AsyncWorker

    sys.path.insert(0, os.getcwd())  # tasks of the project the worker is started in are importable
    backend = PostgreSQLBackend(
        config_from_args(args, max_connections=max(4, min(args.concurrency, 20)))
    )
    worker = AsyncWorker(
        backend,
        [q.strip() for q in args.queues.split(",") if q.strip()],
        args.concurrency,
        args.worker_id,
        prefetch=args.prefetch,
        default_timeout=args.task_timeout,
        heartbeat_interval=args.heartbeat,
        worker_timeout=args.worker_timeout,
        shutdown_grace=args.shutdown_grace,
        run_scheduler=args.scheduler,
    )

    async def main() -> None:
        try:
            await worker.run(burst=args.burst)
        finally:
            await _close(backend, bounded=worker._forced)

    asyncio.run(main())
    code = 130 if worker._forced else 0
    # Threads the interpreter would wait for at exit: a task function still running in a
    # pool thread (it cannot be interrupted), or threads a task started and left behind.
    left = [t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    if worker.threads_busy or left:
        named = ", ".join(sorted({t.name for t in left})) or "task threads"
        log.warning(
            "exiting without waiting for %d thread(s) still running task code: %s", len(left), named
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


async def _close(backend: PostgreSQLBackend, bounded: bool) -> None:
    """Close the backend; after a forced stop do not wait for a server that may be gone."""
    if not bounded:
        await backend.close()
        return
    try:
        await asyncio.wait_for(backend.close(), 2.0)
    except (Exception, asyncio.CancelledError):
        backend.terminate()


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds, 0 or more, got {text!r}")
    return value


def run_scheduler(args: argparse.Namespace) -> int:
    import signal

    from ..scheduler import AsyncScheduler

    backend = PostgreSQLBackend(config_from_args(args))

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        async with backend:
            logging.getLogger("omniq.scheduler").info(
                "scheduler started on schema %s", backend.config.schema
            )
            await AsyncScheduler(backend).run(stopping)

    asyncio.run(main())
    return 0


def run_embedded(args: argparse.Namespace) -> int:
    from ..embedded import EmbeddedPostgres, default_data_dir, ensure_running, stop_persistent

    if args.action == "start":
        print(ensure_running())
    elif args.action == "stop":
        print("stopped" if stop_persistent() else "not running")
    else:
        server = EmbeddedPostgres(default_data_dir())
        state = "running" if server.is_running() else "stopped"
        stale = server.stale_pid()
        if stale is not None:  # what is_running() just looked at: a pid file left by a crash
            state += f" (postmaster.pid names pid {stale}, which is not this cluster's server)"
        print(f"{state}: {default_data_dir()}")
    return 0
