"""``innera serve | migrate | check-config | --version``.

Exit codes: 0 success; 1 a failure at run time (a service did not start, the shutdown
deadline passed); 2 an invalid configuration or invalid arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import AsyncExitStack

import trio

from innera import __version__
from innera.config import ConfigError, Settings, load_settings
from innera.observability.logging import configure_logging

EXIT_CONFIG = 2
log = logging.getLogger("innera.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="innera", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"innera {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("serve", help="run the server (HOST/PORT; embedded services by default)")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser(
        "check-config",
        help="print the effective configuration (secrets masked); exit 2 if invalid")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"innera: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    if args.command == "check-config":
        width = max(len(name) for name in settings.masked())
        for name, value in settings.masked().items():
            print(f"{name:<{width}}  {value}")
        return 0

    configure_logging(settings.log_level)
    try:
        if args.command == "serve":
            from innera.process import run_process

            return trio.run(run_process, settings)
        if args.command == "migrate":
            return trio.run(_migrate, settings)
    except BaseException as exc:  # the reason is logged, the exit code says it
        if isinstance(exc, KeyboardInterrupt):
            return 1
        log.critical("innera %s failed: %s", args.command, describe(exc),
                     exc_info=not _is_expected(exc))
        return 1
    return 0  # pragma: no cover - argparse rejects other commands


async def _migrate(settings: Settings) -> int:
    from innera.process import open_database

    async with AsyncExitStack() as stack:
        await open_database(stack, settings, migrations=True)
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _is_expected(exc: BaseException) -> bool:
    from innera.errors import AppError

    return all(isinstance(leaf, AppError | OSError) for leaf in _leaves(exc))


def describe(exc: BaseException) -> str:
    """One line per underlying failure (trio wraps them in exception groups)."""
    return "; ".join(f"{type(leaf).__name__}: {leaf}" for leaf in _leaves(exc))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
