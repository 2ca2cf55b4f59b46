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
