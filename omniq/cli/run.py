"""``omniq worker``, ``omniq scheduler`` and ``omniq embedded``: the long-running commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING

from ..backend.postgres import PostgreSQLBackend
from .common import CommandError, positive, whole_number
from .options import add_connection_options, config_from_args

if TYPE_CHECKING:
    from ..observability.metrics import WorkerMetrics

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
        help="tasks held beyond those running, for bigger dequeue batches (default: "
        "concurrency, up to 20 x concurrency while tasks finish faster than a dequeue)",
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
    observe = worker.add_argument_group("metrics and logs")
    observe.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (needs omniq[metrics])",
    )
    observe.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address of the metrics endpoint (default: 127.0.0.1; 0.0.0.0 for every interface)",
    )
    observe.add_argument(
        "--metrics-gauges",
        action="store_true",
        help="also the queue-wide gauges (depth, oldest ready age, workers alive): one query "
        "per scrape, so an idle worker sends statements when scraped",
    )
    observe.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per line, with task_id, func, queue and attempt (default: text)",
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
        metrics=_metrics(args),
    )

    async def main() -> None:
        if worker.metrics is not None:
            if args.metrics_gauges:
                monitor = backend.monitor
                worker.metrics.add_gauges(monitor.gauges, asyncio.get_running_loop())
            try:
                worker.metrics.serve(args.metrics_port, args.metrics_host)
            except OSError as exc:
                raise CommandError(
                    f"--metrics-port: cannot listen on {args.metrics_host}:{args.metrics_port} "
                    f"({exc.strerror or exc}); choose another port or --metrics-host"
                ) from None
            log.info("metrics on http://%s:%d/metrics", args.metrics_host, args.metrics_port)
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


def _metrics(args: argparse.Namespace) -> WorkerMetrics | None:
    """The worker's Prometheus metrics when --metrics-port asks for them."""
    if args.metrics_port is None:
        if args.metrics_gauges:
            raise CommandError("--metrics-gauges needs --metrics-port (where to serve them)")
        return None
    try:
        from ..observability.metrics import WorkerMetrics
    except ImportError as exc:
        raise CommandError(
            f"--metrics-port needs prometheus-client ({exc}): pip install 'omniq[metrics]'"
        ) from None
    return WorkerMetrics()


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port (1-65535), got {text!r}")
    return int(text)


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
