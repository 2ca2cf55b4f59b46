"""``innera serve | worker | migrate | check-config | jobs stats|failed|retry | --version``.

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
from innera.observability.metrics import QUEUES

EXIT_CONFIG = 2
log = logging.getLogger("innera.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="innera", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"innera {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("serve", help="run the server (HOST/PORT; embedded services by default)")
    commands.add_parser(
        "worker", help="run only the job reconciler and workers (no HTTP) until SIGTERM/SIGINT")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser(
        "check-config",
        help="print the effective configuration (secrets masked); exit 2 if invalid")
    jobs = commands.add_parser("jobs", help="inspect the job queues").add_subparsers(
        dest="jobs_command", metavar="JOBS_COMMAND", required=True)
    jobs.add_parser("stats", help="jobs per queue and state")
    failed = jobs.add_parser("failed", help="the dead-letter set, newest first, with errors")
    failed.add_argument("queue", nargs="?", choices=QUEUES, help="one queue (default: all)")
    retry = jobs.add_parser("retry", help="move a failed job back to waiting")
    retry.add_argument("job_id")
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
        if args.command == "worker":
            from innera.process import run_worker_process

            return trio.run(run_worker_process, settings)
        if args.command == "migrate":
            return trio.run(_migrate, settings)
        if args.command == "jobs":
            return trio.run(_jobs, settings, args)
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


async def _jobs(settings: Settings, args: argparse.Namespace) -> int:
    """``innera jobs stats | failed [QUEUE] | retry JOB_ID`` against the configured Redis."""
    from innera.observability.metrics import Metrics
    from innera.process import open_redis
    from innera.queue import admin

    async with AsyncExitStack() as stack:
        redis = await open_redis(stack, settings, Metrics())
        if args.jobs_command == "stats":
            counts = await admin.stats(redis)
            states = ("waiting", "delayed", "active", "completed", "failed")
            print(f"{'queue':<20}" + "".join(f"{state:>11}" for state in states))
            for queue, by_state in counts.items():
                print(f"{queue:<20}" + "".join(f"{by_state[s]:>11}" for s in states))
            return 0
        if args.jobs_command == "failed":
            for job in await admin.list_failed(redis, args.queue):
                print(f"{job.queue}  {job.id}  attempts={job.attempts}/{job.max_attempts}  "
                      f"error={job.error}")
            return 0
        if await admin.retry(redis, args.job_id):
            print(f"{args.job_id}: moved back to waiting")
            return 0
        print(f"innera: no failed job with id {args.job_id}", file=sys.stderr)
        return 1


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
