"""Each worker's OmniQ version: sent by its heartbeat (omniq_heartbeat_v2, migration 0013),
read by backend.monitor.workers() for the dashboard and omniq status; the previous release's
heartbeat (omniq_heartbeat_v1, kept for rolling deploys) registers it as unknown."""

from __future__ import annotations

import asyncio

import omniq
from omniq.backend.postgres import PostgreSQLBackend
from omniq.backend.postgres.protocol import Registration, WorkerProtocol
from omniq.identifiers import quote_identifier
from omniq.worker import AsyncWorker
from tests.support.db import Database
from tests.support.processes import wait_until


async def test_a_running_worker_shows_its_version(backend: PostgreSQLBackend) -> None:
    worker = AsyncWorker(backend, ["default"], worker_id="w-v", install_signal_handlers=False)
    running = asyncio.ensure_future(worker.run())
    try:
        found = await wait_until(backend.monitor.workers, 60, "the worker registered")
        assert [(w["id"], w["version"]) for w in found] == [("w-v", omniq.__version__)]
    finally:
        worker.stop()
        await asyncio.wait_for(running, 60)


async def test_the_previous_releases_heartbeat_leaves_it_unknown(
    backend: PostgreSQLBackend, protocol: WorkerProtocol, db: Database
) -> None:
    s = quote_identifier(db.schema)
    await db.execute(
        f"SELECT {s}.omniq_heartbeat_v1('old', 'h', 1, ARRAY['default'], 2, ARRAY[]::text[],"  # noqa: S608
        " interval '30 seconds')"
    )
    await protocol.heartbeat(Registration("new", "h", 2, ["default"], 2, version="1.2.3"))
    versions = {w["id"]: w["version"] for w in await backend.monitor.workers()}
    assert versions == {"old": None, "new": "1.2.3"}
    # the same worker upgraded in place (a restart under its id): the new heartbeat says so
    await protocol.heartbeat(Registration("old", "h", 1, ["default"], 2, version="1.2.3"))
    assert {w["version"] for w in await backend.monitor.workers()} == {"1.2.3"}
    # and a downgrade back to the previous release clears it rather than keeping a stale one
    await db.execute(
        f"SELECT {s}.omniq_heartbeat_v1('old', 'h', 1, ARRAY['default'], 2, ARRAY[]::text[],"  # noqa: S608
        " interval '30 seconds')"
    )
    versions = {w["id"]: w["version"] for w in await backend.monitor.workers()}
    assert versions == {"old": None, "new": "1.2.3"}
