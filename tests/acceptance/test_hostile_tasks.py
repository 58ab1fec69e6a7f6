"""The worker survives whatever a task does (issue 10): real worker processes meet tasks that
block the event loop, call ``sys.exit``, raise ``KeyboardInterrupt`` or a ``BaseException``,
break their own exception's ``__str__``, hang in a thread past their timeout, kill the process
with ``os._exit``, return huge or non-JSON values.

Every task must end in exactly one final state with its error recorded, the worker must keep
running, and no task may run twice at the same time: tasks record their run windows
(``tests.support.jobs.window``) and the test checks that the windows of one task never overlap.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from omniq import Task
from tests.support.jobs import read_trace, read_windows
from tests.support.processes import REPO, child_env, wait_until

pytestmark = pytest.mark.timeout(120)

FAST_LIVENESS = ("--heartbeat", "0.5", "--worker-timeout", "2")
FINAL = ("completed", "failed", "cancelled", "expired")
FINAL_EVENTS = ("completed", "failed", "cancelled", "expired")


async def all_final(db: Any, tasks: list[Task]) -> bool:
    rows = await db.rows("tasks", "id = ANY($1::text[])", [t.id for t in tasks])
    return len(rows) == len(tasks) and all(r["status"] in FINAL for r in rows)


async def wait_final(db: Any, tasks: list[Task], timeout: float, process: Any) -> None:
    await wait_until(lambda: all_final(db, tasks), timeout, "every task to end", process, 0.1)


def assert_no_overlap(
    path: str, crashes: dict[int, float] | None = None
) -> dict[str, list[tuple[float, float | None, int]]]:
    """No two runs of one task were under way at the same time. A run with no end was cut
    short by its process's death: ``crashes`` maps such a pid to the moment it died."""
    runs = read_windows(path)
    for key, windows in runs.items():
        ordered = sorted(windows)
        for (start, end, pid), (later, _, other) in zip(ordered, ordered[1:], strict=False):
            if end is None:
                end = (crashes or {}).get(pid)
            assert end is not None and end <= later, (
                f"{key}: a run in pid {other} started at {later:.3f} while the run in pid "
                f"{pid} (from {start:.3f}) was still going (ended {end})"
            )
    return runs


async def worker_row(db: Any, worker_id: str) -> dict | None:
    rows = await db.rows("omniq_workers", "id = $1", worker_id)
    return rows[0] if rows else None


async def final_events(db: Any, task_id: str) -> list[str]:
    return [e for e in await db.events(task_id) if e in FINAL_EVENTS]


# -- issue 10, defect 1: a sync timeout counts from the moment the function starts -----------


async def test_sync_timeouts_count_from_the_start_and_stuck_threads_show(
    backend, db, omniq, tmp_path
) -> None:
    """One thread, no prefetch: a sync task times out, but its thread runs on for 6 s. The
    quick tasks behind it wait for the thread instead of timing out in the pool's queue, and
    the stuck thread shows in the log, in omniq_workers and in `omniq status`."""
    path = str(tmp_path / "trace")
    slow = Task(
        func="tests.support.jobs.thread_sleep_once",
        args=(path, 6),
        timeout=1,
        max_retries=1,
        retry_delay=0.1,
    )
    quick = [
        Task(func="tests.support.jobs.windowed", args=(path, f"quick{i}"), timeout=3, max_retries=0)
        for i in range(3)
    ]
    worker = await omniq.worker("--concurrency", "1", "--prefetch", "0")
    await backend.task_queue.enqueue(slow)
    await wait_until(lambda: read_trace(path), 10, "the slow task to start", worker)
    await backend.task_queue.enqueue_many(quick)

    async def watch_status() -> tuple[dict, str] | None:
        """While the thread is stuck: what omniq_workers and `omniq status` say."""
        workers = backend.monitor.workers  # the pool: db.conn is busy meanwhile
        while not any(r.get("stuck_threads") == 1 for r in await workers()):
            await asyncio.sleep(0.1)
        where = ("--dsn", omniq.dsn, "--schema", omniq.schema)
        shown = [
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "omniq", "status", *extra, *where],
                capture_output=True,
                text=True,
                cwd=REPO,
                env=child_env(),
                timeout=60,
            )  # fmt: skip
            for extra in (["--json"], [])
        ]
        assert all(p.returncode == 0 for p in shown), [p.stderr for p in shown]
        return json.loads(shown[0].stdout)["workers"][0], shown[1].stdout

    watching = asyncio.ensure_future(watch_status())
    try:
        await wait_final(db, [slow, *quick], 40, worker)
        for task in quick:
            result = await db.row("results", task.id)
            assert result["status"] == "success", result  # ran, not timed out in a queue
            assert result["execution_time"] < 3
        shown, table = await asyncio.wait_for(watching, 30)
    finally:
        watching.cancel()
    assert shown["stuck_threads"] == 1, shown
    assert "STUCK" in table and "cannot interrupt a thread" in table, table
    row = await db.row("tasks", slow.id)
    assert row["status"] == "completed" and row["attempts"] == 2  # timed out once, then quick
    events = await db.rows("events", "task_id = $1 AND event_type = 'retry'", slow.id)
    assert [e["error_type"] for e in events] == ["TimeoutError"]
    assert "exceeded its timeout of 1s" in events[0]["error_message"]
    log = worker.output()
    assert "was given up but its function still runs in its thread" in log
    assert "all 1 threads are stuck" in log
    assert "returned after" in log  # the thread came back, and said so
    assert worker.alive()
    worker.send(signal.SIGTERM)
    assert await worker.exited(10) == 0, worker.output()


# -- issue 10, defect 2: a blocking async task runs once; the stall is named ---------------


async def test_blocking_async_task_runs_once_and_the_stall_is_logged(
    backend, db, omniq, tmp_path
) -> None:
    path = str(tmp_path / "windows")
    task = Task(func="tests.support.jobs.async_block", args=(5, path, "blocker"), max_retries=3)
    first = await omniq.worker(*FAST_LIVENESS, "--worker-id", "blocked")
    await backend.task_queue.enqueue(task)
    await wait_until(lambda: read_windows(path), 10, "the task to start", first)
    other = await omniq.worker(*FAST_LIVENESS, "--worker-id", "other")  # would rescue it

    await wait_final(db, [task], 30, first)
    runs = assert_no_overlap(path)
    assert len(runs["blocker"]) == 1, runs  # not rescued while its worker lived
    row = await db.row("tasks", task.id)
    assert row["status"] == "completed" and row["attempts"] == 1 and row["retry_count"] == 0
    assert "rescued" not in await db.events(task.id)
    log = first.output()
    assert "event loop blocked for" in log, log
    assert f"task {task.id} (tests.support.jobs.async_block)" in log
    assert "jobs.py:" in log and "in async_block" in log  # the line it is stuck at
    await first.logged("event loop free again after", 10)
    assert first.alive() and other.alive()


async def test_second_signal_ends_a_worker_whose_loop_a_task_blocks(
    backend, db, omniq, tmp_path
) -> None:
    """Signal handlers that run on the event loop wait for it: a task blocking the loop for a
    minute kept the worker deaf to SIGTERM. Now a second signal ends it within seconds, and
    the task goes back to pending through the rescue, as after a crash."""
    path = str(tmp_path / "windows")
    task = Task(func="tests.support.jobs.async_block", args=(60, path, "deaf"), max_retries=3)
    worker = await omniq.worker(*FAST_LIVENESS)
    await backend.task_queue.enqueue(task)
    await wait_until(lambda: read_windows(path), 10, "the task to start", worker)
    worker.send(signal.SIGTERM)
    await asyncio.sleep(0.5)
    worker.send(signal.SIGTERM)
    started = time.monotonic()
    assert await worker.exited(20) == 130, worker.output()
    took = time.monotonic() - started
    print(f"\nsecond signal with the loop blocked: exited after {took:.1f}s")
    assert "did not stop within 5s of the second signal" in worker.output()
    assert (
        f"task {task.id} (tests.support.jobs.async_block)" in worker.output()
    )  # what held the loop
    rescuer = await omniq.worker(*FAST_LIVENESS)

    async def rescued() -> bool:
        return "rescued" in await db.events(task.id)

    await wait_until(rescued, 20, "the rescue of the task", rescuer)


# -- issue 10, defect 3: sys.exit and KeyboardInterrupt fail the task, not the worker --------


async def test_sys_exit_and_keyboard_interrupt_fail_the_task_not_the_worker(
    backend, db, omniq
) -> None:
    cases = {
        "tests.support.jobs.exit_now": "SystemExit",
        "tests.support.jobs.async_exit": "SystemExit",
        "tests.support.jobs.interrupt": "KeyboardInterrupt",
        "tests.support.jobs.async_interrupt": "KeyboardInterrupt",
        "tests.support.jobs.generator_exit": "GeneratorExit",
        "tests.support.jobs.generator_exit_later": "GeneratorExit",
        "tests.support.jobs.async_cancelled": "CancelledError",
    }
    tasks = {f: Task(func=f, max_retries=1, retry_delay=0.05) for f in cases}
    worker = await omniq.worker()
    await backend.task_queue.enqueue_many(list(tasks.values()))
    await wait_final(db, list(tasks.values()), 30, worker)

    for func, error_type in cases.items():
        task = tasks[func]
        row = await db.row("tasks", task.id)
        assert row["status"] == "failed" and row["retry_count"] == 1 and row["attempts"] == 2
        result = await db.row("results", task.id)
        assert result["error_type"] == error_type, (func, result)
        assert await final_events(db, task.id) == ["failed"]
    assert (
        "sys.exit(3)" in (await db.row("results", tasks["tests.support.jobs.exit_now"].id))["error"]
    )
    assert worker.alive(), worker.output()
    # Each failure went through the task's own path, not the worker's last-resort handler
    # (which a GeneratorExit thrown into the awaiting coroutine used to reach, twice recorded).
    assert "failed inside the worker" not in worker.output()
    later = Task(func="tests.support.jobs.add", args=(1, 2))
    await backend.task_queue.enqueue(later)
    assert (await backend.result_storage.wait(later.id, 15)).result == 3
    worker.send(signal.SIGTERM)  # a signal to the worker itself still stops it
    assert await worker.exited(10) == 0, worker.output()


# -- issue 10, defect 4: exceptions that break, and BaseException subclasses ----------------


async def test_broken_exceptions_and_base_exceptions_are_recorded(backend, db, omniq) -> None:
    cases = {
        "tests.support.jobs.raise_unprintable": (
            "UnprintableError",
            "its __str__ raised an exception",
        ),
        "tests.support.jobs.async_raise_unprintable": (
            "UnprintableError",
            "its __str__ raised an exception",
        ),
        "tests.support.jobs.raise_doom": ("Doom", "doom"),
        "tests.support.jobs.async_raise_doom": ("Doom", "doom"),
    }
    tasks = {f: Task(func=f, max_retries=0) for f in cases}
    workers = [await omniq.worker(*FAST_LIVENESS) for _ in range(2)]
    await backend.task_queue.enqueue_many(list(tasks.values()))
    await wait_final(db, list(tasks.values()), 20, workers[0])
    await asyncio.sleep(2.5)  # longer than --worker-timeout: a wrongly held task would be rescued

    for func, (error_type, text) in cases.items():
        task = tasks[func]
        assert (await db.row("tasks", task.id))["status"] == "failed"
        result = await db.row("results", task.id)
        assert result["error_type"] == error_type and text in result["error"], result
        assert f"{error_type}" in result["traceback"]
        assert await final_events(db, task.id) == ["failed"]
        assert "rescued" not in await db.events(task.id)
    logs = "".join(w.output() for w in workers)
    for task in tasks.values():
        assert f"failed   {task.id}" in logs  # every outcome is logged
    assert all(w.alive() for w in workers)


async def test_a_worker_rescued_while_alive_registers_again_in_full(
    backend, db, omniq, tmp_path
) -> None:
    """A worker frozen (SIGSTOP) past its --worker-timeout is presumed dead: its task is
    rescued and its registry row removed. Thawed, it learns it lost the task, registers again
    with its host, pid and own timeout, and a second freeze is rescued on that timeout."""
    first = Task(
        func="tests.support.jobs.sleep_once", args=(str(tmp_path / "first"), 30), queue_name="mine"
    )
    victim = await omniq.worker(*FAST_LIVENESS, "--queues", "mine", "--worker-id", "victim")
    await backend.task_queue.enqueue(first)
    await wait_until(lambda: read_trace(tmp_path / "first"), 10, "the task to start", victim)
    rescuer = await omniq.worker(*FAST_LIVENESS, "--queues", "other", "--worker-id", "rescuer")

    victim.send(signal.SIGSTOP)
    try:

        async def rescued(task_id: str) -> bool:
            return "rescued" in await db.events(task_id)

        await wait_until(lambda: rescued(first.id), 15, "the first rescue", rescuer)
        assert await worker_row(db, "victim") is None  # removed as dead
    finally:
        victim.send(signal.SIGCONT)
    # Thawed, it hears of the loss from its heartbeat, or takes the task again first and
    # abandons its first attempt then; either way one attempt runs.
    news = ("was taken from this worker", "while its attempt 1 still runs here")
    await wait_until(lambda: any(n in victim.output() for n in news), 10, "the news", victim)

    second = Task(func="tests.support.jobs.async_sleep", args=(30,), queue_name="mine")
    await backend.task_queue.enqueue(second)

    async def running() -> bool:
        row = await db.row("tasks", second.id)
        return row["status"] == "running" and row["worker_id"] == "victim"

    await wait_until(running, 15, "the victim to take the second task", victim)

    async def registered() -> dict | None:
        row = await worker_row(db, "victim")
        return row if row and row["hostname"] and row["pid"] == victim.pid else None

    row = await wait_until(registered, 10, "the victim to register again", victim)
    assert row["stale_after"].total_seconds() == 2 and row["queues"] == ["mine"]
    # An idle worker on other queues sleeps until a NOTIFY for its queues once nobody held a
    # task at its last rescue check; a fresh one checks at start and then at the times the
    # database gives (the victim's last heartbeat + its 2 s).
    rescuer = await omniq.worker(*FAST_LIVENESS, "--queues", "other", "--worker-id", "rescuer2")
    victim.send(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        # Rescued by its own 2 s: the default 30 s would not have run out by the deadline.
        await wait_until(lambda: rescued(second.id), 28, "the second rescue", rescuer)
        took = time.monotonic() - frozen_at
    finally:
        victim.send(signal.SIGCONT)
    print(f"\nsecond rescue {took:.1f}s after the freeze (--worker-timeout 2; default 30)")
    assert victim.alive() and rescuer.alive()


# -- the hostile-tasks suite: one queue mixing everything -----------------------------------


async def test_hostile_queue(backend, db, omniq, tmp_path, record_property) -> None:
    """Two workers take a queue mixing ordinary tasks with every kind of misbehaviour. One of
    them is killed by a task's os._exit (and replaced); the other keeps running throughout.
    Each task ends in one final state with its error recorded; no task runs twice at once."""
    path = str(tmp_path / "windows")
    big = 30_000_000
    ordinary = [
        Task(func="tests.support.jobs.windowed", args=(path, f"ok{i}", 0.05), max_retries=1)
        for i in range(20)
    ]
    blocking = [
        Task(func="tests.support.jobs.async_block", args=(3.0, path, f"block{i}"), max_retries=2)
        for i in range(2)
    ]
    failing = {  # func -> error type recorded
        "tests.support.jobs.exit_now": "SystemExit",
        "tests.support.jobs.async_exit": "SystemExit",
        "tests.support.jobs.interrupt": "KeyboardInterrupt",
        "tests.support.jobs.async_interrupt": "KeyboardInterrupt",
        "tests.support.jobs.generator_exit": "GeneratorExit",
        "tests.support.jobs.raise_unprintable": "UnprintableError",
        "tests.support.jobs.async_raise_doom": "Doom",
        "tests.support.jobs.not_json": "TypeError",
    }
    bad = {f: Task(func=f, max_retries=1, retry_delay=0.05) for f in failing}
    hung = Task(
        func="tests.support.jobs.thread_sleep",
        args=(3.0,),
        timeout=0.5,
        max_retries=1,
        retry_delay=0.1,
    )
    crash = Task(func="tests.support.jobs.crash_once", args=(path, "crash"), max_retries=2)
    huge = Task(func="tests.support.jobs.huge", args=(big,))
    everything = [*ordinary, *blocking, *bad.values(), hung, crash, huge]
    tasks = list(everything)
    random.Random(10).shuffle(tasks)  # misbehaviour spread among ordinary work

    args = (*FAST_LIVENESS, "--concurrency", "4", "--no-scheduler")
    workers = [await omniq.worker(*args) for _ in range(2)]
    t0 = time.monotonic()
    await backend.task_queue.enqueue_many(tasks)

    async def settled() -> bool:
        for i, worker in enumerate(workers):
            if not worker.alive():  # the os._exit task took it: a supervisor would restart it
                assert worker.proc.returncode == 13, worker.output()[-3000:]
                workers[i] = await omniq.worker(*args)
                crashed.append(worker)
        return await all_final(db, everything)

    crashed: list[Any] = []
    await wait_until(settled, 90, "every hostile task to end", workers[0], 0.2)
    elapsed = time.monotonic() - t0

    assert len(crashed) == 1, [w.output()[-2000:] for w in crashed]  # only os._exit killed one
    assert all(w.alive() for w in workers), [w.output()[-2000:] for w in workers]
    # crash_once writes its end right before os._exit: every run of that pid ended then.
    crashes = {pid: end for _, end, pid in read_windows(path)["crash"][:1] if end is not None}
    assert [w.pid for w in crashed] == list(crashes)
    runs = assert_no_overlap(path, crashes)
    for task in everything:
        assert await final_events(db, task.id) in (["completed"], ["failed"]), task.func
    for task in [*ordinary, *blocking]:
        assert (await db.row("results", task.id))["status"] == "success", task.func
    # Blocking its loop never gets a task rescued: no blocking task ran twice in workers that
    # lived, and each such run ended (its result, success, is checked above). A run in the
    # worker the os._exit killed (a sync task's thread can call it while an async task blocks
    # the loop) may be cut short, or end before its outcome is written; that task runs again
    # in another worker, as after any crash.
    for i in range(2):
        lived = [r for r in runs[f"block{i}"] if r[2] not in crashes]
        assert len(lived) <= 1 and all(end is not None for _, end, _ in lived), runs
    for task, error_type in [*((bad[f], t) for f, t in failing.items()), (hung, "TimeoutError")]:
        result = await db.row("results", task.id)
        assert result["status"] == "failure", result
        if result["error_type"] == "WorkerLost":  # the crash took the task's last attempt
            assert int(result["worker_id"].rsplit("-", 2)[1]) in crashes, result
            continue
        assert result["error_type"] == error_type and result["error"], result
        assert result["traceback"], result
    if (await db.row("results", hung.id))["error_type"] == "TimeoutError":
        assert "thread keeps running" in (await db.row("results", hung.id))["error"]
    result = await db.row("results", crash.id)
    assert result["status"] == "success" and result["result"] == "survived"
    assert len(runs["crash"]) == 2 and "rescued" in await db.events(crash.id)
    assert (
        await db.conn.fetchval(
            f"SELECT length(result #>> '{{}}') FROM {db.table('results')} WHERE task_id = $1",  # noqa: S608
            huge.id,
        )
        == big
    )
    assert await db.count("tasks", "status NOT IN ('completed', 'failed')") == 0
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert await worker.exited(15) == 0, worker.output()[-3000:]
    figures = {
        "tasks": len(everything),
        "completed": await db.count("tasks", "status = 'completed'"),
        "failed": await db.count("tasks", "status = 'failed'"),
        "runs": sum(len(r) for r in runs.values()),
        "workers_crashed": len(crashed),
        "seconds": round(elapsed, 1),
    }
    for key, value in figures.items():
        record_property(f"hostile.{key}", value)
    print("\nhostile queue: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
