"""``omniq worker --metrics-port N --metrics-gauges --log-format json`` as users run it: a real
worker process, its /metrics scraped over HTTP and parsed with prometheus_client's parser, its
log lines read as JSON objects carrying the task fields."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import asyncpg
import httpx
import orjson
import pytest

from omniq import Task
from omniq import __version__ as omniq_version
from omniq.backend.postgres import PostgreSQLBackend
from omniq.models._common import utcnow
from tests.acceptance.test_worker import _statements_started
from tests.support.metrics import of, samples
from tests.support.processes import Processes, wait_until

pytestmark = pytest.mark.timeout(120)

ADD, FAIL, FLAKY = (
    "tests.support.jobs.add",
    "tests.support.jobs.fail_always",
    "tests.support.jobs.flaky",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_endpoint_and_json_logs_of_a_worker_process(
    backend: PostgreSQLBackend, omniq: Processes, tmp_path
) -> None:
    queue = backend.task_queue
    added = [Task(func=ADD, args=(i, i), queue_name="mail") for i in range(3)]
    failing = Task(func=FAIL, queue_name="mail", max_retries=0)
    flaky = Task(func=FLAKY, args=(str(tmp_path / "flaky"), 1), max_retries=1, retry_delay=0)
    await queue.enqueue_many([*added, failing, flaky])
    await queue.enqueue(
        Task(func=ADD, args=(1, 1), queue_name="later", run_at=utcnow() + timedelta(hours=1))
    )
    port = free_port()
    worker = await omniq.worker(
        "--queues", "mail,default", "--metrics-port", str(port), "--metrics-gauges",
        "--log-format", "json",
    )  # fmt: skip
    for task in [*added, failing, flaky]:
        await backend.result_storage.wait(task.id, 60)
    url = f"http://127.0.0.1:{port}/metrics"

    async with httpx.AsyncClient(timeout=30) as client:

        async def scrape() -> dict | None:
            got = samples((await client.get(url)).text)
            done = got.get(("omniq_tasks_completed_total", of("default", FLAKY)))
            return got if done == 1 else None  # counted once the outcome is recorded

        got = await wait_until(scrape, 60, "the flaky task counted", worker)
        response = await client.get(url)
    assert response.headers["content-type"].startswith("text/plain")
    assert got[("omniq_tasks_started_total", of("mail", ADD))] == 3
    assert got[("omniq_tasks_completed_total", of("mail", ADD))] == 3
    assert got[("omniq_tasks_failed_total", of("mail", FAIL))] == 1
    assert got[("omniq_tasks_retried_total", of("default", FLAKY))] == 1
    assert got[("omniq_tasks_started_total", of("default", FLAKY))] == 2
    assert got[("omniq_task_execution_seconds_count", of("mail", ADD))] == 3
    assert got[("omniq_tasks_rescued_total", ())] == 0
    depth = "omniq_queue_depth"
    assert got[(depth, (("queue", "later"), ("status", "later")))] == 1
    assert got[(depth, (("queue", "mail"), ("status", "failed")))] == 1
    assert got[(depth, (("queue", "mail"), ("status", "ready")))] == 0
    assert got[("omniq_workers_alive", ())] == 1

    status = omniq.start("status")
    assert await status.exited(60) == 0, status.output()
    header, row = [line.split() for line in status.output().splitlines() if "WORKER" in line or
                   line.startswith(f"{socket.gethostname()}-")][:2]  # fmt: skip
    assert row[header.index("VERSION")] == omniq_version, status.output()

    lines = [orjson.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    assert lines and len(lines) == len(worker.output().splitlines()), worker.output()
    about = {}
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
        if "task_id" in line:
            about.setdefault(line["task_id"], []).append(line)
    assert set(about) == {t.id for t in [*added, failing, flaky]}
    (fail_line,) = about[failing.id]
    assert fail_line["func"] == FAIL and fail_line["queue"] == "mail" and fail_line["attempt"] == 1
    assert (
        fail_line["message"].startswith("failed")
        and "this task always fails" in fail_line["message"]
    )
    assert [(x["attempt"], x["message"].split()[0]) for x in about[flaky.id]] == [
        (1, "retry"),
        (2, "done"),
    ]


async def test_scraping_an_idle_worker_sends_no_statement(
    backend: PostgreSQLBackend, omniq: Processes, admin: asyncpg.Connection
) -> None:
    """Without --metrics-gauges the endpoint serves the worker's memory only: scrapes of an
    idle worker leave every OmniQ connection silent (with the gauges, each sends one query)."""
    port = free_port()
    worker = await omniq.worker("--metrics-port", str(port))

    async def settled() -> bool:  # its start-up is over: a second without a statement
        first = await _statements_started(admin)
        await asyncio.sleep(1.0)
        return first == await _statements_started(admin)

    await wait_until(settled, 60, "the worker's start-up queries to end", worker)
    before = await _statements_started(admin)
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(3):
            scrape = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert "omniq_tasks_rescued_total 0.0" in scrape.text
    assert await _statements_started(admin) == before


async def test_metrics_options_refuse_what_cannot_work(omniq: Processes) -> None:
    alone = omniq.start("worker", "--metrics-gauges")
    assert await alone.exited(60) == 1
    assert "--metrics-gauges needs --metrics-port" in alone.output()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = omniq.start("worker", "--metrics-port", str(port))
        assert await busy.exited(60) == 1
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in busy.output()
