"""Workers: take tasks from PostgreSQL, run them, record their outcomes.

``worker.py`` holds the fetch loop, execution, heartbeats and shutdown; ``outcomes.py`` the
batched recording of outcomes; ``imports.py`` the resolution of a task's ``func`` path.
"""

from .imports import TaskImportError, resolve
from .outcomes import WorkerStats
from .worker import AsyncWorker, Worker

__all__ = ["AsyncWorker", "TaskImportError", "Worker", "WorkerStats", "resolve"]
