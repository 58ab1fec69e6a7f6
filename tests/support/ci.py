"""The rule that a skip fails in CI, as a pytest plugin: ``tests/conftest.py`` imports its hooks,
and ``pytest -p tests.support.ci`` loads it anywhere else.

In CI (the ``CI`` variable set, as every CI service sets it) a skipped test is reported as
failed, with the skip's reason: a guard that quietly skips (the schema snapshot check, the
specification's examples) guards nothing. Locally a skip stays a skip.
"""

from __future__ import annotations

import os
from typing import Any

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci():  # a module that skips itself as a whole
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {_reason(report)}"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, "Skipped: why")
        return f"{longrepr[2]} ({longrepr[0]}:{longrepr[1]})"
    return str(longrepr)
