"""``omniq demo``: a worker running real example tasks, with retries, a dependency chain,
callbacks and a schedule, on the embedded PostgreSQL unless a server is configured."""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid

from ..backend.postgres import PostgreSQLBackend
from ..models import Schedule, Task
from ..worker import AsyncWorker
from .options import add_connection_options, command_name, config_from_args

TEXT = "the quick brown fox jumps over the lazy dog and the dog sleeps"


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = commands.add_parser(
        "demo", help="enqueue example tasks and run a worker until they are done"
    )
    add_connection_options(demo)
    demo.set_defaults(handler=run_demo, log_level=logging.INFO, schema="omniq_demo")


def example_tasks(run: str) -> list[Task]:
    """A mixed batch: plain, CPU in threads, async I/O, retried, failing, chained, with callbacks."""
    fox = Task(
        func="omniq.examples.word_count",
        args=(TEXT,),
        callbacks={"on_success": "omniq.examples.notify"},
    )
    tasks = [
        fox,
        Task(func="omniq.examples.primes_below", args=(200_000,), priority=5),
        *[
            Task(func="omniq.examples.sha256", args=(f"block {i}",), kwargs={"rounds": 20_000})
            for i in range(4)
        ],
        *[
            Task(func="omniq.examples.fetch_later", args=(f"page-{i}",), kwargs={"seconds": 0.3})
            for i in range(6)
        ],
        Task(func="omniq.examples.flaky", args=(run,), max_retries=3, retry_delay=0.5),
    ]
    doomed = Task(
        func="omniq.examples.always_fails",
        args=("no such customer",),
        max_retries=1,
        retry_delay=0.2,
    )
    after_doomed = Task(
        func="omniq.examples.summarize", args=("never runs",), dependencies=[doomed.id]
    )
    first = Task(func="omniq.examples.fetch_later", args=("step 1",), kwargs={"seconds": 0.2})
    second = Task(
        func="omniq.examples.summarize",
        args=("step 2 after step 1",),
        dependencies=[first.id, fox.id],
    )
    return [*tasks, doomed, after_doomed, first, second]


def run_demo(args: argparse.Namespace) -> int:
    backend = PostgreSQLBackend(config_from_args(args))
    log = logging.getLogger("omniq.demo")

    async def main() -> None:
        async with backend:
            run = uuid.uuid4().hex[:8]
            tasks = example_tasks(run)
            await backend.task_queue.enqueue_many(tasks)
            schedule = Schedule(
                func="omniq.examples.tick", args=(f"demo {run}",), interval_seconds=1.0, max_runs=3
            )
            await backend.schedule_storage.save_schedule(schedule)
            log.info(
                "enqueued %d tasks and a schedule firing 3 times, 1 s apart (schema %s)",
                len(tasks),
                args.schema,
            )
            worker = AsyncWorker(backend, ["default"], concurrency=4)
            running = asyncio.create_task(worker.run())
            for task in tasks:
                await backend.result_storage.wait(task.id, timeout=60)
            while (await backend.schedule_storage.get_schedule(schedule.id)).status == "active":  # type: ignore[union-attr]
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.3)  # let the last scheduled run and callbacks finish
            while await backend.task_queue.get_queue_size("default"):
                await asyncio.sleep(0.2)
            worker.stop()
            stats = await running
            print()
            print(f"{'task':<38} {'func':<28} {'status':<9} result / error")
            for task in tasks:
                result = await backend.result_storage.get(task.id)
                shown = (
                    (result.result if result and result.status == "success" else result.error)
                    if result
                    else "-"
                )
                print(
                    f"{task.id:<38} {task.func.removeprefix('omniq.examples.'):<28} "
                    f"{result.status if result else '-':<9} {str(shown)[:60]}"
                )
            print(
                f"\n{stats.succeeded} succeeded, {stats.failed} failed, {stats.retried} retries. "
                f"Look around: {command_name()} status --schema {args.schema}; "
                f"{command_name()} tasks --schema {args.schema}"
            )

    asyncio.run(main())
    return 0
