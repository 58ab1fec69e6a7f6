"""Fixtures of the acceptance tests: real ``python -m omniq`` processes on the test's schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from omniq.backend.postgres import PostgreSQLBackend
from tests.support.processes import Processes


@pytest.fixture
def omniq(
    pg_dsn: str, backend: PostgreSQLBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Processes]:
    """Start ``omniq`` commands on ``backend``'s schema; every one is killed when the test ends."""
    processes = Processes(pg_dsn, backend.config.schema, tmp_path_factory.mktemp("omniq-logs"))
    try:
        yield processes
    finally:
        processes.kill_all()
