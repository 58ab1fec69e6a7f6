"""Workers: take tasks from PostgreSQL, run them, record their outcomes.

``worker.py`` holds the fetch loop, execution and shutdown; ``outcomes.py`` the batched
recording of outcomes; ``liveness.py`` the heartbeat thread; ``imports.py`` the resolution of a
task's ``func`` path. Every call to the database goes through the worker protocol
(:mod:`omniq.backend.postgres.protocol`).
"""

from .imports import TaskImportError, resolve
from .outcomes import WorkerStats
from .worker import AsyncWorker, Worker

__all__ = ["AsyncWorker", "TaskImportError", "Worker", "WorkerStats", "resolve"]
