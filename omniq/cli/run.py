"""``omniq worker``, ``omniq scheduler`` and ``omniq embedded``: the long-running commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from ..backend.postgres import PostgreSQLBackend
from .options import add_connection_options, config_from_args


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    worker = commands.add_parser("worker", help="run tasks (and fire schedules) until stopped")
    add_connection_options(worker)
    worker.add_argument(
        "--queues", default="default", help="comma-separated, in priority order (default: default)"
    )
    worker.add_argument(
        "--concurrency", type=int, default=10, help="tasks run at once (default: 10)"
    )
    worker.add_argument(
        "--prefetch",
        type=int,
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
        "--task-timeout", type=float, help="default timeout in seconds for tasks without their own"
    )
    worker.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="seconds running tasks get after SIGTERM/SIGINT (default: 30)",
    )
    worker.add_argument(
        "--heartbeat",
        type=float,
        default=5.0,
        help="heartbeat interval in seconds while holding tasks (default: 5)",
    )
    worker.add_argument(
        "--worker-timeout",
        type=float,
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
        async with backend:
            await worker.run(burst=args.burst)

    asyncio.run(main())
    if worker.threads_busy:  # a task function still runs in a thread; it cannot be interrupted
        sys.stdout.flush()  # (the interpreter would wait for that thread at exit)
        sys.stderr.flush()
        os._exit(130 if worker._forced else 0)
    return 130 if worker._forced else 0


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
        print(f"{'running' if server.is_running() else 'stopped'}: {default_data_dir()}")
    return 0
