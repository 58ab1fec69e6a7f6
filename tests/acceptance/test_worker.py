"""Workers as users run them: real `python -m omniq worker` processes on a fresh schema per test.

Each test enqueues tasks from Python (the ``backend`` fixture), starts worker processes through
the ``omniq`` fixture (all killed at the end of the test), and reads back what really landed in
PostgreSQL: task rows, results and events. Task functions live in tests/support/jobs.py; the ones that
leave a trace append ``<what> <time> <pid>`` lines to a file under ``tmp_path``.

Run with ``-s`` to see the measured figures (tasks/s, rescue time, wake-up latency).
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from omniq import Task
from omniq.identifiers import quote_identifier
from omniq.models._common import utcnow
from tests.support.jobs import read_trace
from tests.support.processes import wait_until
from tests.support.waits import LONG, soon

pytestmark = pytest.mark.timeout(90)

FAST_LIVENESS = ("--heartbeat", "0.5", "--worker-timeout", "2")


def trace_file(tmp_path: Path, name: str) -> str:
    return str(tmp_path / f"{name}.trace")


def traced(path: str, what: str | None = None) -> list[tuple[str, float, int]]:
    return [row for row in read_trace(path) if what is None or row[0] == what]


async def status_of(db: Any, task_id: str) -> str | None:
    row = await db.row("tasks", task_id)
    return row["status"] if row else None


async def wait_status(
    db: Any, task_id: str, status: str, timeout: float = 15, process: Any = None
) -> None:
    async def reached() -> bool:
        return await status_of(db, task_id) == status

    await wait_until(reached, timeout, f"task {task_id} to be {status}", process)


async def events_of(db: Any, task_id: str) -> list[str]:
    """The task's event types in time order, 'enqueued' first.

    omniq_dequeue stamps 'dequeued' with now(), the start of its statement, which can be
    earlier than the enqueue of a task it picks up (tests/integration/test_queue.py::test_dequeue_never_predates_the_enqueue).
    """
    events = await db.events(task_id)
    if "enqueued" in events:
        events.remove("enqueued")
        events.insert(0, "enqueued")
    return events


# -- success, failure, import paths -------------------------------------------------------------


async def test_success_and_failure_are_stored_with_events(backend, db, omniq) -> None:
    ok = Task(func="tests.support.jobs.add", args=(2, 3))
    by_kwargs = Task(func="tests.support.jobs.add", kwargs={"a": 10, "b": 20})
    static = Task(
        func="tests.support.jobs:Calculator.add", args=(4, 5)
    )  # package.module:Class.method
    classmethod_ = Task(func="tests.support.jobs:Calculator.describe", args=(7,))
    stdlib = Task(func="os.path.join", args=("a", "b"))  # package.module.function
    bad = Task(func="tests.support.jobs.fail_always", args=("boom",), max_retries=0)
    await backend.task_queue.enqueue_many([ok, by_kwargs, static, classmethod_, stdlib, bad])

    worker = omniq.start("worker", "--burst", "--worker-id", "w-basic")
    assert await worker.exited(20) == 0, worker.output()

    expected = {ok.id: 5, by_kwargs.id: 30, static.id: 9, classmethod_.id: "Calculator got 7"}
    expected[stdlib.id] = "a/b"
    for task_id, value in expected.items():
        result = await db.row("results", task_id)
        assert result["status"] == "success"
        assert result["result"] == value
        assert result["error"] is None and result["traceback"] is None
        assert result["worker_id"] == "w-basic"
        assert result["started_at"] <= result["completed_at"]
        assert result["execution_time"] >= 0
        task = await db.row("tasks", task_id)
        assert task["status"] == "completed" and task["attempts"] == 1
        assert await events_of(db, task_id) == ["enqueued", "executing", "completed"]

    failed = await db.row("results", bad.id)
    assert failed["status"] == "failure"
    assert failed["error"] == "boom"
    assert failed["error_type"] == "ValueError"
    assert "in fail_always" in failed["traceback"]
    assert failed["traceback"].rstrip().endswith("ValueError: boom")
    assert failed["result"] is None
    assert await status_of(db, bad.id) == "failed"
    assert await events_of(db, bad.id) == ["enqueued", "executing", "failed"]
    (event,) = await db.rows("events", "task_id = $1 AND event_type = 'failed'", bad.id)
    assert event["error_type"] == "ValueError" and event["error_message"] == "boom"
    assert "w-basic" in worker.output() and "1 failed" in worker.output()


async def test_unresolvable_funcs_fail_the_task_not_the_worker(backend, db, omniq) -> None:
    cases = {
        "no_such_module_xyz.run": "No module named 'no_such_module_xyz'",
        "tests.support.jobs.no_such_function": "has no attribute 'no_such_function'",
        "tests.support.jobs:Calculator.nope": "has no attribute 'nope'",
        "tests.support.jobs.NOT_CALLABLE": "'tests.support.jobs.NOT_CALLABLE' is not callable (it is int)",
    }
    worker = await omniq.worker()
    tasks = {func: Task(func=func, max_retries=0) for func in cases}
    not_json = Task(func="tests.support.jobs.not_json", max_retries=0)
    await backend.task_queue.enqueue_many([*tasks.values(), not_json])
    for task in [*tasks.values(), not_json]:
        await wait_status(db, task.id, "failed", process=worker)

    for func, message in cases.items():
        result = await db.row("results", tasks[func].id)
        assert result["status"] == "failure"
        assert result["error_type"] == "TaskImportError", result
        assert message in result["error"], result["error"]
        assert func in result["error"]
    result = await db.row("results", not_json.id)
    assert result["error_type"] == "TypeError"
    assert (
        "the return value of tests.support.jobs.not_json cannot be stored as JSON"
        in result["error"]
    )

    # The worker is still alive and runs the next task.
    assert worker.alive(), worker.output()
    after = Task(func="tests.support.jobs.add", args=(1, 1))
    await backend.task_queue.enqueue(after)
    await wait_status(db, after.id, "completed", process=worker)
    assert (await db.row("results", after.id))["result"] == 2
    worker.send(signal.SIGTERM)
    assert await worker.exited(10) == 0


async def test_workers_share_tasks_and_run_each_once(backend, db, omniq, tmp_path) -> None:
    path = trace_file(tmp_path, "shared")
    workers = [await omniq.worker("--concurrency", "5") for _ in range(3)]
    tasks = [Task(func="tests.support.jobs.async_sleep", args=(0.02, path)) for _ in range(300)]
    await backend.task_queue.enqueue_many(tasks)

    async def all_done() -> bool:
        return await db.count("tasks", "status = 'completed'") == len(tasks)

    await wait_until(all_done, 30, "300 tasks to complete", workers[0])
    assert len(traced(path, "start")) == len(tasks)  # no task ran twice
    assert await db.count("results", "status = 'success'") == len(tasks)
    assert await db.count("tasks", "attempts <> 1") == 0
    by_pid = {pid for _, _, pid in traced(path, "start")}
    assert by_pid == {w.pid for w in workers}  # all three took part
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert await worker.exited(10) == 0


async def test_dsn_and_schema_from_the_environment(backend, db, omniq, pg_dsn) -> None:
    task = Task(func="tests.support.jobs.add", args=(3, 4))
    await backend.task_queue.enqueue(task)
    env = {"OMNIQ_DSN": pg_dsn, "OMNIQ_SCHEMA": backend.config.schema}
    worker = omniq.start("worker", "--burst", env=env)
    assert await worker.exited(20) == 0, worker.output()
    assert (await db.row("results", task.id))["result"] == 7


# -- retries, expiry --------------------------------------------------------------------------


def _retry_run_at(message: str) -> datetime:
    """The run_at in a 'retry' event's message: 'retry <n> at <timestamptz>'."""
    return datetime.fromisoformat(message.split(" at ", 1)[1])


async def test_retries_back_off_then_succeed(backend, db, omniq, tmp_path) -> None:
    """Backoff: run_at = now + retry_delay * 2**retry_count * uniform(0.75, 1.25) (omniq_retry_delay)."""
    path = trace_file(tmp_path, "flaky")
    task = Task(func="tests.support.jobs.flaky", args=(path, 2), max_retries=3, retry_delay=0.4)
    await backend.task_queue.enqueue(task)
    worker = await omniq.worker()
    await wait_status(db, task.id, "completed", process=worker)

    row = await db.row("tasks", task.id)
    assert row["retry_count"] == 2 and row["attempts"] == 3
    result = await db.row("results", task.id)
    assert result["status"] == "success" and result["result"] == 3 and result["error"] is None
    assert await events_of(db, task.id) == [
        "enqueued",
        *["executing", "retry"] * 2,
        *["executing", "completed"],
    ]
    retries = await db.rows(
        "events", "task_id = $1 AND event_type = 'retry'", task.id, order="timestamp"
    )
    assert [r["error_type"] for r in retries] == ["RuntimeError", "RuntimeError"]
    assert "attempt 1 of 3 fails" in retries[0]["error_message"]

    # Each retry's run_at lies retry_delay * 2**n * [0.75, 1.25) after the failed attempt ended
    # (its 'retry' event; plus the worker's outcome-flush lag, < 0.1 s): 0.3-0.5 s, then
    # 0.6-1.0 s, so the waits grow. Each attempt started only after its run_at.
    run_ats = [_retry_run_at(r["message"]) for r in retries]
    delays = [(at - r["timestamp"]).total_seconds() for at, r in zip(run_ats, retries, strict=True)]
    assert 0.4 * 0.75 <= delays[0] < 0.4 * 1.25 + 0.1
    assert 0.8 * 0.75 <= delays[1] < 0.8 * 1.25 + 0.1
    assert delays[1] > delays[0]
    attempts = [at for _, at, _ in traced(path, "attempt")]
    assert len(attempts) == 3
    for run_at, started in zip(run_ats, attempts[1:], strict=True):
        assert started >= run_at.timestamp() - 0.005, (started, run_at)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    print(
        f"\nretry delays stored {[round(d, 3) for d in delays]} s; gaps between attempts {[round(g, 3) for g in gaps]} s"
    )


async def test_last_attempt_fails_for_good(backend, db, omniq) -> None:
    task = Task(
        func="tests.support.jobs.fail_always",
        args=("still broken",),
        max_retries=2,
        retry_delay=0.05,
    )
    await backend.task_queue.enqueue(task)
    worker = await omniq.worker()
    await wait_status(db, task.id, "failed", process=worker)

    row = await db.row("tasks", task.id)
    assert row["retry_count"] == 2 and row["attempts"] == 3 and row["finished_at"] is not None
    result = await db.row("results", task.id)
    assert result["status"] == "failure"
    assert result["error"] == "still broken" and result["error_type"] == "ValueError"
    assert "ValueError: still broken" in result["traceback"]
    events = await events_of(db, task.id)
    assert events.count("retry") == 2 and events.count("executing") == 3
    assert events[-1] == "failed"


async def test_expired_task_is_never_run(backend, db, omniq, tmp_path) -> None:
    path = trace_file(tmp_path, "expired")
    late = Task(
        func="tests.support.jobs.marker",
        args=(path, "ran"),
        expires_at=utcnow() - timedelta(seconds=1),
    )
    on_time = Task(
        func="tests.support.jobs.marker",
        args=(path, "on time"),
        expires_at=utcnow() + timedelta(hours=1),
    )
    await backend.task_queue.enqueue_many([late, on_time])
    worker = omniq.start("worker", "--burst")
    assert await worker.exited(20) == 0, worker.output()

    assert [what for what, _, _ in traced(path)] == ["on time"]
    assert await status_of(db, late.id) == "expired"
    assert await status_of(db, on_time.id) == "completed"
    result = await db.row("results", late.id)
    assert result["status"] == "expired" and result["error_type"] == "TaskExpired"
    assert "expired" in result["error"]
    assert await events_of(db, late.id) == ["enqueued", "expired"]


# -- dependencies, callbacks ------------------------------------------------------------------


async def test_dependency_chain_runs_in_order(backend, db, omniq, tmp_path) -> None:
    path = trace_file(tmp_path, "chain")
    a = Task(func="tests.support.jobs.marker", args=(path, "A"))
    b = Task(func="tests.support.jobs.marker", args=(path, "B"), dependencies=[a.id])
    c = Task(func="tests.support.jobs.marker", args=(path, "C"), dependencies=[b.id])
    await backend.task_queue.enqueue_many([a, b, c])
    assert [await status_of(db, t.id) for t in (a, b, c)] == ["pending", "waiting", "waiting"]

    worker = omniq.start("worker", "--burst")
    assert await worker.exited(20) == 0, worker.output()
    assert [what for what, _, _ in traced(path)] == ["A", "B", "C"]
    for task in (a, b, c):
        assert (await db.row("results", task.id))["status"] == "success"
    # Each dependent started only after its dependency's result was written.
    done = {t.id: (await db.row("results", t.id)) for t in (a, b, c)}
    assert done[a.id]["completed_at"] <= done[b.id]["started_at"]
    assert done[b.id]["completed_at"] <= done[c.id]["started_at"]


async def test_dependents_of_a_failed_task_are_cancelled(backend, db, omniq, tmp_path) -> None:
    path = trace_file(tmp_path, "chain")
    a = Task(
        func="tests.support.jobs.fail_always", args=("A broke",), max_retries=1, retry_delay=0.05
    )
    b = Task(func="tests.support.jobs.marker", args=(path, "B"), dependencies=[a.id])
    c = Task(func="tests.support.jobs.marker", args=(path, "C"), dependencies=[b.id])
    await backend.task_queue.enqueue_many([a, b, c])
    worker = await omniq.worker()
    await wait_status(db, c.id, "cancelled", process=worker)

    assert traced(path) == []
    assert await status_of(db, a.id) == "failed"
    assert (await db.row("tasks", a.id))["retry_count"] == 1  # retried once before giving up
    for task in (b, c):
        assert await status_of(db, task.id) == "cancelled"
        result = await db.row("results", task.id)
        assert result["status"] == "cancelled" and result["error_type"] == "TaskCancelled"
        assert result["error"] == "a dependency failed, expired or was cancelled"
        assert await events_of(db, task.id) == ["enqueued", "cancelled"]


async def test_callbacks_are_enqueued_in_the_same_queue_with_the_outcome(
    backend, db, omniq
) -> None:
    callbacks = {
        "on_success": "tests.support.jobs.echo",
        "on_failure": "tests.support.jobs.echo",
        "on_complete": "tests.support.jobs.echo",
    }
    good = Task(func="tests.support.jobs.add", args=(20, 22), queue_name="cbq", callbacks=callbacks)
    bad = Task(
        func="tests.support.jobs.fail_always",
        args=("nope",),
        queue_name="cbq",
        max_retries=0,
        callbacks=callbacks,
    )
    await backend.task_queue.enqueue_many([good, bad])
    worker = await omniq.worker("--queues", "cbq")

    async def four_callbacks_done() -> list[dict]:
        rows = await db.rows("tasks", "metadata ? 'callback_of'")
        return rows if len(rows) == 4 and all(r["status"] == "completed" for r in rows) else []

    rows = await wait_until(four_callbacks_done, 15, "4 callback tasks to complete", worker)
    fired = {(r["metadata"]["callback_of"], r["metadata"]["callback"]): r for r in rows}
    assert set(fired) == {
        (good.id, "on_success"),
        (good.id, "on_complete"),
        (bad.id, "on_failure"),
        (bad.id, "on_complete"),
    }
    for (origin, _kind), row in fired.items():
        assert row["queue_name"] == "cbq" and row["func"] == "tests.support.jobs.echo"
        (outcome,) = row["args"]
        assert (await db.row("results", row["id"]))["result"] == outcome  # echo returned it
        assert outcome["task_id"] == origin
    good_outcome = fired[good.id, "on_success"]["args"][0]
    assert good_outcome == {
        "task_id": good.id,
        "status": "success",
        "result": 42,
        "error": None,
        "error_type": None,
    }
    bad_outcome = fired[bad.id, "on_failure"]["args"][0]
    assert bad_outcome["status"] == "failure"
    assert bad_outcome["error"] == "nope" and bad_outcome["error_type"] == "ValueError"


# -- timeouts ---------------------------------------------------------------------------------


async def test_timeouts_fail_async_and_thread_tasks(backend, db, omniq, tmp_path) -> None:
    """An async task is cancelled at its timeout. A thread cannot be interrupted: the task is
    failed at its timeout, but the function keeps running in its thread until it returns (its
    side effects still happen, its return value is dropped, the thread stays busy meanwhile).
    A worker that exits does not wait for such a thread (see the SIGTERM tests)."""
    async_path = trace_file(tmp_path, "async")
    thread_path = trace_file(tmp_path, "thread")
    by_default = Task(func="tests.support.jobs.async_sleep", args=(30, async_path), max_retries=0)
    in_thread = Task(
        func="tests.support.jobs.thread_sleep", args=(3.0, thread_path), timeout=0.3, max_retries=0
    )
    worker = await omniq.worker("--task-timeout", "0.4")  # the default for tasks without one
    await backend.task_queue.enqueue_many([by_default, in_thread])

    await wait_status(db, by_default.id, "failed", process=worker)
    await wait_status(db, in_thread.id, "failed", process=worker)
    assert traced(thread_path, "end") == []  # both failed before the thread's function returned
    cases = (
        (by_default, "cancelled", 0.4, 30.0),
        (in_thread, "its thread keeps running", 0.3, 3.0),
    )
    for task, where, limit, sleep in cases:
        result = await db.row("results", task.id)
        assert result["status"] == "failure" and result["error_type"] == "TimeoutError"
        assert f"exceeded its timeout of {limit:g}s" in result["error"]
        assert where in result["error"]
        assert 0.9 * limit <= result["execution_time"] < sleep  # at its timeout, not its end
    assert [what for what, _, _ in traced(async_path)] == ["start"]  # never resumed

    await wait_until(lambda: traced(thread_path, "end"), 30, "the thread to return", worker)
    assert (await db.row("results", in_thread.id))["status"] == "failure"  # still failed
    assert worker.alive()
    worker.send(signal.SIGTERM)
    assert await worker.exited(10) == 0, worker.output()


# -- crashes and shutdown ---------------------------------------------------------------------


async def test_sigkill_mid_task_is_rescued_by_another_worker(backend, db, omniq, tmp_path) -> None:
    path = trace_file(tmp_path, "killed")
    task = Task(func="tests.support.jobs.async_sleep", args=(2.5, path), max_retries=2)
    doomed = await omniq.worker(*FAST_LIVENESS, "--worker-id", "doomed")
    await backend.task_queue.enqueue(task)
    await wait_until(lambda: traced(path, "start"), 10, "the task to start", doomed)
    # Started only now, so that it cannot take the task before the first worker does.
    rescuer = await omniq.worker(*FAST_LIVENESS, "--worker-id", "rescuer")

    doomed.send(signal.SIGKILL)
    killed_at = time.time()
    assert await doomed.exited(5) == -signal.SIGKILL
    await wait_until(
        lambda: len(traced(path, "start")) == 2, 15, "the task to start again", rescuer
    )
    rescue_time = traced(path, "start")[1][1] - killed_at
    await wait_status(db, task.id, "completed", process=rescuer)

    print(f"\nrescue after SIGKILL: {rescue_time:.2f} s (--heartbeat 0.5 --worker-timeout 2)")
    assert rescue_time < 2 + 0.5 + 1.5
    starts, ends = traced(path, "start"), traced(path, "end")
    assert starts[0][2] == doomed.pid and starts[1][2] == rescuer.pid
    assert [pid for _, _, pid in ends] == [rescuer.pid]  # ran to the end once, on the rescuer
    result = await db.row("results", task.id)
    assert result["status"] == "success" and result["result"] == 2.5
    assert result["worker_id"] == "rescuer"
    row = await db.row("tasks", task.id)
    assert row["attempts"] == 2 and row["retry_count"] == 1  # a rescue counts as a retry
    events = await events_of(db, task.id)
    assert events == ["enqueued", "rescued", "executing", "completed"]
    (rescued,) = await db.rows("events", "task_id = $1 AND event_type = 'rescued'", task.id)
    assert rescued["worker_id"] == "doomed" and rescued["error_type"] == "WorkerLost"


async def test_a_live_worker_with_slower_heartbeats_keeps_its_task(
    backend, db, omniq, tmp_path
) -> None:
    path = trace_file(tmp_path, "alive")
    task = Task(func="tests.support.jobs.async_sleep", args=(3.0, path))
    slow = await omniq.worker("--worker-id", "slow")  # --heartbeat 5 --worker-timeout 30
    await backend.task_queue.enqueue(task)
    await wait_until(lambda: traced(path, "start"), 10, "the task to start", slow)
    eager = await omniq.worker(*FAST_LIVENESS, "--worker-id", "eager")
    await asyncio.sleep(2.8)
    assert slow.alive() and eager.alive()
    assert len(traced(path, "start")) == 1, "the task was started again while its worker lived"


async def test_sigterm_lets_the_running_task_finish(backend, db, omniq, tmp_path) -> None:
    path = trace_file(tmp_path, "graceful")
    task = Task(func="tests.support.jobs.async_sleep", args=(1.0, path))
    worker = await omniq.worker("--shutdown-grace", "10")
    await backend.task_queue.enqueue(task)
    await wait_until(lambda: traced(path, "start"), 10, "the task to start", worker)
    worker.send(signal.SIGTERM)
    t0 = time.monotonic()
    assert await worker.exited(10) == 0, worker.output()
    print(f"\nSIGTERM: worker exited {time.monotonic() - t0:.2f} s later, its 1 s task done")

    assert await status_of(db, task.id) == "completed"
    assert (await db.row("results", task.id))["status"] == "success"
    assert "requeued" not in await events_of(db, task.id)
    # It took nothing new once the signal arrived.
    later = Task(func="tests.support.jobs.noop")
    await backend.task_queue.enqueue(later)
    assert await status_of(db, later.id) == "pending"


@pytest.mark.parametrize(
    "func", ["tests.support.jobs.sleep_once", "tests.support.jobs.thread_sleep_once"]
)
async def test_sigterm_past_the_grace_period_requeues(backend, db, omniq, tmp_path, func) -> None:
    path = trace_file(tmp_path, "long")
    task = Task(func=func, args=(path, 30))
    worker = await omniq.worker("--shutdown-grace", "0.5")
    await backend.task_queue.enqueue(task)
    await wait_until(lambda: traced(path, "start"), 10, "the task to start", worker)
    worker.send(signal.SIGTERM)
    t0 = time.monotonic()
    assert await worker.exited(5) == 130, worker.output()  # 130: tasks were cut short
    print(
        f"\nSIGTERM with --shutdown-grace 0.5 ({func}): exited after {time.monotonic() - t0:.2f} s"
    )

    row = await db.row("tasks", task.id)
    assert row["status"] == "pending" and row["worker_id"] is None
    assert row["retry_count"] == 0  # a release is not a failed attempt
    assert await events_of(db, task.id) == ["enqueued", "requeued"]
    assert await db.row("results", task.id) is None

    # Nothing lost: the next worker runs it (quickly, since tests.support.jobs.sleep_once slept already).
    again = omniq.start("worker", "--burst")
    assert await again.exited(15) == 0, again.output()
    result = await db.row("results", task.id)
    assert result["status"] == "success" and result["result"] == "quick"


@pytest.mark.parametrize(
    ("func", "second"),
    [
        ("tests.support.jobs.sleep_once", signal.SIGTERM),
        ("tests.support.jobs.thread_sleep_once", signal.SIGINT),
    ],
)
async def test_second_signal_exits_at_once(backend, db, omniq, tmp_path, func, second) -> None:
    path = trace_file(tmp_path, "long")
    task = Task(func=func, args=(path, 30))
    worker = await omniq.worker("--shutdown-grace", "30")
    await backend.task_queue.enqueue(task)
    await wait_until(lambda: traced(path, "start"), 10, "the task to start", worker)
    worker.send(signal.SIGTERM)
    await worker.logged("stopping: no new tasks")
    worker.send(second)
    t0 = time.monotonic()
    assert await worker.exited(3) == 130, worker.output()
    print(f"\nsecond signal ({func}): exited after {time.monotonic() - t0:.2f} s")

    row = await db.row("tasks", task.id)
    assert row["status"] == "pending" and row["retry_count"] == 0
    assert await events_of(db, task.id) == ["enqueued", "requeued"]
    again = omniq.start("worker", "--burst")
    assert await again.exited(15) == 0, again.output()
    assert (await db.row("results", task.id))["result"] == "quick"


# -- burst, queues, idling --------------------------------------------------------------------


async def test_burst_exits_when_nothing_is_ready_and_queues_go_in_order(
    backend, db, omniq, tmp_path
) -> None:
    empty = omniq.start("worker", "--burst")
    assert await empty.exited(10) == 0, empty.output()

    path = trace_file(tmp_path, "order")
    low = [
        Task(func="tests.support.jobs.marker", args=(path, f"low{i}"), queue_name="low")
        for i in range(3)
    ]
    high = [
        Task(func="tests.support.jobs.marker", args=(path, f"high{i}"), queue_name="high")
        for i in range(3)
    ]
    later = Task(
        func="tests.support.jobs.marker",
        args=(path, "later"),
        queue_name="high",
        run_at=utcnow() + timedelta(hours=1),
    )
    other = Task(func="tests.support.jobs.marker", args=(path, "other"), queue_name="other")
    await backend.task_queue.enqueue_many([*low, *high, later, other])
    worker = omniq.start("worker", "--burst", "--queues", "high,low", "--concurrency", "1")
    assert await worker.exited(20) == 0, worker.output()
    assert [what for what, _, _ in traced(path)] == [f"high{i}" for i in range(3)] + [
        f"low{i}" for i in range(3)
    ]
    assert await status_of(db, later.id) == "pending"  # not due: burst does not wait for it
    assert await status_of(db, other.id) == "pending"  # not a queue of this worker


async def _statements_started(admin: asyncpg.Connection) -> dict[int, Any]:
    """When each OmniQ connection to the server last started a statement: pid -> query_start
    (pg_stat_activity, which every PostgreSQL has; pg_stat_statements is an extension). The
    LISTEN connection's ping, an empty query every 30 s, is no statement: left out."""
    rows = await admin.fetch(
        "SELECT pid, query_start, query FROM pg_stat_activity"
        " WHERE application_name LIKE 'omniq%' AND pid <> pg_backend_pid()"
    )
    return {row["pid"]: row["query_start"] for row in rows if row["query"].strip()}


async def test_idle_worker_sends_nothing_and_wakes_on_notify(
    backend, db, omniq, admin, tmp_path
) -> None:
    worker = await omniq.worker()  # with its scheduler, as by default

    async def settled() -> bool:  # its start-up is over: a second without a statement
        first = await _statements_started(admin)
        await asyncio.sleep(1.0)
        return first == await _statements_started(admin)

    await wait_until(settled, 60, "the worker's start-up queries to end", worker)
    before = await _statements_started(admin)
    await asyncio.sleep(3.0)
    after = await _statements_started(admin)
    talking = sorted(pid for pid, started in after.items() if before.get(pid, "new") != started)
    print(
        f"\nidle worker: {len(talking)} of {len(after)} OmniQ connections sent a statement in 3 s"
    )
    assert talking == []  # its pool, its LISTEN connection, its heartbeat thread: all silent

    path = trace_file(tmp_path, "wake")
    sent = time.time()
    await backend.task_queue.enqueue(Task(func="tests.support.jobs.marker", args=(path, "woke")))
    await wait_until(lambda: traced(path), 30, "the worker to wake", worker)
    latency = traced(path)[0][1] - sent  # woken by NOTIFY: an idle worker polls nothing
    print(f"idle worker woke and started the task {latency * 1000:.1f} ms after enqueue")


# -- cancellation, waiting for results --------------------------------------------------------


async def test_cancelled_tasks_are_never_run(backend, db, omniq, pg_dsn, tmp_path) -> None:
    path = trace_file(tmp_path, "cancel")
    from_python = Task(func="tests.support.jobs.marker", args=(path, "python"))
    from_psql = Task(func="tests.support.jobs.marker", args=(path, "psql"))
    kept = Task(func="tests.support.jobs.marker", args=(path, "kept"))
    await backend.task_queue.enqueue_many([from_python, from_psql, kept])

    assert await backend.task_queue.cancel_task(from_python.id, "changed my mind")
    psql = await asyncpg.connect(pg_dsn)  # what a DBA types in psql
    try:
        await psql.execute(f"SET search_path TO {quote_identifier(backend.config.schema)}")
        cancelled = await psql.fetchval(
            f"SELECT omniq_cancel_tasks(ARRAY['{from_psql.id}'], 'from psql')"
        )
    finally:
        await psql.close()
    assert cancelled == 1

    worker = omniq.start("worker", "--burst")
    assert await worker.exited(20) == 0, worker.output()
    assert [what for what, _, _ in traced(path)] == ["kept"]
    for task, reason in ((from_python, "changed my mind"), (from_psql, "from psql")):
        assert await status_of(db, task.id) == "cancelled"
        result = await db.row("results", task.id)
        assert result["status"] == "cancelled" and result["error"] == reason
        assert await events_of(db, task.id) == ["enqueued", "cancelled"]
    assert not await backend.task_queue.cancel_task(kept.id)  # finished tasks cannot be cancelled


async def test_result_wait_returns_when_a_worker_stores_the_result(backend, db, omniq) -> None:
    worker = await omniq.worker()
    task = Task(func="tests.support.jobs.async_sleep", args=(0.5,))
    await backend.task_queue.enqueue(task)
    result = await soon(backend.result_storage.wait(task.id, timeout=LONG))  # woken by NOTIFY
    returned = utcnow()
    assert result is not None and result.status == "success" and result.result == 0.5
    row = await db.row("results", task.id)
    lag = (returned - row["created_at"]).total_seconds()  # created_at: the commit's time
    print(f"\nresult_storage.wait returned {lag * 1000:.1f} ms after the result was written")

    pending = Task(func="tests.support.jobs.noop", queue_name="nobody-listens-here")
    await backend.task_queue.enqueue(pending)
    t0 = time.monotonic()
    missing = await backend.result_storage.wait(pending.id, timeout=0.3)
    assert missing is None and time.monotonic() - t0 >= 0.3  # not before its timeout
    assert worker.alive()


async def test_result_wait_sync(backend, sync_backend, omniq) -> None:
    worker = await omniq.worker()
    task = Task(func="tests.support.jobs.add", args=(1, 2))
    sync_backend.task_queue.enqueue_sync(task)
    result = await asyncio.to_thread(sync_backend.result_storage.wait_sync, task.id, 15)
    assert result is not None and result.result == 3
    assert worker.alive()


# -- throughput -------------------------------------------------------------------------------


async def test_throughput_of_noop_tasks(backend, db, omniq) -> None:
    n = 2000
    await backend.task_queue.enqueue_many([Task(func="tests.support.jobs.noop") for _ in range(n)])
    t0 = time.monotonic()
    worker = omniq.start("worker", "--burst")  # default concurrency (10) and logging
    assert await worker.exited(120) == 0, worker.output()[-2000:]
    wall = time.monotonic() - t0
    assert await db.count("tasks", "status = 'completed'") == n
    assert await db.count("results", "status = 'success'") == n
    first, last = await db.conn.fetchrow(
        f"SELECT min(started_at), max(completed_at) FROM {db.table('results')}"  # noqa: S608
    )
    span = (last - first).total_seconds()
    print(
        f"\nthroughput: {n} no-op tasks, one worker process, concurrency 10: "
        f"{n / wall:.0f} tasks/s including process start-up ({wall:.2f} s), "
        f"{n / span:.0f} tasks/s from the first start to the last result ({span:.2f} s)"
    )
