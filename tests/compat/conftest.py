"""Fixtures of the compatibility tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.db import drop_schemas, unique_schema


@pytest.fixture
async def scratch_schema(pg_dsn: str) -> AsyncIterator[str]:
    """A schema name of the test's own, dropped afterwards with whatever was made in it."""
    name = unique_schema("compat")
    yield name
    await drop_schemas(pg_dsn, name)
