"""Helpers shared by the models: ids, UTC time, JSON-safety checks."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

# datetime and dataclass values are refused rather than silently turned into strings,
# so what a task stores is exactly what it gets back.
_JSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def new_id() -> str:
    """A UUIDv7-style id: time-ordered, so primary-key inserts append instead of scattering."""
    bits = random.getrandbits(74)  # uniqueness, not secrecy; reseeded after fork
    value = (
        (time.time_ns() // 1_000_000) << 80  # 48 bits of milliseconds
        | 0x7 << 76  # version 7
        | (bits >> 62) << 64  # 12 random bits
        | 0x2 << 62  # variant 10
        | (bits & 0x3FFFFFFFFFFFFFFF)  # 62 random bits
    )
    h = f"{value:032x}"  # one formatting of the 128 bits: new_id runs for every task
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """Naive datetimes (``datetime.utcnow()``) are read as UTC; aware ones are converted."""
    if value is None:
        return None
    if value.__class__ is datetime and value.tzinfo is UTC:
        return value  # the common case, already normalised
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def dump_json(value: Any, what: str) -> str:
    """Serialise ``value`` for a JSONB column or raise TypeError saying what cannot be stored."""
    try:
        data = orjson.dumps(value, option=_JSON_OPTIONS)
    except TypeError as exc:
        raise TypeError(
            f"{what} cannot be stored as JSON: {exc}. Pass only str, int, float, bool, None, "
            "list, tuple and dict with str keys (convert datetimes, sets and objects yourself)."
        ) from None
    if b"null" in data:
        _reject_non_finite(value, what)
    if b"\\u0000" in data:
        _reject_nul(value, what)
    return data.decode()


def _walk(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _reject_non_finite(value: Any, what: str) -> None:
    # orjson writes NaN and infinities as null; refuse instead of changing the value.
    for item in _walk(value):
        if isinstance(item, float) and not math.isfinite(item):
            raise TypeError(f"{what} cannot be stored as JSON: {item!r} is not a finite number.")


def _reject_nul(value: Any, what: str) -> None:
    # PostgreSQL's jsonb cannot hold U+0000.
    for item in _walk(value):
        if isinstance(item, str) and "\x00" in item:
            raise TypeError(
                f"{what} cannot be stored: PostgreSQL JSONB cannot hold the NUL character "
                "(U+0000); strip it or encode the text (e.g. base64)."
            )
