"""The ``omniq`` command line: ``omniq <command> --help`` for each command.

Errors are one line on stderr and a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import OmniQError
from . import run

COMMAND_MODULES = [run]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniq",
        description="OmniQ: a PostgreSQL task queue. Without --dsn, OMNIQ_DSN or PG* variables, "
        "commands use an embedded PostgreSQL that OmniQ starts for this directory.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else getattr(args, "log_level", logging.WARNING)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"
    )
    if not args.debug:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (OmniQError, ConnectionError, ValueError, TypeError, RuntimeError, OSError) as exc:
        if args.debug:
            raise
        print(f"omniq: error: {exc}", file=sys.stderr)
        return 1


def entry_point() -> None:
    sys.exit(main())
