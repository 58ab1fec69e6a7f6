"""scripts/unasync: the ``_sync`` twins are source generated from the async methods, and its
``--check`` fails when they are stale (scripts/check runs it, so CI does)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from omniq.backend.postgres.sqlfiles import SQL_DIR

ROOT = SQL_DIR.parents[1]
PACKAGE = ROOT / "omniq" / "backend" / "postgres"
NEW_METHOD = '''
    async def count_events(self, task_id: str, *, queue_name: str | None = None) -> int:
        """A method added to the async class."""
        return 0
'''


def unasync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_generated_twins_are_current() -> None:
    done = unasync("--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_new_async_method_makes_the_check_fail_until_regenerated(tmp_path: Path) -> None:
    copy = tmp_path / "postgres"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    events = copy / "events.py"
    text = events.read_text()
    anchor = "\n\nclass PostgresEventStorage("
    events.write_text(text.replace(anchor, NEW_METHOD + anchor, 1))

    stale = unasync("--check", "--package", str(copy))
    assert stale.returncode == 1
    assert "+    def count_events_sync(" in stale.stdout
    assert "stale sync twins in" in stale.stdout and "events.py" in stale.stdout

    assert unasync("--package", str(copy)).returncode == 0
    assert unasync("--check", "--package", str(copy)).returncode == 0
    generated = events.read_text()
    assert (
        "    def count_events_sync(self, task_id: str, *, queue_name: str | None = None) -> int:\n"
        '        """Blocking form of :meth:`count_events` (same arguments and result)."""\n'
        "        return run_on(self._sync_loop(), self.count_events(task_id, queue_name=queue_name))\n"
    ) in generated
    others = {p.name for p in copy.glob("*.py") if p.read_text() != (PACKAGE / p.name).read_text()}
    assert others == {"events.py"}
