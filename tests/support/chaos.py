"""The model-based concurrency run of issue 9: random interleavings against real processes,
checked by omniq_check_invariants() while work runs and at quiescence, and by a model of what
every committed task must have become.

    python -m tests.support.chaos --minutes 10 [--seed N]   (what scripts/chaos runs)
    tests/acceptance/test_model_based.py                     (about a minute, in the test run)

Actors, each with its own random generator seeded from the run's seed:

* producers enqueue graphs of 1-6 tasks (dependencies inside the graph and on earlier tasks,
  callbacks, delays, expiries, retries) in transactions of their own that commit or roll back,
  and fan-outs of 1-6 calls of one template through enqueue_calls (migration 0019's path);
* a manual worker dequeues through the API and finishes with success or failure, releases, or
  falls silent while holding tasks (so that they are rescued, and its late outcomes ignored);
* a canceller cancels random parents and children;
* an aborter aborts random recent tasks, running ones above all (issue 13): each abort that
  returned True must end its task cancelled, however the task's run ended;
* a killer SIGKILLs a random `omniq worker` process and starts another;
* a limiter pauses and resumes the queue and sets and clears its max_running and rate (issue
  13), then clears them all when the run stops producing, so that the queue drains;
* a schedule keeper adds interval schedules and pauses and resumes them, while several
  schedulers (`omniq scheduler` and the ones inside the workers) fire them;
* a checker runs omniq_check_invariants() every two seconds.

Then everything stops producing, the workers drain the queue, and the model is checked: every
committed task ended once and consistently (a completed task's dependencies all completed, a
task whose dependency did not complete was cancelled or expired, a task whose function always
fails never completed), no rolled-back task exists, and each schedule fired once per run.

The seed is printed first; replaying it replays every actor's choices (the operating system's
timing still differs, which is the point of running it again).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import Outcome, Registration, WorkerProtocol
from omniq.identifiers import quote_identifier
from omniq.models.config import PostgresConfig
from omniq.models.schedule import Schedule
from omniq.models.task import Task
from tests.support.outcomes import outcome
from tests.support.processes import OmniqProcess, Processes

QUEUE = "chaos"
FINAL = {"completed", "failed", "cancelled", "expired"}
WORKER_ARGS = ["--queues", QUEUE, "--concurrency", "4", "--heartbeat", "0.5",
               "--worker-timeout", "2", "--shutdown-grace", "1", "-q"]  # fmt: skip


@dataclass
class Counts:
    """What a run did, printed at its end."""

    tasks: int = 0  # committed enqueues
    rolled_back: int = 0
    graphs: int = 0
    fan_outs: int = 0  # of the graphs, those enqueued as calls of one template
    with_dependencies: int = 0
    cancels: int = 0
    aborts: int = 0  # abort_task calls that returned True
    manual_finishes: int = 0
    manual_deaths: int = 0
    kills: int = 0
    schedules: int = 0
    schedule_fires: int = 0
    invariant_checks: int = 0
    violations: list[str] = field(default_factory=list)
    final: Counter[str] = field(default_factory=Counter)

    def report(self, seed: int, seconds: float) -> str:
        finals = ", ".join(f"{k} {v}" for k, v in sorted(self.final.items()))
        return (
            f"chaos seed={seed}: {seconds:.0f} s, {self.tasks} tasks in {self.graphs} graphs "
            f"({self.fan_outs} fan-outs, {self.with_dependencies} with dependencies; "
            f"{self.rolled_back} rolled back), "
            f"{self.cancels} cancels, {self.aborts} aborts, {self.manual_finishes} manual outcomes, "
            f"{self.manual_deaths} manual-worker deaths, {self.kills} worker kills, "
            f"{self.schedules} schedules fired {self.schedule_fires} times, "
            f"{self.invariant_checks} invariant checks, {len(self.violations)} violations; "
            f"final states: {finals}"
        )


@dataclass
class Model:
    """What the driver knows it committed."""

    kinds: dict[str, str] = field(default_factory=dict)  # task id -> "ok" | "fail"
    dependencies: dict[str, list[str]] = field(default_factory=dict)
    rolled_back: set[str] = field(default_factory=set)
    aborted: set[str] = field(default_factory=set)  # abort_task returned True
    schedules: list[str] = field(default_factory=list)


class Chaos:
    def __init__(self, dsn: str, schema: str, seed: int, log_dir: Path, workers: int = 3) -> None:
        self.dsn = dsn
        self.schema = schema
        self.seed = seed
        self.log_dir = log_dir
        self.worker_count = workers
        self.counts = Counts()
        self.model = Model()
        self.stopping = asyncio.Event()
        self.workers: list[OmniqProcess] = []
        self.processes = Processes(dsn, schema, log_dir)
        self.backend: PostgreSQLBackend | None = None

    def rng(self, actor: str) -> random.Random:
        return random.Random(f"{self.seed}/{actor}")

    async def run(self, seconds: float, drain_timeout: float = 120.0) -> Counts:
        started = time.monotonic()
        self.backend = PostgreSQLBackend(
            PostgresConfig(dsn=self.dsn, schema=self.schema, max_connections=12)
        )
        await self.backend.connect()
        try:
            for _ in range(self.worker_count):
                self.workers.append(self.processes.start("worker", *WORKER_ARGS))
            self.processes.start("scheduler")  # and one inside each worker: several schedulers
            actors = [
                self.producer("producer-1"),
                self.producer("producer-2"),
                self.manual_worker(),
                self.canceller(),
                self.aborter(),
                self.killer(),
                self.limiter(),
                self.schedule_keeper(),
                self.checker(),
            ]
            running = [asyncio.create_task(a) for a in actors]
            await asyncio.sleep(seconds)
            self.stopping.set()
            await asyncio.gather(*running)
            await self.quiesce(drain_timeout)
            await self.check_invariants("at quiescence")
            await self.check_model()
        finally:
            self.processes.kill_all()
            await self.backend.close()
        for process in self.processes.started:  # SIGKILLed ones say nothing: the others nothing bad
            log = process.log_path.read_text(errors="replace")
            for sign in ("Traceback", "deadlock detected", "ERROR"):
                if sign in log:
                    self.counts.violations.append(f"{sign!r} in {process.log_path}")
        self.elapsed = time.monotonic() - started
        return self.counts

    # -- actors -------------------------------------------------------------------------------

    async def producer(self, name: str) -> None:
        rng = self.rng(name)
        assert self.backend is not None
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self.stopping.is_set():
                graph = self.graph(rng)
                commit = rng.random() < 0.85
                fan_out = rng.random() < 0.25
                try:
                    async with conn.transaction():
                        if fan_out:  # calls of one template: the typed arrays' path
                            template = dataclasses.replace(graph[0], dependencies=[], args=())
                            calls = [t.args for t in graph]
                            ids = await self.backend.task_queue.enqueue_calls(
                                template, calls, connection=conn
                            )
                            graph = [
                                dataclasses.replace(template, id=task_id, args=call)
                                for task_id, call in zip(ids, calls, strict=True)
                            ]
                        else:
                            await self.backend.task_queue.enqueue_many(graph, connection=conn)
                        if rng.random() < 0.3:  # the transaction stays open a while
                            await asyncio.sleep(rng.uniform(0, 0.3))
                        if not commit:
                            raise _Rollback
                except _Rollback:
                    pass
                except ValueError as exc:  # a dependency purged or cancelled meanwhile is fine
                    if "depends on unknown task" not in str(exc):
                        raise
                    continue
                self.counts.graphs += 1
                self.counts.fan_outs += fan_out
                for task in graph:
                    if commit:
                        self.model.kinds[task.id] = task.args[0]
                        self.model.dependencies[task.id] = list(task.dependencies)
                        self.counts.tasks += 1
                        self.counts.with_dependencies += bool(task.dependencies)
                    else:
                        self.model.rolled_back.add(task.id)
                        self.counts.rolled_back += 1
                await asyncio.sleep(rng.uniform(0, 0.15))
        finally:
            await conn.close()

    def graph(self, rng: random.Random) -> list[Task]:
        tasks: list[Task] = []
        known = list(self.model.kinds)
        for _ in range(rng.randint(1, 6)):
            dependencies = [t.id for t in tasks if rng.random() < 0.4]
            if known and rng.random() < 0.2:
                dependencies.append(rng.choice(known[-200:]))
            options: dict[str, Any] = {}
            if rng.random() < 0.15:
                options["run_at"] = datetime.now(UTC) + timedelta(seconds=rng.uniform(0, 2))
            if rng.random() < 0.1:
                options["expires_at"] = datetime.now(UTC) + timedelta(seconds=rng.uniform(0, 1.5))
            if rng.random() < 0.25:
                options["callbacks"] = {
                    rng.choice(
                        ["on_success", "on_failure", "on_complete"]
                    ): "tests.support.chaos_jobs.callback"
                }
            kind = "fail" if rng.random() < 0.2 else "ok"
            tasks.append(
                Task(
                    func="tests.support.chaos_jobs.work",
                    args=(kind, rng.choice([0, 0, 0, 0.05, 0.2])),
                    queue_name=QUEUE,
                    priority=rng.randint(0, 2),
                    max_retries=rng.randint(0, 2),
                    retry_delay=0.1,
                    dependencies=sorted(set(dependencies)),
                    **options,
                )
            )
        return tasks

    async def manual_worker(self) -> None:
        """Dequeues through the API, finishes, releases, or falls silent holding tasks."""
        rng = self.rng("manual")
        assert self.backend is not None
        queue, protocol = self.backend.task_queue, WorkerProtocol(self.backend)
        while not self.stopping.is_set():
            worker_id = f"manual-{uuid.uuid4().hex[:6]}"
            me = Registration(worker_id, "chaos", os.getpid(), [QUEUE], 4, timedelta(seconds=2))
            await protocol.heartbeat(me)
            for _ in range(rng.randint(5, 30)):
                if self.stopping.is_set():
                    break
                held = await queue.dequeue_many(QUEUE, rng.randint(1, 4), worker_id=worker_id)
                await asyncio.sleep(rng.uniform(0, 0.05))
                if held and rng.random() < 0.1:
                    await protocol.release([t.id for t in held], worker_id, "chaos release")
                    continue
                outcomes = [
                    self.outcome(t, t.args[0] == "fail" or rng.random() < 0.1) for t in held
                ]
                if outcomes:
                    await protocol.finish(outcomes, worker_id)
                    self.counts.manual_finishes += len(outcomes)
                await protocol.heartbeat(me)
                await asyncio.sleep(rng.uniform(0, 0.1))
            if rng.random() < 0.5:  # fall silent holding tasks: the others rescue them
                held = await queue.dequeue_many(QUEUE, 2, worker_id=worker_id)
                self.counts.manual_deaths += 1
                await asyncio.sleep(rng.uniform(0, 3))
                late = [self.outcome(t, t.args[0] == "fail") for t in held]
                if late:  # a zombie's late outcome: ignored when the task was taken back
                    await protocol.finish(late, worker_id)
            await protocol.worker_stopped(worker_id)

    @staticmethod
    def outcome(task: Task, failed: bool) -> Outcome:
        """What the manual worker reports, as a worker would: a failure carries its error."""
        if failed:
            return outcome(task, "failure", error="chaos", error_type="RuntimeError")
        return outcome(task, "success")

    async def canceller(self) -> None:
        rng = self.rng("canceller")
        assert self.backend is not None
        while not self.stopping.is_set():
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            known = list(self.model.kinds)
            if known:
                picked = rng.sample(known[-300:], k=min(len(known), rng.randint(1, 3)))
                self.counts.cancels += await self.backend.task_queue.cancel_tasks(picked, "chaos")

    async def aborter(self) -> None:
        rng = self.rng("aborter")
        assert self.backend is not None
        queue = self.backend.task_queue
        while not self.stopping.is_set():
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            running = await queue.list_tasks(QUEUE, "running", limit=20)
            known = [t.id for t in running] or list(self.model.kinds)[-50:]
            if known and rng.random() < 0.7:
                task_id = rng.choice(known)
                if await queue.abort_task(task_id, "chaos", requested_by="chaos"):
                    self.model.aborted.add(task_id)
                    self.counts.aborts += 1

    async def limiter(self) -> None:
        rng = self.rng("limiter")
        assert self.backend is not None
        queue = self.backend.task_queue
        while not self.stopping.is_set():
            await _sleep(self.stopping, rng.uniform(0.3, 1.5))
            action = rng.choice(["pause", "resume", "max_running", "rate", "clear"])
            if action == "pause":
                await queue.pause_queue(QUEUE)
            elif action == "resume":
                await queue.resume_queue(QUEUE)
            elif action == "max_running":
                await queue.set_queue_limits(QUEUE, max_running=rng.randint(1, 4))
            elif action == "rate":
                await queue.set_queue_limits(
                    QUEUE, max_running=rng.choice([None, 3]), rate=rng.uniform(5, 50)
                )
            else:
                await queue.set_queue_limits(QUEUE)
        await queue.resume_queue(QUEUE)
        await queue.set_queue_limits(QUEUE)

    async def killer(self) -> None:
        rng = self.rng("killer")
        while not self.stopping.is_set():
            await _sleep(self.stopping, rng.uniform(2, 6))
            if self.stopping.is_set():
                break
            victim = rng.choice(self.workers)
            victim.proc.kill()
            self.counts.kills += 1
            self.workers.remove(victim)
            self.workers.append(self.processes.start("worker", *WORKER_ARGS))

    async def schedule_keeper(self) -> None:
        rng = self.rng("schedules")
        assert self.backend is not None
        storage = self.backend.schedule_storage
        while not self.stopping.is_set():
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            if len(self.model.schedules) < 6 or rng.random() < 0.2:
                schedule = Schedule(
                    func="tests.support.chaos_jobs.work", args=("ok",), queue_name=QUEUE,
                    interval_seconds=rng.choice([0.3, 0.7, 1.5]), max_runs=rng.randint(2, 8),
                )  # fmt: skip
                await storage.save_schedule(schedule)
                self.model.schedules.append(schedule.id)
                self.counts.schedules += 1
            else:
                target = rng.choice(self.model.schedules)
                if rng.random() < 0.5:
                    await storage.pause_schedule(target)
                else:
                    await storage.resume_schedule(target)

    async def checker(self) -> None:
        while not self.stopping.is_set():
            await _sleep(self.stopping, 2.0)
            await self.check_invariants("while running")

    # -- checks -------------------------------------------------------------------------------

    async def check_invariants(self, when: str) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                f"SELECT * FROM {quote_identifier(self.schema)}.omniq_check_invariants()"  # noqa: S608
            )
        finally:
            await conn.close()
        self.counts.invariant_checks += 1
        for row in rows:
            self.counts.violations.append(f"{when}: {dict(row)}")

    async def quiesce(self, timeout: float) -> None:
        """Stop the schedules, keep workers alive, and wait until no task is unfinished."""
        assert self.backend is not None
        for schedule_id in self.model.schedules:
            await self.backend.schedule_storage.pause_schedule(schedule_id)
        for worker in list(self.workers):
            if not worker.alive():
                self.workers.remove(worker)
                self.workers.append(self.processes.start("worker", *WORKER_ARGS))
        deadline = time.monotonic() + timeout
        sql = (
            f"SELECT id, status FROM {quote_identifier(self.schema)}.tasks"  # noqa: S608
            " WHERE status IN ('pending', 'waiting', 'running') ORDER BY id LIMIT 20"
        )
        conn = await asyncpg.connect(self.dsn)
        try:
            while True:
                left = await conn.fetch(sql)
                if not left:
                    return
                if time.monotonic() > deadline:
                    self.counts.violations.append(
                        f"not quiescent after {timeout:g} s: {[tuple(r) for r in left]}"
                    )
                    return
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    async def check_model(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        s = quote_identifier(self.schema)
        try:
            rows = await conn.fetch(
                f"SELECT t.id, t.status, r.error_type FROM {s}.tasks AS t"  # noqa: S608
                f" LEFT JOIN {s}.results AS r ON r.task_id = t.id"
            )
            fired = await conn.fetch(
                f"SELECT s.id, s.run_count, (SELECT count(*) FROM {s}.tasks AS t"  # noqa: S608
                f" WHERE t.metadata ->> 'schedule_id' = s.id) AS tasks FROM {s}.schedules AS s"
            )
        finally:
            await conn.close()
        status = {r["id"]: r["status"] for r in rows}
        error_type = {r["id"]: r["error_type"] for r in rows}
        bad = self.counts.violations
        for task_id, kind in self.model.kinds.items():
            got = status.get(task_id)
            self.counts.final[got or "missing"] += 1
            if got not in FINAL:
                bad.append(f"task {task_id} committed, now {got}")
                continue
            deps = self.model.dependencies[task_id]
            if got == "completed" and any(status.get(d) != "completed" for d in deps):
                bad.append(
                    f"task {task_id} completed, dependencies {[status.get(d) for d in deps]}"
                )
            if any(status.get(d) in FINAL - {"completed"} for d in deps) and got not in (
                "cancelled",
                "expired",
            ):
                bad.append(f"task {task_id} is {got} though a dependency did not complete")
            if task_id in self.model.aborted and got != "cancelled":
                bad.append(f"task {task_id} was aborted (abort_task returned True), yet is {got}")
            if kind == "fail" and got == "completed":
                bad.append(f"task {task_id} always fails, yet completed")
            if got == "failed" and error_type.get(task_id) not in ("RuntimeError", "WorkerLost"):
                bad.append(f"task {task_id} failed with {error_type.get(task_id)}")
        for task_id in self.model.rolled_back:
            if task_id in status:
                bad.append(f"task {task_id} was rolled back, yet exists ({status[task_id]})")
        for row in fired:
            self.counts.schedule_fires += row["tasks"]
            if row["run_count"] != row["tasks"]:
                bad.append(
                    f"schedule {row['id']}: run_count {row['run_count']}, fired {row['tasks']}"
                )


class _Rollback(Exception):
    pass


async def _sleep(stopping: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        pass


async def run(dsn: str, seconds: float, seed: int, log_dir: Path) -> Counts:
    """One run on a fresh schema of ``dsn``, dropped afterwards."""
    schema = f"chaos_{uuid.uuid4().hex[:10]}"
    chaos = Chaos(dsn, schema, seed, log_dir)
    try:
        counts = await chaos.run(seconds)
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(schema)} CASCADE")
        finally:
            await conn.close()
    print(counts.report(seed, chaos.elapsed), flush=True)
    for violation in counts.violations[:50]:
        print("VIOLATION", violation, flush=True)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to run (default: 1)")
    parser.add_argument("--seed", type=int, help="replay a run (default: a random seed)")
    parser.add_argument("--dsn", help="a server to use (default: a throwaway embedded PostgreSQL)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    print(f"chaos seed={seed} (replay: scripts/chaos --seed {seed})", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="omniq-chaos-"))
    if args.dsn:
        counts = asyncio.run(run(args.dsn, args.minutes * 60, seed, log_dir))
    else:
        from omniq.embedded import EmbeddedPostgres

        with EmbeddedPostgres(durable=False) as server:
            counts = asyncio.run(run(server.dsn, args.minutes * 60, seed, log_dir))
    print(f"process logs: {log_dir}")
    return 1 if counts.violations else 0


if __name__ == "__main__":
    sys.exit(main())
