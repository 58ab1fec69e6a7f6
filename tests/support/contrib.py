"""Tests that need PostgreSQL's contrib modules, as a pytest plugin: ``tests/conftest.py``
imports its hooks.

``auto_explain`` (plans of the statements inside the stored functions) and
``pg_stat_statements`` come with Debian's PostgreSQL, not with every build: the pgserver wheel's
PostgreSQL 16 has neither. Tests marked ``contrib`` are left
out of a run whose server binaries lack them, and the run says so; they run on PostgreSQL 15.
Against a server of ``OMNIQ_TEST_DSN`` (binaries unknown) nothing is left out.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest

from omniq.embedded import find_bindir, has_module

MODULES = ("auto_explain", "pg_stat_statements")
_LEFT_OUT = pytest.StashKey[tuple[int, list[str]]]()


@functools.cache
def missing_modules() -> tuple[str, ...]:
    """The contrib modules the test server's binaries lack (none known for an external server)."""
    if os.environ.get("OMNIQ_TEST_DSN"):
        return ()
    try:
        bindir = find_bindir()
    except RuntimeError:
        return ()
    return tuple(m for m in MODULES if not has_module(bindir, m))


def server_has(module: str) -> bool:
    return module not in missing_modules()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = missing_modules()
    if not missing:
        return
    left_out = [item for item in items if item.get_closest_marker("contrib")]
    if left_out:
        items[:] = [item for item in items if not item.get_closest_marker("contrib")]
        config.hook.pytest_deselected(items=left_out)
        config.stash[_LEFT_OUT] = (len(left_out), list(missing))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if _LEFT_OUT in config.stash:
        count, missing = config.stash[_LEFT_OUT]
        terminalreporter.write_line(
            f"{count} test(s) marked contrib left out: these PostgreSQL binaries "
            f"({find_bindir()}) lack {', '.join(missing)}; they run on PostgreSQL 15"
        )
