"""The dashboard's ASGI application (Starlette): pages, live events, actions and /metrics.

Pages are rendered on the server from ``backend.monitor`` (the read model); a small script
(static/dashboard.js) keeps them current from the event stream and never queries by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..backend.postgres import PostgreSQLBackend
from ..backend.postgres.monitor import ALL_STATUSES
from ..models._common import utcnow
from . import actions as registry
from .filters import BadFilter, TaskFilter, decode_cursor, encode_cursor
from .format import FILTERS, call
from .live import Hub
from .metrics import exposition
from .security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    Access,
    Guard,
    csrf_cookie,
    csrf_ok,
    is_loopback,
    origin_ok,
)

HERE = Path(__file__).parent
FLASH_COOKIE = "omniq_flash"
MAX_IDS = 1000  # ids one form may carry


@dataclass
class Settings:
    """How one dashboard runs: its database, who may use it, whether it may change things."""

    backend: PostgreSQLBackend
    access: Access = field(default_factory=Access)
    read_only: bool = False
    host: str = "127.0.0.1"  # where it listens: a loopback host answers loopback names only
    debounce: float = 0.25
    tick: float = 10.0


class RecentThroughput:
    """The last hour's finished tasks per minute, kept between reads: a minute that is over
    does not change, so each refresh reads only the last two minutes from the database (a
    result is stamped with its transaction's start, so one committed a little late still
    lands in the minute re-read). Retries that delete old results show once the minute
    leaves the window."""

    def __init__(self, window: timedelta = timedelta(hours=1)) -> None:
        self.window = window
        self._minutes: dict[datetime, list[dict[str, Any]]] = {}
        self._complete_before: datetime | None = None
        self._lock = asyncio.Lock()

    async def rows(self, monitor: Any) -> list[dict[str, Any]]:
        async with self._lock:
            now = utcnow()
            start = (now - self.window).replace(second=0, microsecond=0)
            since = start
            if self._complete_before is not None:
                since = max(start, self._complete_before - timedelta(minutes=1))
            fresh = await monitor.throughput(since)
            self._minutes = {m: r for m, r in self._minutes.items() if start <= m < since}
            for row in fresh:
                self._minutes.setdefault(row["minute"], []).append(row)
            self._complete_before = now.replace(second=0, microsecond=0)
            return [row for rows in self._minutes.values() for row in rows]


class Dashboard:
    """The routes' shared state: settings, templates, the live hub."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend = settings.backend
        self.read_only = settings.read_only
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
            enable_async=False,
        )
        self.templates.filters.update(FILTERS, urldecode=unquote)
        self.templates.globals.update(
            version=__version__,
            statuses=ALL_STATUSES,
            actions_for=self.actions_for,
            schema=self.backend.config.schema,
            read_only=self.read_only,
            now_utc=utcnow,
            call=call,
        )
        self.hub = Hub(self.backend, self.fragments, debounce=settings.debounce, tick=settings.tick)
        self.recent = RecentThroughput()

    async def overview_now(self) -> Any:
        monitor = self.backend.monitor
        return await monitor.overview(self.recent.window, finished=await self.recent.rows(monitor))

    def actions_for(self, target: str, state: str | None = None) -> list[registry.Action]:
        """The actions to offer for a target (in a state); none on a read-only dashboard."""
        if self.read_only:
            return []
        found = registry.for_target(target)
        return [a for a in found if state is None or a.applies(state)]

    # -- rendering ------------------------------------------------------------------------

    def html(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        token = csrf_cookie(request.cookies)
        flash = request.cookies.get(FLASH_COOKIE)
        body = self.templates.get_template(template).render(
            request=request, csrf=token, flash=flash, root=request.scope.get("root_path", ""),
            **context,
        )  # fmt: skip
        response = HTMLResponse(body, status_code=status)
        if request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict")
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE)
        return response

    def macro(self, template: str, name: str, **context: Any) -> str:
        module = self.templates.get_template(template).make_module(
            {"csrf": "", "root": "", **context}
        )
        return str(getattr(module, name)(**context))

    async def fragments(self, view: str) -> dict[str, str]:
        """The live parts of a screen, rendered once per refresh for every browser on it."""
        monitor = self.backend.monitor
        if view == "overview":
            ov = await self.overview_now()
            return {
                "queues": self.macro("_overview.html", "queue_table", ov=ov),
                "chart": self.macro("_overview.html", "chart", ov=ov),
                "workers": self.macro("_parts.html", "workers_table", workers=ov.workers,
                                      now=ov.at, compact=True),
                "schedules": self.macro("_parts.html", "schedules_table",
                                        schedules=ov.schedules, now=ov.at, compact=True),
            }  # fmt: skip
        if view == "workers":
            workers = await monitor.workers()
            return {"workers": self.macro("_parts.html", "workers_table", workers=workers)}
        schedules = await monitor.schedules(limit=500)
        return {"schedules": self.macro("_parts.html", "schedules_table", schedules=schedules)}

    # -- pages ----------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        ov = await self.overview_now()
        return self.html(request, "overview.html", page="overview", ov=ov, views="overview")

    async def tasks(self, request: Request) -> Response:
        try:
            f = TaskFilter.from_query(request.query_params)
            before = decode_cursor(request.query_params.get("before"))
        except BadFilter as exc:
            gauges = await self.backend.monitor.gauges()
            return self.html(request, "tasks.html", 400, page="tasks", f=TaskFilter(),
                             error=str(exc), rows=[], gauges=gauges, next_url=None,
                             first_page=True, listing=None)  # fmt: skip
        monitor = self.backend.monitor
        if f.search and before is None and await monitor.task_states([f.search]):
            return RedirectResponse(f"{request.scope.get('root_path', '')}/tasks/"
                                    f"{quote(f.search, safe='')}", 303)  # fmt: skip
        page = await monitor.task_page(**f.query(), before=before, limit=f.limit)
        gauges = await monitor.gauges()
        next_url = None
        if page.next_before is not None:
            next_url = "tasks?" + urlencode(
                {**f.params(), "before": encode_cursor(page.next_before)}
            )
        return self.html(
            request, "tasks.html", page="tasks", f=f, rows=page.rows, gauges=gauges,
            next_url=next_url, first_page=before is None, listing=page,
            watch=[r["id"] for r in page.rows],
        )  # fmt: skip

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        detail = await self.backend.monitor.task_detail(task_id)
        if detail is None:
            return self.html(request, "missing.html", 404, page="tasks", what="task", id=task_id)
        related = [r["id"] for r in (*detail.parents, *detail.children, *detail.callbacks)]
        return self.html(
            request, "task.html", page="tasks", d=detail, t=detail.task,
            watch=[task_id, *related], detail_id=task_id,
        )  # fmt: skip

    async def schedules(self, request: Request) -> Response:
        schedules = await self.backend.monitor.schedules(limit=500)
        return self.html(
            request, "schedules.html", page="schedules", schedules=schedules, views="schedules"
        )

    async def workers(self, request: Request) -> Response:
        workers = await self.backend.monitor.workers()
        return self.html(request, "workers.html", page="workers", workers=workers, views="workers")

    # -- live, metrics, health ------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        views = set(filter(None, request.query_params.get("views", "").split(",")))
        watch = set(request.query_params.getlist("watch"))
        return StreamingResponse(
            self.hub.stream(views, watch),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def metrics(self, request: Request) -> Response:
        body, content_type = exposition(await self.backend.monitor.gauges())
        return Response(body, media_type=content_type)

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    # -- actions --------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        form = await request.form()
        token = form.get(CSRF_FIELD)
        submitted = token if isinstance(token, str) else None  # not a file upload
        if not csrf_ok(request.cookies.get(CSRF_COOKIE), submitted) or not origin_ok(
            request.headers
        ):
            return PlainTextResponse(
                "This form's CSRF token is missing or out of date (or it came from another "
                "site). Reload the page and try again.\n",
                status_code=403,
            )
        # "do" is a bulk button's "retry" or "retry:all" (all tasks matching the filters)
        name, _, scope = str(form.get("do") or form.get("action") or "").partition(":")
        action = registry.ACTIONS.get((str(form.get("target")), name))
        if action is None:
            return PlainTextResponse(f"no action {name!r} for {form.get('target')!r}\n", 404)
        back = _local(str(form.get("next") or "/"), request)
        try:
            if scope == "all":
                f = TaskFilter.from_query(form)
                ids = await _select(self.backend, f, action)
            else:
                ids = [str(i) for i in form.getlist("id")][:MAX_IDS]
            done = 0
            for start in range(0, len(ids), registry.BULK_BATCH):
                done += await action.run(self.backend, ids[start : start + registry.BULK_BATCH])
            noun = action.target + ("" if len(ids) == 1 else "s")
            message = f"{done} of {len(ids)} {noun} {action.past}."
            if done < len(ids):
                message += f" {action.label} applies only to {', '.join(sorted(action.states))}."
            if scope == "all" and len(ids) >= registry.BULK_LIMIT:
                message += f" Stopped at {registry.BULK_LIMIT:,}: run it again for the rest."
        except (BadFilter, ValueError) as exc:
            message = f"{action.label} failed: {exc}"
        response = RedirectResponse(back, 303)
        response.set_cookie(FLASH_COOKIE, quote(message), httponly=True, samesite="strict")
        return response


async def _select(backend: PostgreSQLBackend, f: TaskFilter, action: registry.Action) -> list[str]:
    """The ids of the tasks matching a filter that the action applies to, up to BULK_LIMIT."""
    statuses = [s for s in f.statuses or ALL_STATUSES if s in action.states]
    if not statuses:
        return []
    query = {**f.query(), "status": statuses}
    ids: list[str] = []
    before = None
    while len(ids) < registry.BULK_LIMIT:
        page = await backend.monitor.task_page(**query, before=before, limit=registry.BULK_BATCH)
        ids += [r["id"] for r in page.rows]
        if page.next_before is None:
            break
        before = page.next_before
    return ids[: registry.BULK_LIMIT]


def _local(target: str, request: Request) -> str:
    """Redirect only within the dashboard (no open redirect through ``next``)."""
    root: str = request.scope.get("root_path", "")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return root + "/"
    return target


def create_app(settings: Settings) -> Starlette:
    """The dashboard as an ASGI app. Its lifespan connects the backend and starts the hub."""
    board = Dashboard(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await settings.backend.connect()
        board.hub.start()
        try:
            yield
        finally:
            await board.hub.close()
            await settings.backend.close()

    routes = [
        Route("/", board.overview),
        Route("/tasks", board.tasks),
        Route("/tasks/{task_id:path}", board.task),
        Route("/schedules", board.schedules),
        Route("/workers", board.workers),
        Route("/events", board.events),
        Route("/metrics", board.metrics),
        Route("/healthz", board.health),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    if not settings.read_only:
        routes.append(Route("/act", board.act, methods=["POST"]))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.dashboard = board
    app.add_middleware(Guard, access=settings.access, loopback_only=is_loopback(settings.host))
    return app


__all__ = ["Dashboard", "Settings", "create_app"]
