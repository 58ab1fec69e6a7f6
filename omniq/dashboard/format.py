"""How values look on the dashboard: times, durations, ids and JSON (Jinja filters)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson

from ..models._common import utcnow


def span(seconds: float | timedelta | None) -> str:
    """``850 ms``, ``12 s``, ``4 min 10 s``, ``3 h 5 min``, ``2 d 4 h``."""
    if seconds is None:
        return ""
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    s = abs(float(seconds))
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    minutes, sec = divmod(int(s), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec and minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """``5 s ago`` or ``in 3 min`` (the browser keeps it current, see dashboard.js)."""
    if moment is None:
        return ""
    delta = ((now or utcnow()) - moment).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"{span(delta)} ago" if delta > 0 else f"in {span(delta)}"


def stamp(moment: datetime | None) -> str:
    """``2026-12-02 12:34:56`` in UTC."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat() if moment is not None else ""


def short_id(value: str | None, keep: int = 13) -> str:
    """Enough of an id to tell tasks apart in a table; the full id is in the title and link."""
    if value is None:
        return ""
    return value if len(value) <= keep + 1 else value[:keep] + "…"


def pretty(value: Any) -> str:
    """JSON, indented, keys in their stored order."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:
        return repr(value)


def call(func: str, args: Any, kwargs: Any, width: int = 120) -> str:
    """``module.func(1, 'a', flag=True)``, shortened past ``width`` characters."""
    parts = [_literal(a) for a in args or ()]
    parts += [f"{k}={_literal(v)}" for k, v in (kwargs or {}).items()]
    text = f"{func}({', '.join(parts)})"
    return text if len(text) <= width else text[: width - 2] + "…)"


def _literal(value: Any) -> str:
    return orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)


def path_part(value: str) -> str:
    """An id as one URL path segment (ids may hold '/', '@', ':' or spaces)."""
    return quote(value, safe="")


def number(value: int | None) -> str:
    return f"{value:,}" if value is not None else ""


FILTERS = {
    "span": span,
    "ago": ago,
    "stamp": stamp,
    "iso": iso,
    "short_id": short_id,
    "pretty": pretty,
    "path_part": path_part,
    "number": number,
}
