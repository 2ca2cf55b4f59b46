"""``innera serve | worker | migrate | check-config | jobs stats|failed|retry | keys … | --version``

Exit codes: 0 success; 1 a failure at run time (a service did not start, the shutdown
deadline passed, a key rotation refused while another is unfinished); 2 an invalid
configuration or invalid arguments (including a key version ``keys rotate`` cannot use).
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import trio

from innera import __version__
from innera.config import ConfigError, Settings, load_settings
from innera.observability.logging import configure_logging
from innera.observability.metrics import QUEUES

if TYPE_CHECKING:
    from innera.crypto.keyring import KeyProvider
    from innera.redis import Redis

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
    keys = commands.add_parser(
        "keys", help="master encryption keys: data keys per version, rotation").add_subparsers(
        dest="keys_command", metavar="KEYS_COMMAND", required=True)
    keys.add_parser("status", help="configured master key versions, data keys per version, "
                                   "the latest rotation")
    rotate = keys.add_parser(
        "rotate", help="re-wrap every data key with master key VERSION (a background job)")
    rotate.add_argument("--to", type=int, required=True, metavar="VERSION", dest="to_version",
                        help="the newest version in INNERA_MEK, configured beside the old")
    rotate.add_argument("--batch-size", type=int, default=500, metavar="N",
                        help="data keys re-wrapped per transaction (default 500)")
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

    configure_logging(settings.observability.log_level,
                      log_format=settings.observability.log_format,
                      production=settings.production)
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
        if args.command == "keys":
            return trio.run(_keys, settings, args)
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
        return await _retry(stack, settings, redis, args.job_id)


async def _retry(stack: AsyncExitStack, settings: Settings, redis: Redis, job_id: str) -> int:
    """A failed job back to waiting. A job of a job table (``export_jobs:<id>`` …) is
    reopened in its table first (failed → pending), else its worker would refuse to run a
    job the table says is finished; a reopened job Redis no longer holds is enqueued again."""
    from innera.jobs import tables
    from innera.jobs.submission import enqueue
    from innera.process import open_database
    from innera.queue import admin
    from workers.registry import JOB_KINDS

    try:
        kind, row_id = tables.parse_queue_job_id(JOB_KINDS, job_id)
    except ValueError:
        kind = None
    reopened = None
    if kind is not None:
        pool = await open_database(stack, settings, migrations=False)
        reopened = await tables.reopen_failed(pool, kind, row_id)
    if await admin.retry(redis, job_id):
        print(f"{job_id}: moved back to waiting")
        return 0
    if kind is not None and reopened is not None:
        await enqueue(redis, kind, reopened)
        print(f"{job_id}: reopened in {kind.table} and enqueued again")
        return 0
    print(f"innera: no failed job with id {job_id}", file=sys.stderr)
    return 1


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    """``innera keys status | rotate --to VERSION`` with the configured master keys
    (INNERA_MEK, INNERA_MEK_KMS_KEY_ID), against the configured database (and Redis, to
    enqueue the rotation). Nothing is asked of KMS: the worker does the re-wrapping."""
    from innera import key_rotation as rotation
    from innera.crypto.keyring import KeyringError
    from innera.observability.metrics import Metrics
    from innera.process import open_database, open_key_provider, open_redis

    try:
        provider = await open_key_provider(settings, Metrics())
    except (KeyringError, OSError) as exc:
        print(f"innera: the master key is unusable: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    versions = provider.versions
    async with AsyncExitStack() as stack:
        try:
            if args.keys_command == "rotate":
                rotation.check_target(versions, args.to_version)
            db = await open_database(stack, settings, migrations=False)
            if args.keys_command == "status":
                _print_key_status(provider, await rotation.dek_counts_by_provider(db),
                                  await rotation.latest_rotation(db))
                return 0
            redis = await open_redis(stack, settings, Metrics())
            job = await rotation.start_rotation(db, redis, versions, args.to_version,
                                                batch_size=args.batch_size)
        except rotation.InvalidRotation as exc:
            print(f"innera: cannot rotate: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except rotation.RotationInProgress as exc:
            print(f"innera: {exc}", file=sys.stderr)
            return 1
    print(f"key rotation {job.job_id} submitted: {job.to_rewrap} data key(s) to re-wrap "
          f"from master key version {job.from_version}"
          f"{' (and later)' if job.from_version < job.to_version - 1 else ''} to "
          f"{job.to_version} ({provider.describe(job.to_version)}); follow it with: "
          f"innera keys status")
    return 0


def _print_key_status(provider: KeyProvider, counts: dict[tuple[int, str], int],
                      latest: dict[str, Any] | None) -> None:
    """The configured versions, the data keys per version (and the provider that wrapped
    them, where it is not the one now configured for that version), the latest rotation."""
    from innera.crypto.keyring import LOCAL
    from innera.crypto.kms import KMS
    from innera.jobs.tables import queue_job_id
    from innera.key_rotation import KEY_ROTATION_JOB

    versions = provider.versions
    current = max(versions)
    per_version: dict[int, int] = {}
    for (version, _), n in counts.items():
        per_version[version] = per_version.get(version, 0) + n
    print(f"master key versions configured: {', '.join(map(str, sorted(versions)[::-1]))} "
          f"(current: {current}, wraps new data keys)")
    print("data keys per master key version:")
    for version in sorted(versions | set(per_version), reverse=True):
        if version not in versions:
            print(f"  version {version}: {per_version.get(version, 0)} (NOT CONFIGURED: these "
                  f"data keys cannot be unwrapped)")
            continue
        kind = provider.provider_name(version)
        notes = ["current"] if version == current else []
        if kind != LOCAL:
            notes.append(provider.describe(version))
        shown = f" ({', '.join(notes)})" if notes else ""
        print(f"  version {version}: {per_version.get(version, 0)}{shown}")
        for (v, stored), n in sorted(counts.items()):
            if v == version and stored != kind:
                print(f"    {n} of them wrapped by a {stored} key, but version {version} is "
                      f"configured as {provider.describe(version)}: they cannot be unwrapped")
    removable = sorted(v for v in versions if v != current and not per_version.get(v))
    for kind, variable in ((LOCAL, "INNERA_MEK"), (KMS, "INNERA_MEK_KMS_KEY_ID")):
        listed = [v for v in removable if provider.provider_name(v) == kind]
        if listed:
            print(f"no data key uses version(s) {', '.join(map(str, listed))}: they can be "
                  f"removed from {variable}")
    if latest is None:
        print("latest rotation: none")
        return
    print(f"latest rotation: {queue_job_id(KEY_ROTATION_JOB, latest['id'])} version "
          f"{latest['from_version']} -> {latest['to_version']}: {latest['status']}, "
          f"progress {float(latest['progress']):.0%}, attempts {latest['attempts']}")
    times = [f"{name} {latest[f'{name}_at']:%Y-%m-%d %H:%M:%S %Z}"
             for name in ("created", "started", "finished") if latest[f"{name}_at"]]
    print(f"  {', '.join(times)}")
    if latest["error"]:
        print(f"  error: {latest['error']}")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _is_expected(exc: BaseException) -> bool:
    """Failures the message explains (no traceback): unreachable services, unusable keys."""
    from innera.crypto.keyring import KeyringError
    from innera.errors import AppError

    return all(isinstance(leaf, AppError | OSError | KeyringError) for leaf in _leaves(exc))


def describe(exc: BaseException) -> str:
    """One line per underlying failure (trio wraps them in exception groups)."""
    return "; ".join(f"{type(leaf).__name__}: {leaf}" for leaf in _leaves(exc))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
