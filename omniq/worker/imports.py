"""Finding a task's function from its import path."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from ..errors import TaskImportError

__all__ = ["TaskImportError", "resolve"]


@functools.lru_cache(maxsize=1024)
def resolve(path: str) -> Callable[..., Any]:
    """Import ``package.module.function`` or ``package.module:Class.method``."""
    if ":" in path:
        module_name, _, names = path.partition(":")
        candidates = [(module_name, names.split("."))]
    else:
        parts = path.split(".")
        candidates = [(".".join(parts[:i]), parts[i:]) for i in range(len(parts) - 1, 0, -1)]
    error: Exception | None = None
    for module_name, attrs in candidates:
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name != exc.name and not module_name.startswith(exc.name + "."):
                raise TaskImportError(
                    f"importing {module_name!r} for {path!r} failed: {exc}"
                ) from exc
            error = exc
            continue
        except Exception as exc:
            raise TaskImportError(
                f"importing {module_name!r} for {path!r} failed: {exc!r}"
            ) from exc
        for attr in attrs:
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                raise TaskImportError(f"{path!r}: {obj!r} has no attribute {attr!r}") from None
        if not callable(obj):
            raise TaskImportError(f"{path!r} is not callable (it is {type(obj).__name__})")
        function: Callable[..., Any] = obj
        return function
    raise TaskImportError(f"cannot import {path!r}: {error}")
