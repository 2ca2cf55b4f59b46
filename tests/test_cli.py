"""The command line: version, check-config and its exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

from innera import __version__


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INNERA_", "DB_", "S3_"))}
    for name in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "NODE_ENV", "PORT", "HOST",
                 "LOG_LEVEL", "SENTRY_DSN", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER",
                 "SHUTDOWN_TIMEOUT_S", "MAX_BODY_BYTES"):
        clean.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "innera.cli", *args],
        env={**clean, **(env or {})}, capture_output=True, text=True, timeout=30,
    )


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"innera {__version__}"


def test_check_config_prints_the_effective_configuration_masked() -> None:
    out = run_cli("check-config", env={
        "DATABASE_URL": "postgresql://u:hunter2@db/innera", "JWT_SECRET": "sekrit", "PORT": "8080"})
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stdout and "sekrit" not in out.stdout
    assert "postgresql://u:********@db/innera" in out.stdout
    lines = dict(line.split(None, 1) for line in out.stdout.splitlines())
    assert lines["PORT"] == "8080" and lines["JWT_SECRET"] == "********"
    assert lines["DB_POOL_MAX"] == "20"


def test_invalid_configuration_exits_2_with_the_same_message_for_serve() -> None:
    env = {"DB_POOL_MAX": "lots", "INNERA_ENV": "production"}
    check = run_cli("check-config", env=env)
    serve = run_cli("serve", env=env)
    assert check.returncode == serve.returncode == 2
    assert "DB_POOL_MAX='lots' is not an integer" in check.stderr
    assert "DATABASE_URL is required when INNERA_ENV=production" in check.stderr
    assert check.stderr == serve.stderr
    assert check.stdout == serve.stdout == ""


def test_unknown_command_is_a_usage_error() -> None:
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


async def test_jobs_stats_failed_and_retry(redis_url: str, redis) -> None:  # type: ignore[no-untyped-def]
    import trio

    from innera.observability.metrics import Metrics
    from innera.queue.jobs import JobQueue, PermanentJobError
    from innera.queue.worker import QueueConfig, run_workers

    queue = JobQueue(redis, "export-jobs")
    await queue.enqueue({"n": 1}, job_id="export-ok")
    await queue.enqueue({"n": 2}, job_id="export-bad")

    async def handler(job, ctx) -> None:  # type: ignore[no-untyped-def]
        if job.id == "export-bad":
            raise PermanentJobError("the archive is corrupt")

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_workers(
            redis, {"export-jobs": QueueConfig(handler)}, Metrics(), stop=stop,
            task_status=task_status))
        with trio.fail_after(10):
            while (await queue.get("export-bad")).status != "failed":  # type: ignore[union-attr]
                await trio.sleep(0.05)
        stop.set()

    env = {"REDIS_URL": redis_url, "INNERA_ENV": "test"}
    stats = await trio.to_thread.run_sync(lambda: run_cli("jobs", "stats", env=env))
    assert stats.returncode == 0, stats.stderr
    row = next(line.split() for line in stats.stdout.splitlines() if line.startswith("export-jobs"))
    assert row[1:] == ["0", "0", "0", "1", "1"]  # waiting delayed active completed failed

    failed = await trio.to_thread.run_sync(
        lambda: run_cli("jobs", "failed", "export-jobs", env=env))
    assert "export-bad" in failed.stdout and "the archive is corrupt" in failed.stdout

    retried = await trio.to_thread.run_sync(
        lambda: run_cli("jobs", "retry", "export-bad", env=env))
    assert retried.returncode == 0
    assert (await queue.get("export-bad")).status == "waiting"  # type: ignore[union-attr]
    missing = await trio.to_thread.run_sync(lambda: run_cli("jobs", "retry", "nope", env=env))
    assert missing.returncode == 1 and "no failed job" in missing.stderr


def test_keys_commands_reject_bad_arguments_with_exit_2() -> None:
    missing = run_cli("keys", "rotate")
    assert missing.returncode == 2 and "--to" in missing.stderr
    not_a_number = run_cli("keys", "rotate", "--to", "two")
    assert not_a_number.returncode == 2 and "invalid int value: 'two'" in not_a_number.stderr
    bad_key = run_cli("keys", "status", env={"INNERA_MEK": "2:c2hvcnQ="})
    assert bad_key.returncode == 2
    assert "INNERA_MEK is invalid: key version 2 is not base64 of 32 bytes" in bad_key.stderr
