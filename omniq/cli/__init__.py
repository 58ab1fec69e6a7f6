"""The ``omniq`` command line: ``omniq <command> --help`` for each command.

Errors are one line on stderr and a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

import asyncpg

from ..errors import OmniQError
from . import admin, dashboard, demo, doctor, manage, produce, queues, run, show, status
from .common import CommandError

COMMAND_MODULES = [run, demo, produce, status, show, manage, queues, admin, doctor, dashboard]

EXAMPLES = """\
examples:
  omniq enqueue app.tasks.send_email '"ann@example.com"' --queue emails
  omniq worker --queues emails,default        run tasks (Ctrl-C stops)
  omniq status --watch                        queues, workers and schedules, refreshed
  omniq tasks --status failed                 then: omniq task ID, omniq retry ID
  omniq schedule add app.tasks.report --cron '0 6 * * *'
  omniq queue limit emails --max-running 2    then: omniq queue pause emails, queue list
  omniq cleanup --purge-finished-older-than 7
  omniq sql | psql "$DSN"                     install/migrate by hand (see omniq doctor)

Every command takes --dsn (or $OMNIQ_DSN, or the PG* variables) and --schema.
Exit codes: 0 ok, 1 error, 2 usage error, 3 not found.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniq",
        description="OmniQ: a PostgreSQL task queue. Without --dsn, OMNIQ_DSN or PG* variables, "
        "commands use an embedded PostgreSQL that OmniQ starts for this directory.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(commands)
    for sub in _all_subparsers(parser):  # --debug also after the command name
        if not any("--debug" in a.option_strings for a in sub._actions):
            sub.add_argument(
                "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
    return parser


def _all_subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += [sub, *_all_subparsers(sub)]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else getattr(args, "log_level", logging.WARNING)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"
    )
    if getattr(args, "log_format", "text") == "json":  # omniq worker --log-format json
        from ..observability.logs import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    if not args.debug:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_one_line_driver_warnings)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `omniq tasks | head`: the reader left; stop quietly, like ls would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CommandError as exc:
        return _fail(args, str(exc), exc.exit_code)
    except (OmniQError, ConnectionError, ValueError, TypeError, RuntimeError, OSError) as exc:
        return _fail(args, str(exc) or type(exc).__name__)
    except asyncpg.PostgresError as exc:
        return _fail(args, f"PostgreSQL said: {exc}")
    except Exception as exc:  # a bug: still one line, with the way to see more
        return _fail(args, f"unexpected {type(exc).__name__}: {exc} (--debug shows the traceback)")


def _one_line_driver_warnings(record: logging.LogRecord) -> bool:
    """asyncpg logs some warnings with a full traceback (during an outage, "Failed to restore
    the pool connection floor" about once a second): one line each, unless --debug."""
    if record.name.startswith("asyncpg") and record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
        record.args = None
        record.exc_info = record.exc_text = None
    return True


def _fail(args: argparse.Namespace, message: str, code: int = 1) -> int:
    """One line on stderr (the traceback first with --debug); the exit code."""
    if args.debug:
        traceback.print_exc()
    print(f"omniq: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def entry_point() -> None:
    sys.exit(main())
