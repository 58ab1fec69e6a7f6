"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright through its
executable (no downloaded browser). Each screen loads, the task list filters, a task opens, a
failed task retried from its page completes before our eyes (a real worker, no reload), a
read-only dashboard offers no action, and credentials are asked for when configured."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from omniq.backend.postgres import PostgreSQLBackend
from omniq.models.task import Task
from tests.support.abort_jobs import started
from tests.support.dashboard import TOKEN, seed, start
from tests.support.processes import Processes, wait_until

CHROMIUM = os.environ.get("OMNIQ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Playwright adds --headless and a fresh --user-data-dir (a temporary profile) itself.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
WAIT = 30_000  # ms: generous, the machine is shared


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is missing ({CHROMIUM}): the dashboard's browser tests need Debian's "
            "chromium package (scripts/test installs it when run as root: apt-get install chromium)"
        )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield page
    await context.close()
    expected = "Failed to load resource: the server responded with a status of 401"
    unexpected = [e for e in errors if not e.startswith(expected)]  # the credentials test's
    assert unexpected == [], f"the page logged errors: {unexpected}"


async def test_each_screen_filter_and_open_a_task(
    backend: PostgreSQLBackend, omniq: Processes, page: Page
) -> None:
    ids = await seed(backend)
    url = await start(omniq)

    await page.goto(url + "/")
    await expect(page.locator("#live")).to_have_text("live", timeout=WAIT)
    queues = page.locator("#queues tbody tr")
    await expect(queues).to_have_count(2)
    await expect(queues.first).to_contain_text("mail")
    await expect(page.locator("#chart svg")).to_be_visible()
    await expect(page.locator("#workers")).to_contain_text("w-seed")
    await expect(page.locator("#schedules")).to_contain_text("nightly")

    await page.get_by_role("link", name="Tasks", exact=True).click()
    await expect(page.locator("table.tasks tbody tr")).to_have_count(4)
    await page.locator(".tabs a", has_text="failed").click()
    await expect(page.locator("table.tasks tbody tr")).to_have_count(1)
    await page.get_by_label("Queue").fill("reports")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("p.empty")).to_contain_text("No tasks match")
    assert "queue=reports" in page.url and "status=failed" in page.url
    await page.locator(".tabs a", has_text="All").click()
    await expect(page.locator("table.tasks tbody tr")).to_have_count(2)
    await page.get_by_label("Search").fill("")
    await page.get_by_label("Queue").fill("")
    await page.get_by_label("Search").fill("smtp said")  # a piece of an error, any case
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("table.tasks tbody tr")).to_have_count(1)

    await page.get_by_role("link", name=ids["failed"]).click()
    await expect(page.locator("#task-head .badge")).to_have_text("failed")
    await expect(page.locator("main")).to_contain_text("SMTPError")
    await expect(page.locator("pre.tb").first).to_contain_text("Traceback (most recent call last)")

    await page.locator("header nav").get_by_role("link", name="Schedules").click()
    await expect(page.locator("#schedules")).to_contain_text("cron 0 3 * * *")
    await page.locator("header nav").get_by_role("link", name="Workers").click()
    await expect(page.locator("#workers")).to_contain_text("box")


async def test_retry_a_failed_task_and_see_it_complete_live(
    backend: PostgreSQLBackend, omniq: Processes, page: Page, tmp_path: Path
) -> None:
    trace = tmp_path / "attempts"
    task = Task(
        func="tests.support.jobs.flaky", args=(str(trace), 1), queue_name="live", max_retries=0
    )
    await backend.task_queue.enqueue(task)
    burst = omniq.start("worker", "--queues", "live", "--burst", "--no-scheduler")
    assert await burst.exited(timeout=60) == 0
    assert (await backend.task_queue.get_task(task.id)).status == "failed"
    url = await start(omniq)

    await page.goto(f"{url}/tasks/{task.id}")
    await expect(page.locator("#live")).to_have_text("live", timeout=WAIT)
    await page.evaluate("window.notReloaded = true")
    await page.get_by_role("button", name="Retry").click()
    await expect(page.locator(".flash")).to_have_text("1 of 1 task retried.")
    await expect(page.locator("#task-head .badge")).to_have_text("pending")  # no worker yet
    await expect(page.locator("#live")).to_have_text("live", timeout=WAIT)
    await page.evaluate("window.notReloaded = true")

    await omniq.worker("--queues", "live", "--no-scheduler")
    await expect(page.locator("#task-head .badge")).to_have_text("completed", timeout=WAIT)
    await expect(page.locator("main")).to_contain_text("completed")
    assert await page.evaluate("window.notReloaded") is True  # updated in place, not reloaded
    attempts = page.locator("section:has(h2:text-is('Attempts')) tbody tr")
    await expect(attempts).to_have_count(2)
    await expect(attempts.first).to_contain_text("attempt 1 of 2 fails on purpose")


async def test_abort_a_running_task_from_its_page(
    backend: PostgreSQLBackend, omniq: Processes, page: Page, tmp_path: Path
) -> None:
    """A running async task (a real worker) aborted with its page's button, after the browser's
    confirmation: it ends cancelled before our eyes, its result naming who asked."""
    path = tmp_path / "started"
    task = Task(func="tests.support.abort_jobs.sleeper", args=(str(path),), queue_name="live")
    await backend.task_queue.enqueue(task)
    await omniq.worker("--queues", "live", "--no-scheduler")
    await wait_until(lambda: started(path), 60, "the task to start")
    url = await start(omniq)

    await page.goto(f"{url}/tasks/{task.id}")
    await expect(page.locator("#task-head .badge")).to_have_text("running")
    await expect(page.get_by_role("button", name="Cancel")).to_have_count(0)  # not for running

    async def accept(dialog: Any) -> None:
        assert dialog.message.startswith("Abort? Its worker stops it now")
        await dialog.accept()

    page.once("dialog", accept)
    await page.get_by_role("button", name="Abort").click()
    await expect(page.locator(".flash")).to_have_text("1 of 1 task aborted.")
    await expect(page.locator("#task-head .badge")).to_have_text("cancelled", timeout=WAIT)
    await expect(page.locator("main")).to_contain_text(
        "aborted by dashboard: aborted from the dashboard"
    )
    await expect(page.get_by_role("button", name="Abort")).to_have_count(0)
    await page.screenshot(path=str(tmp_path / "aborted.png"), full_page=True)


async def test_read_only_dashboard_shows_no_actions(
    backend: PostgreSQLBackend, omniq: Processes, page: Page
) -> None:
    ids = await seed(backend)
    url = await start(omniq, "--read-only")
    for path in (f"/tasks/{ids['failed']}", "/tasks?status=failed", "/schedules", "/"):
        await page.goto(url + path)
        await expect(page.locator(".pill.ro")).to_have_text("read-only")
        await expect(page.locator("main")).to_be_visible()
        assert await page.locator("main button:not(.primary)").count() == 0, path
        assert await page.locator("main input[type=checkbox]").count() == 0, path
        assert await page.locator("form[method=post]").count() == 0, path


async def test_credentials_are_asked_for(omniq: Processes, page: Page, backend: Any) -> None:
    url = await start(omniq, env={"OMNIQ_DASHBOARD_TOKEN": TOKEN})
    refused = await page.goto(url + "/")
    assert refused is not None and refused.status == 401
    await expect(page.locator("body")).to_contain_text("needs a token")
    await page.goto(f"{url}/?token={TOKEN}")
    assert "token" not in page.url
    await expect(page.locator("#live")).to_have_text("live", timeout=WAIT)  # the stream too
    await page.locator("header nav").get_by_role("link", name="Workers").click()
    await expect(page.locator("h2")).to_have_text("Workers")
