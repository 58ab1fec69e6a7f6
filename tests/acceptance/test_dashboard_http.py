"""``omniq dashboard`` as a real process, over HTTP: every screen, /metrics parsed with
prometheus_client's parser, actions behind CSRF, --read-only, credentials, the bind rule, and
live updates from one LISTEN connection for any number of browsers."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import WorkerProtocol
from omniq.models.task import Task
from tests.support.dashboard import TOKEN, seed, start
from tests.support.outcomes import outcome
from tests.support.processes import OmniqProcess, Processes, wait_until


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


async def test_every_screen_and_the_metrics(
    backend: PostgreSQLBackend, omniq: Processes, client: httpx.AsyncClient
) -> None:
    ids = await seed(backend)
    url = await start(omniq)

    overview = await client.get(url + "/")
    assert overview.status_code == 200
    assert all(t in overview.text for t in ("mail", "reports", "w-seed", "nightly", "Throughput"))
    tasks = await client.get(url + "/tasks", params={"status": "failed"})
    assert ids["failed"] in tasks.text and ids["done"] not in tasks.text
    assert "SMTP said no" in tasks.text
    detail = await client.get(f"{url}/tasks/{ids['failed']}")
    assert detail.status_code == 200
    assert "SMTPError" in detail.text and "Traceback (most recent call last)" in detail.text
    assert (await client.get(url + "/tasks/no-such-task")).status_code == 404
    assert "nightly" in (await client.get(url + "/schedules")).text
    workers = (await client.get(url + "/workers")).text
    assert "box" in workers and "9.8.7" in workers  # the version its heartbeat sent
    assert "9.8.7" in overview.text
    bad = await client.get(url + "/tasks", params={"status": "done"})
    assert bad.status_code == 400 and "unknown status &#39;done&#39;" in bad.text
    cursor = await client.get(url + "/tasks", params={"before": "not-a-cursor"})
    assert cursor.status_code == 400 and "start again from the first page" in cursor.text
    found = await client.get(url + "/tasks", params={"q": ids["done"]})  # an id: its page
    assert found.status_code == 303 and found.headers["location"].endswith(ids["done"])

    scrape = await client.get(url + "/metrics")
    assert scrape.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scrape.text)
        for s in family.samples
    }
    depth = "omniq_queue_depth"
    assert samples[(depth, (("queue", "mail"), ("status", "failed")))] == 1
    assert samples[(depth, (("queue", "reports"), ("status", "ready")))] == 1
    assert samples[(depth, (("queue", "reports"), ("status", "later")))] == 1
    assert samples[(depth, (("queue", "mail"), ("status", "ready")))] == 0
    assert samples[("omniq_workers_alive", ())] == 1
    assert 0 <= samples[("omniq_queue_oldest_ready_age_seconds", (("queue", "reports"),))] < 60


def form_of(page: str) -> dict[str, str]:
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token, "no CSRF token in the page"
    return {"csrf_token": token.group(1)}


async def test_actions_need_the_browsers_csrf_token(
    backend: PostgreSQLBackend, omniq: Processes, client: httpx.AsyncClient, db: Any
) -> None:
    ids = await seed(backend)
    other = Task(func="app.other", queue_name="other", max_retries=0)
    await backend.task_queue.enqueue(other)
    (taken,) = await backend.task_queue.dequeue_many("other", 1, worker_id="w-seed")
    await WorkerProtocol(backend).finish([outcome(taken, "failure", error="x")], "w-seed")
    url = await start(omniq)
    page = await client.get(f"{url}/tasks/{ids['failed']}")
    retry = {**form_of(page.text), "target": "task", "action": "retry", "id": ids["failed"],
             "next": f"/tasks/{ids['failed']}"}  # fmt: skip

    async def status(task_id: str) -> str:
        return (await db.row("tasks", task_id))["status"]

    no_token = {k: v for k, v in retry.items() if k != "csrf_token"}
    assert (await client.post(url + "/act", data=no_token)).status_code == 403
    wrong = {**retry, "csrf_token": "forged"}
    assert (await client.post(url + "/act", data=wrong)).status_code == 403
    elsewhere = await client.post(url + "/act", data=retry, headers={"Origin": "http://evil.test"})
    assert elsewhere.status_code == 403
    cookieless = httpx.AsyncClient(timeout=30)  # the token alone, without the browser's cookie
    async with cookieless:
        assert (await cookieless.post(url + "/act", data=retry)).status_code == 403
    assert await status(ids["failed"]) == "failed"

    done = await client.post(url + "/act", data=retry)
    assert done.status_code == 303 and done.headers["location"] == f"/tasks/{ids['failed']}"
    assert await status(ids["failed"]) == "pending"
    shown = await client.get(url + done.headers["location"])
    assert "1 of 1 task retried." in shown.text  # the flash message, once

    # Bulk: every failed task of one queue, not of the other.
    await backend.task_queue.cancel_tasks([ids["failed"]])
    bulk = {**form_of(shown.text), "target": "task", "do": "retry:all", "status": "failed",
            "queue": "other", "next": "/tasks"}  # fmt: skip
    assert (await client.post(url + "/act", data=bulk)).status_code == 303
    assert (await status(other.id), await status(ids["failed"])) == ("pending", "cancelled")
    # Pausing a schedule, and an action that does not apply.
    pause = {**form_of(shown.text), "target": "schedule", "action": "pause", "id": "nightly"}
    await client.post(url + "/act", data=pause)
    assert (await backend.schedule_storage.get_schedule("nightly")).status == "paused"
    unknown = {**form_of(shown.text), "target": "task", "action": "explode", "id": ids["done"]}
    assert (await client.post(url + "/act", data=unknown)).status_code == 404


async def test_read_only_offers_no_action(
    backend: PostgreSQLBackend, omniq: Processes, client: httpx.AsyncClient
) -> None:
    ids = await seed(backend)
    url = await start(omniq, "--read-only")
    for path in ("/", "/tasks", f"/tasks/{ids['failed']}", "/schedules", "/workers"):
        page = await client.get(url + path)
        assert page.status_code == 200 and "read-only" in page.text
        assert "/act" not in page.text and "data-action" not in page.text
        assert 'name="do"' not in page.text and 'name="id"' not in page.text
    post = await client.post(url + "/act", data={"target": "task", "action": "retry"})
    assert post.status_code in (404, 405)


async def test_credentials_from_the_environment(
    backend: PostgreSQLBackend, omniq: Processes, client: httpx.AsyncClient
) -> None:
    env = {"OMNIQ_DASHBOARD_TOKEN": TOKEN, "OMNIQ_DASHBOARD_USER": "ops",
           "OMNIQ_DASHBOARD_PASSWORD": "s3cret pass"}  # fmt: skip
    url = await start(omniq, env=env)
    for path in ("/", "/tasks", "/metrics", "/events"):
        refused = await client.get(url + path)
        assert refused.status_code == 401, path
    assert refused.headers["www-authenticate"].startswith("Basic")
    assert (await client.get(url + "/healthz")).status_code == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.get(url + "/metrics", headers=bearer)).status_code == 200
    assert (await client.get(url + "/", auth=("ops", "s3cret pass"))).status_code == 200
    assert (await client.get(url + "/", auth=("ops", "wrong"))).status_code == 401
    assert (
        await client.get(url + "/", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    login = await client.get(url + "/tasks", params={"token": TOKEN, "status": "failed"})
    assert login.status_code == 303 and login.headers["location"] == "/tasks?status=failed"
    assert (
        "omniq_session" in login.headers["set-cookie"] and TOKEN not in login.headers["set-cookie"]
    )
    assert (await client.get(url + "/tasks")).status_code == 200  # the cookie now


async def test_where_it_listens(omniq: Processes, client: httpx.AsyncClient) -> None:
    refused = omniq.start("dashboard", "--bind", "0.0.0.0:0")
    assert await refused.exited(timeout=60) == 1
    assert "refusing to listen on 0.0.0.0" in refused.output()
    assert "OMNIQ_DASHBOARD_TOKEN" in refused.output()
    short = omniq.start("dashboard", env={"OMNIQ_DSN": omniq.dsn, "OMNIQ_DASHBOARD_TOKEN": "x"})
    assert await short.exited(timeout=60) == 1 and "too short" in short.output()
    bad = omniq.start("dashboard", "--bind", "8765")
    assert await bad.exited(timeout=60) == 1 and "HOST:PORT" in bad.output()

    url = await start(omniq)  # loopback: a page of another site cannot reach it by DNS rebinding
    rebound = await client.get(url + "/", headers={"Host": "attacker.example:8765"})
    assert rebound.status_code == 421
    assert (await client.get(url + "/", headers={"Host": "localhost"})).status_code == 200


class Stream:
    """One browser's event stream, read in the background."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.events: list[tuple[str, Any]] = []
        self._task = asyncio.ensure_future(self._read(client, url))

    async def _read(self, client: httpx.AsyncClient, url: str) -> None:
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            name = "message"
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    self.events.append((name, orjson.loads(line[6:])))

    def last(self, name: str) -> Any:
        found = [data for event, data in self.events if event == name]
        return found[-1] if found else None

    async def until(self, check: Callable[[Stream], Any], what: str) -> Any:
        return await wait_until(lambda: check(self), 30, what)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_live_updates_come_from_one_listen_connection(
    backend: PostgreSQLBackend, omniq: Processes, client: httpx.AsyncClient, admin: Any
) -> None:
    ids = await seed(backend)
    url = await start(omniq)
    streams = [
        Stream(client, f"{url}/events?views=overview&watch={ids['pending']}") for _ in range(3)
    ]
    try:
        for s in streams:  # a new browser gets the shared state at once
            await s.until(lambda s: s.last("counts") and s.last("fragments"), "first push")
        listeners = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'omniq-listener'"
            " AND query LIKE '%' || left(md5($1), 12) || '%'",
            backend.config.schema,
        )
        assert listeners == 1

        await backend.task_queue.enqueue_many(
            [Task(func="app.x", queue_name="reports") for _ in range(5)]
        )
        for s in streams:
            # The push the NOTIFY causes names the queue. A refresh of another cause (the tick,
            # a new subscriber) may show the new count first, without it: wait for both.
            await s.until(
                lambda s: (s.last("counts") or {}).get("queues", {}).get("reports", {}).get(
                    "ready") == 6 and "reports" in (s.last("arrived") or ()),
                "the new ready count, and reports named as arrived"
            )  # fmt: skip
            assert "reports" in s.last("fragments")["queues"]

        (task,) = await backend.task_queue.dequeue_many("reports", 1, worker_id="w-seed")
        assert task.id == ids["pending"]
        await WorkerProtocol(backend).finish([outcome(task, "success")], "w-seed")
        for s in streams:
            await s.until(lambda s: (s.last("tasks") or {}).get(ids["pending"]) == "completed",
                          "the watched task's new state")  # fmt: skip
    finally:
        for s in streams:
            await s.close()


async def test_stops_at_once_with_streams_open(
    backend: PostgreSQLBackend, omniq: Processes, client: httpx.AsyncClient
) -> None:
    url = await start(omniq)
    process: OmniqProcess = omniq.started[-1]
    stream = Stream(client, f"{url}/events?views=overview")
    try:
        await stream.until(lambda s: s.events, "the stream to open")
        process.send(signal.SIGTERM)
        await process.exited(timeout=15)
    finally:
        await stream.close()


async def test_the_hours_throughput_is_read_once_then_by_the_minute(
    backend: PostgreSQLBackend,
) -> None:
    from omniq.dashboard.app import RecentThroughput

    seen: list[datetime] = []
    monitor = backend.monitor
    original = monitor.throughput

    async def recorded(since: datetime) -> list[dict[str, Any]]:
        seen.append(since)
        return await original(since)

    monitor.throughput = recorded  # type: ignore[method-assign]
    await backend.task_queue.enqueue_many([Task(func="app.t", queue_name="t") for _ in range(3)])
    for _ in range(2):
        (task,) = await backend.task_queue.dequeue_many("t", 1, worker_id="w")
        await WorkerProtocol(backend).finish([outcome(task, "success")], "w")
    recent = RecentThroughput()
    assert sum(r["tasks"] for r in await recent.rows(monitor)) == 2
    (task,) = await backend.task_queue.dequeue_many("t", 1, worker_id="w")
    await WorkerProtocol(backend).finish([outcome(task, "success")], "w")
    assert sum(r["tasks"] for r in await recent.rows(monitor)) == 3
    first, second = seen
    assert first <= datetime.now(UTC) - timedelta(minutes=59)  # the whole hour, once
    assert second >= datetime.now(UTC) - timedelta(minutes=2, seconds=5)  # then the last minutes
