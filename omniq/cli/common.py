"""What the commands share: exit codes, argument parsers, opening the backend."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from ..backend.postgres import PostgreSQLBackend
from ..models._common import utcnow
from ..models.config import PostgresConfig
from ..models.schedule import valid_cron
from .options import add_connection_options, config_from_args

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_NOT_FOUND = 3


class CommandError(Exception):
    """An error a command reports as one line, with its exit code."""

    exit_code = EXIT_ERROR


class NotFound(CommandError):
    exit_code = EXIT_NOT_FOUND


# -- argument types (a bad value is a usage error: exit 2 with argparse's message) ------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d`` as seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected seconds or a duration like 90s, 15m, 2h, 7d, got {text!r}"
        )
    return float(match.group(1)) * _UNIT[(match.group(2) or "s").lower()]


def days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"days must not be negative, got {text!r}")
    return value


def moment(text: str) -> datetime:
    """An ISO 8601 time (naive means UTC) or a duration ago (``15m``: fifteen minutes ago)."""
    if _DURATION.match(text) and not text.strip().replace(".", "").isdigit():
        return utcnow() - timedelta(seconds=seconds(text))
    return iso_time(text, relative=True)


def iso_time(text: str, relative: bool = False) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time like 2025-01-31T09:30:00Z, got {text!r}"
            + (" (or a duration ago like 15m, 2h, 7d)" if relative else "")
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def json_value(text: str) -> Any:
    """A task argument: JSON when it parses as JSON, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"key\": 1}}', got {text!r}"
        )
    return value


def cron(text: str) -> str:
    if not valid_cron(text):
        raise argparse.ArgumentTypeError(
            f"invalid cron expression {text!r}: expected five fields "
            "'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *'"
        )
    return text


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not 0 < value < float("inf"):  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, got {text!r}")
    return value


def csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def one_of(kind: type[StrEnum]) -> Callable[[str], list[str]]:
    """A comma-separated list of an enum's values (``--status failed,cancelled``)."""

    def parse(text: str) -> list[str]:
        values = csv_list(text)
        wrong = [v for v in values if v not in kind._value2member_map_]
        if wrong or not values:
            raise argparse.ArgumentTypeError(
                f"expected one or more of {', '.join(kind)} (comma-separated), got {text!r}"
            )
        return values

    parse.__name__ = "list"
    return parse


def either(words: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


# -- parsers -------------------------------------------------------------------------------


def add_command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    handler: Callable[[argparse.Namespace], int | None],
    summary: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A sub-command with its help, the connection options and the handler to run."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description or summary[0].upper() + summary[1:] + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_options(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_page_options(parser: argparse.ArgumentParser, default_limit: int = 100) -> None:
    group = parser.add_argument_group("paging")
    group.add_argument(
        "--limit",
        type=whole_number,
        default=default_limit,
        help=f"at most this many (default: {default_limit})",
    )
    group.add_argument(
        "--offset", type=whole_number, default=0, help="skip this many first (default: 0)"
    )


def add_time_range(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--since",
        type=moment,
        metavar="WHEN",
        help=f"{what} at or after WHEN: ISO 8601 or 15m, 2h, 7d ago",
    )
    parser.add_argument("--until", type=moment, metavar="WHEN", help=f"{what} before WHEN")


# -- running -------------------------------------------------------------------------------


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command's async body on a fresh event loop; returns what it returns."""
    return asyncio.run(main())


def config(args: argparse.Namespace, migrate: str = "auto") -> PostgresConfig:
    return config_from_args(args, min_connections=1, max_connections=2, migrate=migrate)


@contextlib.asynccontextmanager
async def open_backend(
    args: argparse.Namespace, migrate: str = "check"
) -> AsyncIterator[PostgreSQLBackend]:
    """The backend, connected. Commands that only read or change what exists check that the
    schema holds a current installation (a mistyped --schema must not create one); those
    that create work (enqueue, schedule add) pass ``migrate="auto"``, like a worker."""
    async with PostgreSQLBackend(config(args, migrate)) as backend:
        yield backend
