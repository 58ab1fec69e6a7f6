"""A rolling deploy, for real (issue 11): the previous release's worker and producer run against
a database that HEAD migrated, while HEAD's worker and producer run too.

The previous release (tests/compat/baseline.py, by commit) is built from this repository's own
history with no network: `git archive`, a wheel built by the main virtualenv's pip
(--no-build-isolation --no-deps), installed into a virtualenv of its own whose third-party
packages come from the main virtualenv's site-packages through a .pth file.

Tasks of every kind (plain, with dependencies, with callbacks, failing once then retried) go to
three queues: one only the old worker serves, one only HEAD's, one both. Each release enqueues
some, and children depend on the other release's tasks. Every task must complete exactly once
(one successful run, one result), and neither side may log an error. Both releases' workers
record outcomes through the same omniq_finish_tasks_v1, which stores no `completed` event since
issue 12 (the history derives it from the result): none is stored, whoever ran the task.
"""

# ruff: noqa: S608 (SQL on the test's own schema names)

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.compat.baseline import BASELINE_COMMIT

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")


def git(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, **kwargs)


def build_release(commit: str, into: Path) -> Path:
    """The release at ``commit`` in a virtualenv of its own under ``into``; its python."""
    source, wheels, venv = into / "source", into / "wheels", into / "venv"
    source.mkdir(parents=True)
    archive = git("archive", "--format=tar", commit, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "-q",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    (wheel,) = wheels.glob("omniq-*.whl")
    subprocess.run(
        [*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # asyncpg, aiosql, orjson, croniter: the main virtualenv's (a .pth line adds a directory to
    # sys.path after the release's own site-packages; the .pth files in it are not processed,
    # so HEAD's editable install of omniq stays out).
    (Path(purelib) / "omniq-compat-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def baseline_python() -> Path:
    """The baseline release's interpreter, built once per commit and kept in the temp dir."""
    found = git("rev-parse", "--verify", "--quiet", f"{BASELINE_COMMIT}^{{commit}}")
    if found.returncode != 0:
        pytest.fail(
            f"the baseline release {BASELINE_COMMIT} (tests/compat/baseline.py) is not in this "
            "repository's history. CI clones main with its history; in a shallow clone run "
            "`git fetch --unshallow`. If the release was rewritten, record its new commit there."
        )
    tag = f"{BASELINE_COMMIT[:12]}-py{sys.version_info.major}{sys.version_info.minor}"
    cache = Path(tempfile.gettempdir()) / f"omniq-compat-{tag}"
    python = cache / "venv" / "bin" / "python"
    if not (cache / "ready").exists():
        building = Path(tempfile.mkdtemp(prefix=f"omniq-compat-{tag}-"))
        build_release(BASELINE_COMMIT, building)
        shutil.rmtree(cache, ignore_errors=True)
        building.rename(cache)  # bin/python finds its venv by its own path: moving is fine
        (cache / "ready").write_text(BASELINE_COMMIT)
    return python


class Side:
    """One release: its interpreter, run from a scratch directory holding the task module."""

    def __init__(self, name: str, python: Path | str, work: Path, env: dict[str, str]) -> None:
        self.name, self.python, self.work, self.env = name, str(python), work, env
        self.workers: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._outputs: list[Any] = []

    def run(self, *args: str) -> str:
        result = subprocess.run(
            [self.python, *args], cwd=self.work, env=self.env, capture_output=True, text=True,
            timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 0, f"{self.name}: {args}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def produce(self, dsn: str, schema: str, tag: str, parents: list[str]) -> dict[str, Any]:
        return json.loads(self.run(str(HERE / "producer.py"), dsn, schema, tag, *parents))

    def start_worker(self, dsn: str, schema: str, queues: str, log: Path) -> None:
        out = log.open("wb")
        self._outputs.append(out)
        proc = subprocess.Popen(
            [self.python, "-m", "omniq", "worker", "--dsn", dsn, "--schema", schema,
             "--queues", queues, "--concurrency", "4"],
            cwd=self.work, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.workers.append((proc, log))

    def stop_workers(self) -> list[int]:
        for proc, _ in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc, _ in self.workers:
            try:
                codes.append(proc.wait(timeout=60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        for out in self._outputs:
            out.close()
        return codes

    def logs(self) -> str:
        return "".join(log.read_text(errors="replace") for _, log in self.workers)


@pytest.fixture
def sides(baseline_python: Path, tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(HERE / "compat_jobs.py", work)
    runs = tmp_path / "runs"
    runs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "OMNIQ_", "PYTEST_"))}
    env |= {"PYTHONUNBUFFERED": "1", "OMNIQ_COMPAT_RUNS": str(runs)}
    old = Side("previous release", baseline_python, work, env)
    head = Side("HEAD", sys.executable, work, env)
    try:
        yield old, head
    finally:
        old.stop_workers()
        head.stop_workers()


def runs_of(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


async def test_previous_release_and_head_run_side_by_side(
    pg_dsn: str, scratch_schema: str, sides: tuple[Side, Side], baseline_python: Path
) -> None:
    old, head = sides
    schema_name = scratch_schema
    # The previous release really is the one built from history, not HEAD.
    old_file = old.run("-c", "import omniq; print(omniq.__file__)").strip()
    assert old_file.startswith(str(baseline_python.parents[1])), old_file
    assert head.run("-c", "import omniq; print(omniq.__file__)").startswith(str(REPO))

    # HEAD migrates the database (a deploy step), then both releases run side by side.
    head.run("-m", "omniq", "migrate", "--dsn", pg_dsn, "--schema", schema_name)
    old.start_worker(pg_dsn, schema_name, "compat-old,compat-shared", old.work / "old-worker.log")
    head.start_worker(
        pg_dsn, schema_name, "compat-new,compat-shared", head.work / "head-worker.log"
    )

    first = old.produce(pg_dsn, schema_name, "old", [])
    second = head.produce(pg_dsn, schema_name, "head", first["parents"])
    third = old.produce(pg_dsn, schema_name, "old-again", second["parents"])
    batches = {"previous release": first["tasks"] + third["tasks"], "HEAD": second["tasks"]}
    tasks = [t for batch in batches.values() for t in batch]
    callbacks = [t for t in tasks if t["kind"] == "with-callback"]
    expected = len(tasks) + len(callbacks)  # each callback is a task of its own

    conn = await asyncpg.connect(pg_dsn)
    try:
        count = f"SELECT status, count(*) FROM {schema_name}.tasks GROUP BY status"
        deadline = time.monotonic() + 180
        while True:
            statuses = dict(await conn.fetch(count))
            if statuses.get("completed", 0) == expected:
                break
            assert not {"failed", "cancelled", "expired"} & set(statuses), (
                statuses,
                old.logs(),
                head.logs(),
            )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"not all {expected} tasks completed: {statuses}\n{old.logs()}\n{head.logs()}"
                )
            await asyncio.sleep(0.2)
        results = dict(
            await conn.fetch(f"SELECT status, count(*) FROM {schema_name}.results GROUP BY status")
        )
        completed_events = Counter(
            r["task_id"]
            for r in await conn.fetch(
                f"SELECT task_id FROM {schema_name}.events WHERE event_type = 'completed'"
            )
        )
        callback_ids = {
            r["id"]
            for r in await conn.fetch(
                f"SELECT id FROM {schema_name}.tasks WHERE id LIKE '%@on_success'"
            )
        }
    finally:
        await conn.close()
    codes = old.stop_workers() + head.stop_workers()

    runs = runs_of(old.work.parent / "runs")
    by_key = Counter(r["key"] for r in runs if r["ok"])
    failed_runs = Counter(r["key"] for r in runs if not r["ok"])
    old_runs = [r for r in runs if r["omniq"].startswith(str(baseline_python.parents[1]))]
    duplicates = {key: n for key, n in by_key.items() if n > 1}
    figures = {
        side: {"enqueued": len(batch), "kinds": dict(Counter(t["kind"] for t in batch))}
        for side, batch in batches.items()
    }
    old_errors = [line for line in old.logs().splitlines() if ERROR_LINE.search(line)]
    head_errors = [line for line in head.logs().splitlines() if ERROR_LINE.search(line)]
    print(
        f"\nbaseline {BASELINE_COMMIT[:12]}: {json.dumps(figures)}; tasks completed {expected} "
        f"(callbacks {len(callbacks)}); successful runs {sum(by_key.values())} (by the previous "
        f"release {sum(r['ok'] for r in old_runs)}, by HEAD "
        f"{sum(by_key.values()) - sum(r['ok'] for r in old_runs)}); failed first runs retried "
        f"{sum(failed_runs.values())}; duplicate runs {len(duplicates)}; errors logged "
        f"{len(old_errors)} + {len(head_errors)}"
    )

    assert codes == [0, 0], (codes, old.logs(), head.logs())
    assert old_errors == [] and head_errors == [], (old_errors, head_errors)
    assert duplicates == {}, duplicates
    assert results == {"success": expected}
    assert completed_events == Counter()  # derived from the results, for both releases
    wanted = {t["key"] for t in tasks} | {f"callback:{t['id']}" for t in callbacks}
    assert set(by_key) == wanted
    assert failed_runs == Counter({t["key"]: 1 for t in tasks if t["kind"] == "retried"})
    assert len(callback_ids) == len(callbacks)
    # Both releases ran tasks of both releases' producers (their own queues guarantee it).
    ran_by_old = {r["key"] for r in old_runs}
    ran_by_head = {r["key"] for r in runs if r not in old_runs}
    for batch in batches.values():
        keys = {t["key"] for t in batch}
        assert keys & ran_by_old and keys & ran_by_head
