"""Shared fixtures. The suite starts its own PostgreSQL unless OMNIQ_TEST_DSN names one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import pytest

from omniq.embedded import EmbeddedPostgres


@dataclass
class ExternalServer:
    """Stands in for EmbeddedPostgres when tests run against a server we don't control."""

    dsn: str

    def restart(self, mode: str = "fast") -> NoReturn:
        pytest.skip("needs an embedded server")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres | ExternalServer]:
    """One PostgreSQL for the whole session: OMNIQ_TEST_DSN, or a throwaway embedded one."""
    external = os.environ.get("OMNIQ_TEST_DSN")
    if external:
        yield ExternalServer(external)
        return
    with EmbeddedPostgres(durable=True) as server:  # stop() also deletes its temp data dir
        yield server


@pytest.fixture(scope="session")
def pg_dsn(pg_server: EmbeddedPostgres | ExternalServer) -> str:
    return pg_server.dsn


# --------------------------------------------------------------------------------------
# Fixtures owned by other parts of OmniQ go below this line (schema/migrations, pools,
# queue clients...). Build them on `pg_dsn`; use `pg_server.restart()` only in tests
# that may be skipped, since it skips against an external OMNIQ_TEST_DSN server.
# --------------------------------------------------------------------------------------
