"""What commands print: aligned tables and detail blocks for people, JSON for scripts."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import fields, is_dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from ..models._common import utcnow

MAX_CELL = 60
MAX_LAST = 120  # the last column may run longer: nothing follows it


def to_data(value: Any) -> Any:
    """Models, records and intervals as plain JSON-ready values (datetimes stay for orjson)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_data(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, timedelta):
        return round(value.total_seconds(), 3)
    if isinstance(value, dict):
        return {str(k): to_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_data(v) for v in value]
    return value


def print_json(value: Any, *, compact: bool = False) -> None:
    option = orjson.OPT_UTC_Z | (0 if compact else orjson.OPT_INDENT_2)
    sys.stdout.write(orjson.dumps(to_data(value), option=option).decode() + "\n")
    sys.stdout.flush()


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell; columns in ``right`` (numbers) right-aligned."""
    last = len(headers) - 1
    cells = [[str(h) for h in headers]]
    cells += [[cell(v, MAX_LAST if i == last else MAX_CELL) for i, v in enumerate(r)] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    flush_right = set(right)
    lines = []
    for r in cells:
        parts = [
            r[i].rjust(widths[i]) if i in flush_right else r[i].ljust(widths[i])
            for i in range(len(r))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def cell(value: Any, width: int = MAX_CELL) -> str:
    """One table cell: '-' for nothing, long text clipped to ``width`` characters."""
    if value is None or value == "":
        return "-"
    text = " ".join(str(value).split())  # one line, whatever the value holds
    return text if len(text) <= width else text[: width - 1] + "…"


def details(pairs: Iterable[tuple[str, Any]], indent: str = "  ") -> str:
    """``label  value`` lines for one object, skipping empty values."""
    shown = [(k, v) for k, v in pairs if v not in (None, "", [], {}, ())]
    width = max((len(k) for k, _ in shown), default=0)
    return "\n".join(f"{indent}{k.ljust(width)}  {v}" for k, v in shown)


def clip(text: str, limit: int | None) -> str:
    """``text`` cut at ``limit`` characters, saying how much there was (``None``: all of it)."""
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}… ({size(len(text.encode()))} in all; --full shows everything)"


def json_text(value: Any) -> str:
    return orjson.dumps(to_data(value), option=orjson.OPT_UTC_Z).decode()


def call_text(args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """Arguments as they would be written in a call: ``1, "a", retries=3``."""
    parts = [json_text(a) for a in args] + [f"{k}={json_text(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def span(seconds: float | None) -> str:
    """A length of time for people: 3 ms, 0.25s, 12s, 4m 05s, 3h 02m, 2d 04h."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds < 0.1 else f"{seconds:.2f}s"
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """``12s ago`` or ``in 4m 05s``; '-' for nothing."""
    if moment is None:
        return "-"
    delta = round(((now or utcnow()) - moment).total_seconds())  # whole seconds are enough
    if delta == 0:
        return "now"
    return f"{span(delta)} ago" if delta > 0 else f"in {span(-delta)}"


def stamp(moment: datetime | None) -> str:
    """An absolute UTC time with its distance from now: ``2024-05-01 12:00:03 UTC (4m 05s ago)``."""
    if moment is None:
        return ""
    return f"{moment.astimezone(utcnow().tzinfo):%Y-%m-%d %H:%M:%S} UTC ({ago(moment)})"


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} TB"  # pragma: no cover


def more_hint(shown: int, limit: int, offset: int) -> None:
    """Say on stderr how to see the next page when the page came back full."""
    if limit and shown == limit:
        print(f"(first {limit} shown; next page: --offset {offset + limit})", file=sys.stderr)
