"""The worker's structured log fields and ``--log-format json`` (the formatter; a real worker
process writing them: tests/acceptance/test_worker_metrics.py)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import orjson

import omniq.worker
from omniq import Task
from omniq.observability.logs import TASK_FIELDS, JsonFormatter, task_fields


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("omniq.worker")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args, None, extra=extra)


def test_a_task_line_is_one_json_object_with_the_task_fields() -> None:
    task = Task(func="app.jobs.send", queue_name="mail", id="t-1")
    task.attempts = 2
    line = JsonFormatter().format(record("done %s in %.1f ms", "t-1", 1.25, **task_fields(task)))
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["message"] == "done t-1 in 1.2 ms"
    assert (entry["task_id"], entry["func"], entry["queue"], entry["attempt"]) == (
        "t-1", "app.jobs.send", "mail", 2,
    )  # fmt: skip
    assert entry["level"] == "INFO" and entry["logger"] == "omniq.worker"
    assert entry["time"].endswith("+00:00")


def test_other_lines_and_exceptions() -> None:
    plain = orjson.loads(JsonFormatter().format(record("worker w1 on queues default")))
    assert not set(TASK_FIELDS) & plain.keys()
    try:
        raise ValueError("multi\nline")
    except ValueError:
        import sys

        rec = record("failed inside the worker")
        rec.exc_info = sys.exc_info()
    entry = orjson.loads(JsonFormatter().format(rec))
    assert (
        entry["exception"].startswith("Traceback")
        and "ValueError: multi\nline" in entry["exception"]
    )


def test_every_worker_log_line_about_a_task_carries_the_fields() -> None:
    """A log call in omniq/worker that names a task (its id among the arguments) passes
    ``extra=`` with the task fields."""
    missing = []
    for path in Path(omniq.worker.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
            ):
                continue
            names = {ast.unparse(a) for a in node.args[1:]}
            if names & {"task_id", "task.id", "running.task.id", "stuck.task_id"} and not any(
                k.arg == "extra" for k in node.keywords
            ):
                missing.append(f"{path.name}:{node.lineno}")
    assert not missing, f"log lines about a task without extra=: {missing}"
