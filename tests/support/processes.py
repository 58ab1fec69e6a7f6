"""Real `python -m omniq ...` processes for the worker and scheduler tests, always bounded in time.

Every process started through :class:`Processes` is killed (SIGKILL) when the test ends, whatever
happened; every wait takes a timeout and fails with the process's log in the message.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# The working directory of worker processes: the repository root, so that the task functions
# import as ``tests.support.jobs.<name>`` (as a project's own modules do under ``omniq worker``).
REPO = Path(__file__).resolve().parents[2]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without the variables that would pick another server or schema."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "OMNIQ_", "PYTEST_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env | (extra or {})


class OmniqProcess:
    """One ``python -m omniq <command>``; output goes to a log file the test can read."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omniq", *argv],
            cwd=REPO,
            env=child_env(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def send(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def exited(self, timeout: float) -> int:
        """Wait for the process to exit; its exit code. Fails (with the log) after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"omniq {' '.join(self.argv[:1])} still running after {timeout}s:\n{self.output()}"
                )
            await asyncio.sleep(0.02)
        return self.proc.returncode

    async def logged(self, text: str, timeout: float = 10.0) -> None:
        """Wait until ``text`` appears in the output (e.g. the worker's start line)."""
        await wait_until(lambda: text in self.output(), timeout, f"{text!r} in the log", self)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        finally:
            self._log.close()


class Processes:
    """Starts ``omniq`` commands against one test's DSN and schema; kills them all at the end."""

    def __init__(self, dsn: str, schema: str, log_dir: Path) -> None:
        self.dsn = dsn
        self.schema = schema
        self.log_dir = log_dir
        self.started: list[OmniqProcess] = []

    def start(self, command: str, *args: str, env: dict[str, str] | None = None) -> OmniqProcess:
        """``omniq <command> --dsn <test dsn> --schema <test schema> <args>``.

        With ``env``, no --dsn/--schema: the command finds them in those variables.
        """
        where = [] if env is not None else ["--dsn", self.dsn, "--schema", self.schema]
        argv = [command, *where, *args]
        log = self.log_dir / f"{command}-{len(self.started)}.log"
        process = OmniqProcess(argv, log, env)
        self.started.append(process)
        return process

    async def worker(self, *args: str, ready: bool = True) -> OmniqProcess:
        """A worker; with ``ready`` (not for ``--burst``), return once it is waiting for tasks."""
        process = self.start("worker", *args)
        if ready:
            await process.logged(" on queues ")
        return process

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()


async def wait_until(
    check: Callable[[], Any | Awaitable[Any]],
    timeout: float,
    what: str = "condition",
    process: OmniqProcess | None = None,
    interval: float = 0.02,
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            log = f"\n--- log of omniq {process.argv[0]}:\n{process.output()}" if process else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{log}")
        await asyncio.sleep(interval)
