"""The CI rules, run for real: a pytest session with the skip rule (tests/support/ci.py) on a
small test file, with and without the CI variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO

SKIPPING = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("needs a server of its own")

@pytest.mark.skipif(True, reason="not on this machine")
def test_marked():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    raise AssertionError("still broken")
"""
SKIPPING_MODULE = 'import pytest\npytest.skip("no such tool", allow_module_level=True)\n'


def session(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_case.py"
    test.write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.support.ci", "-p", "no:cacheprovider",
         "-q", "-rA", "--rootdir", str(tmp_path), "-c", os.devnull, str(test)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_skip_fails_in_ci_with_its_reason(tmp_path: Path) -> None:
    done = session(tmp_path, SKIPPING, ci="true")
    assert done.returncode == 1, done.stdout + done.stderr
    # a skip in the test fails it; a skip while setting it up (skipif) is an error
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in done.stdout, done.stdout
    assert (
        "skipped in CI, which counts as a failure: Skipped: needs a server of its own"
        in done.stdout
    )
    assert "skipped in CI, which counts as a failure: Skipped: not on this machine" in done.stdout


def test_a_module_that_skips_itself_fails_in_ci(tmp_path: Path) -> None:
    done = session(tmp_path, SKIPPING_MODULE, ci="1")
    assert done.returncode != 0, done.stdout + done.stderr
    assert "skipped in CI, which counts as a failure: Skipped: no such tool" in done.stdout


def test_outside_ci_a_skip_stays_a_skip(tmp_path: Path) -> None:
    for ci in (None, "", "false"):
        done = session(tmp_path, SKIPPING, ci=ci)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 passed, 2 skipped, 1 xfailed" in done.stdout, done.stdout
