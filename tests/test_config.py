"""Configuration: typed, validated, documented in one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from innera.config import VARIABLES, ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[1]
PROD = {
    "INNERA_ENV": "production",
    "DATABASE_URL": "postgresql://innera:pw@db:5432/innera",
    "REDIS_URL": "redis://:pw@redis:6379/0",
    "JWT_SECRET": "x" * 40,
    "INNERA_MEK": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
}


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings({})
    assert (s.server.env, s.server.host, s.server.port) == ("development", "0.0.0.0", 3000)
    assert (s.db.pool_max, s.db.pool_min) == (20, 5)
    assert (s.db.idle_timeout_s, s.db.connection_timeout_s) == (30.0, 5.0)
    assert s.storage.s3_bucket == "innera-attachments"
    assert s.server.shutdown_timeout_s == 30.0
    assert s.server.max_body_bytes == 1024 * 1024
    assert s.embedded_postgres and s.embedded_redis and s.local_storage
    assert s.db.sslmode is None


def test_node_env_is_the_fallback_for_innera_env() -> None:
    assert load_settings({"NODE_ENV": "test"}).server.env == "test"
    assert load_settings({"NODE_ENV": "test", "INNERA_ENV": "development"}).server.env \
        == "development"


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"PORT": "eighty"}, "PORT='eighty' is not an integer"),
        ({"PORT": "70000"}, "PORT=70000 must be at least 0 and at most 65535"),
        ({"DB_POOL_MAX": "0"}, "DB_POOL_MAX=0 must be at least 1"),
        ({"DB_POOL_MIN": "9", "DB_POOL_MAX": "4"}, "DB_POOL_MIN=9 is above DB_POOL_MAX=4"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL must be a URL starting with postgresql://"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL must be a URL starting with redis://"),
        ({"INNERA_ENV": "staging"}, "INNERA_ENV='staging' must be one of"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' must be one of"),
        ({"DB_SSL": "maybe"}, "DB_SSL='maybe' is not a boolean"),
        ({"SHUTDOWN_TIMEOUT_S": "-1"}, "SHUTDOWN_TIMEOUT_S='-1' must be a number above 0"),
        ({"REDIS_SENTINELS": "a:1"}, "REDIS_SENTINEL_MASTER is required"),
        ({"REDIS_SENTINELS": "nope", "REDIS_SENTINEL_MASTER": "m"}, "'nope' is not host:port"),
        ({"SENTRY_TRACES_SAMPLE_RATE": "1.5"}, "SENTRY_TRACES_SAMPLE_RATE='1.5' must be between"),
        ({"SENTRY_TRACES_SAMPLER": "health"},
         "SENTRY_TRACES_SAMPLER entry 'health' is not a URL path prefix (like /health)"),
        ({"SENTRY_TRACES_SAMPLER": "/health,/a b"},
         "SENTRY_TRACES_SAMPLER entry '/a b' is not a URL path prefix"),
        ({"SENTRY_TRACES_SAMPLER": "/search?q=x"},
         "SENTRY_TRACES_SAMPLER entry '/search?q=x' is not a URL path prefix"),
        ({"SENTRY_TRACES_SAMPLER": "off"}, "write none to trace every path"),
    ],
)
def test_an_invalid_value_names_the_variable(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    assert fragment in str(info.value)


@pytest.mark.parametrize(("value", "prefixes", "shown"), [
    (None, ("/health", "/metrics"), "/health,/metrics"),  # probes and scrapes: never traced
    ("", ("/health", "/metrics"), "/health,/metrics"),
    ("/health/, /metrics,/openapi.json", ("/health", "/metrics", "/openapi.json"),
     "/health,/metrics,/openapi.json"),
    ("none", (), "none"),
    ("NONE", (), "none"),
])
def test_sentry_traces_sampler_lists_the_untraced_path_prefixes(
        value: str | None, prefixes: tuple[str, ...], shown: str) -> None:
    s = load_settings({} if value is None else {"SENTRY_TRACES_SAMPLER": value})
    assert s.observability.sentry_untraced_paths == prefixes
    assert s.masked()["SENTRY_TRACES_SAMPLER"] == shown
    assert s.observability.sentry_traces_sample_rate == 0.1


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"PORT": "x", "DB_POOL_MAX": "0"})
    problems = info.value.problems
    assert any(p.startswith("PORT=") for p in problems)
    assert any(p.startswith("DB_POOL_MAX=") for p in problems)


def test_production_refuses_the_embedded_default_and_generated_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"INNERA_ENV": "production"})
    text = str(info.value)
    for name in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "INNERA_MEK"):
        assert f"{name}" in text and "required when INNERA_ENV=production" in text
    # NODE_ENV=production is production too
    with pytest.raises(ConfigError):
        load_settings({"NODE_ENV": "production"})


def test_production_with_everything_set_is_valid_and_verifies_tls() -> None:
    s = load_settings(PROD)
    assert s.production and not s.embedded_postgres and not s.embedded_redis
    assert s.db.sslmode == "verify-full"
    assert load_settings({**PROD, "DB_SSL_REJECT_UNAUTHORIZED": "false"}).db.sslmode == "require"
    assert load_settings({**PROD, "DB_SSL": "false"}).db.sslmode == "disable"
    sentinel = {**PROD, "REDIS_URL": "", "REDIS_SENTINELS": "s1:26379,s2:26379",
                "REDIS_SENTINEL_MASTER": "mymaster"}
    assert load_settings(sentinel).redis.sentinels == (("s1", 26379), ("s2", 26379))


def test_masked_output_hides_secrets() -> None:
    shown = load_settings({**PROD, "S3_SECRET_ACCESS_KEY": "s3cr3t"}).masked()
    assert shown["DATABASE_URL"] == "postgresql://innera:********@db:5432/innera"
    assert shown["REDIS_URL"] == "redis://:********@redis:6379/0"
    assert shown["JWT_SECRET"] == shown["INNERA_MEK"] == shown["S3_SECRET_ACCESS_KEY"] == "********"
    assert "s3cr3t" not in repr(shown) and "x" * 40 not in repr(shown)
    assert set(shown) == {v.name for v in VARIABLES}


def test_each_variable_fills_a_field_of_its_section_and_reprs_leave_secrets_out() -> None:
    s = load_settings({**PROD, "S3_SECRET_ACCESS_KEY": "s3cr3t"})
    for v in VARIABLES:
        assert hasattr(getattr(s, v.section), v.field), v.name
    assert "s3cr3t" not in repr(s) and "x" * 40 not in repr(s) and ":pw@" not in repr(s)
    assert "pool_max=20" in repr(s.db)


def test_env_example_and_readme_table_are_generated_from_the_settings() -> None:
    """Run scripts/config_docs.py after changing innera/config.py."""
    from scripts.config_docs import env_example, table

    assert (ROOT / "conf" / ".env.example").read_text() == env_example()
    assert table() in (ROOT / "README.md").read_text()
    names = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", env_example(), flags=re.M))
    assert names == {v.name for v in VARIABLES}


def test_every_variable_the_code_reads_is_declared() -> None:
    """No os.environ / getenv outside config.py: settings are read once and passed down."""
    offenders = []
    for path in (ROOT / "innera").rglob("*.py"):
        if path.name == "config.py":
            continue
        text = path.read_text()
        for m in re.finditer(r"(?:os\.environ(?:\.get)?\[?\(?|getenv\()\s*[\"']([A-Z_]+)", text):
            offenders.append(f"{path.relative_to(ROOT)}: {m.group(1)}")
    assert not offenders, offenders
