"""``omniq dashboard``: the web dashboard, served by uvicorn (the optional extra omniq[dashboard])."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ..backend.postgres import PostgreSQLBackend
from .common import CommandError, add_command
from .options import config_from_args

DESCRIPTION = """\
Serve the web dashboard: queues, tasks, task details, schedules and workers, updated live
from one LISTEN connection, with actions (retry, cancel, delete, pause/resume a schedule,
bulk actions on a filtered selection) and Prometheus gauges at /metrics.

It listens on 127.0.0.1:8765 unless told otherwise. Access needs credentials when they are
set in the environment, and listening beyond this machine needs them:
  OMNIQ_DASHBOARD_TOKEN                             a token: Authorization: Bearer TOKEN, or
                                                    open http://HOST:PORT/?token=TOKEN once
  OMNIQ_DASHBOARD_USER and OMNIQ_DASHBOARD_PASSWORD  basic auth (the browser asks)
Put it behind a TLS proxy when it is reachable from other machines."""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(
        commands, "dashboard", run_dashboard, "serve the web dashboard", DESCRIPTION
    )
    parser.add_argument(
        "--bind",
        default="127.0.0.1:8765",
        metavar="HOST:PORT",
        help="address to listen on (default: 127.0.0.1:8765; port 0 picks a free one)",
    )
    parser.add_argument("--read-only", action="store_true", help="show everything, offer no action")


def run_dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..dashboard import Access, ConfigurationError, Settings, create_app
        from ..dashboard.security import check_bind, parse_bind
    except ImportError as exc:
        raise CommandError(
            f"the dashboard needs its optional packages ({exc.name} is missing): "
            "pip install 'omniq[dashboard]'"
        ) from None
    try:
        access = Access.from_env()
        host, port = parse_bind(args.bind)
        check_bind(host, access)
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None

    backend = PostgreSQLBackend(config_from_args(args, min_connections=1, max_connections=5))
    app = create_app(Settings(backend, access, read_only=args.read_only, host=host))
    hub = app.state.dashboard.hub
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                self._loop = asyncio.get_running_loop()
                where = self.servers[0].sockets[0].getsockname()
                url = f"http://{f'[{where[0]}]' if ':' in where[0] else where[0]}:{where[1]}/"
                mode = ", read-only" if args.read_only else ""
                auth = ", credentials required" if access.required else ""
                print(
                    f"omniq dashboard on {url} (schema {backend.config.schema}{mode}{auth}); "
                    "Ctrl-C stops it",
                    flush=True,
                )

        def handle_exit(self, sig: int, frame: Any) -> None:
            loop = getattr(self, "_loop", None)
            if loop is not None:  # end the event streams first, or shutdown waits for them
                loop.call_soon_threadsafe(hub.end_streams)
            super().handle_exit(sig, frame)

    server = Server(config)

    async def main() -> None:
        await backend.connect()  # a database problem is reported here, in one line
        try:
            await server.serve()
        finally:
            await backend.close()

    asyncio.run(main())
    if not server.started:
        print(f"omniq: error: could not serve on {args.bind} (see above)", file=sys.stderr)
        return 1
    return 0
