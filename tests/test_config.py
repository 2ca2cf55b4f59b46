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
    assert s.server.shutdown_drain_delay_s == 0.0
    assert s.server.max_body_bytes == 1024 * 1024
    assert s.embedded_postgres and s.embedded_redis and s.local_storage
    assert s.db.sslmode is None
    assert s.db.ssl_root_cert == "system" and s.db.prepared_statements is True
    assert s.db.migration_url is None


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
        ({"SHUTDOWN_DRAIN_DELAY_S": "soon"}, "SHUTDOWN_DRAIN_DELAY_S='soon' is not a number"),
        ({"SHUTDOWN_DRAIN_DELAY_S": "-1"},
         "SHUTDOWN_DRAIN_DELAY_S='-1' must be a number at least 0"),
        ({"SHUTDOWN_DRAIN_DELAY_S": "nan"},
         "SHUTDOWN_DRAIN_DELAY_S='nan' must be a number at least 0"),
        ({"SHUTDOWN_DRAIN_DELAY_S": "30"},
         "SHUTDOWN_DRAIN_DELAY_S=30 must be below SHUTDOWN_TIMEOUT_S=30: the delay counts "
         "inside the shutdown deadline"),
        ({"SHUTDOWN_DRAIN_DELAY_S": "5", "SHUTDOWN_TIMEOUT_S": "4"},
         "SHUTDOWN_DRAIN_DELAY_S=5 must be below SHUTDOWN_TIMEOUT_S=4"),
        ({"REDIS_SENTINELS": "a:1"}, "REDIS_SENTINEL_MASTER is required"),
        ({"REDIS_SENTINELS": "nope", "REDIS_SENTINEL_MASTER": "m"}, "'nope' is not host:port"),
        ({"DB_PREPARED_STATEMENTS": "sometimes"},
         "DB_PREPARED_STATEMENTS='sometimes' is not a boolean"),
        ({"DATABASE_URL": "postgresql://a@db/x", "DATABASE_MIGRATION_URL": "mysql://a@db/x"},
         "DATABASE_MIGRATION_URL must be a URL starting with postgresql://"),
        ({"DATABASE_MIGRATION_URL": "postgresql://a@db/x"},
         "DATABASE_MIGRATION_URL needs DATABASE_URL"),
        ({"DB_SSL_ROOT_CERT": "/nonexistent/rds-global-bundle.pem"},
         "DB_SSL_ROOT_CERT=/nonexistent/rds-global-bundle.pem: no such file"),
        ({**PROD, "DATABASE_URL": "postgresql://a@db/x?sslmode=verify-ca"},
         "sslmode=verify-ca with DB_SSL_ROOT_CERT=system would accept a certificate any "
         "public CA issued"),
        ({**PROD, "DATABASE_URL": "postgresql://a@db/x?sslmode=verify-ca&sslrootcert=system"},
         "sslmode=verify-ca with ?sslrootcert=system in DATABASE_URL"),
        ({"METRICS_PORT": "prometheus"}, "METRICS_PORT='prometheus' is not an integer"),
        ({"METRICS_PORT": "65536"}, "METRICS_PORT=65536 must be at least 0 and at most 65535"),
        ({"METRICS_PORT": "-1"}, "METRICS_PORT=-1 must be at least 0"),
        ({"ACTIVE_USERS_INTERVAL_S": "0"}, "ACTIVE_USERS_INTERVAL_S='0' must be a number above 0"),
        ({"ACTIVE_USERS_INTERVAL_S": "often"},
         "ACTIVE_USERS_INTERVAL_S='often' is not a number"),
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


def test_db_ssl_root_cert_names_a_readable_pem_bundle_or_system(tmp_path: Path) -> None:
    bundle = tmp_path / "global-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert load_settings({"DB_SSL_ROOT_CERT": str(bundle)}).db.ssl_root_cert == str(bundle)
    assert load_settings({"DB_SSL_ROOT_CERT": "System"}).db.ssl_root_cert == "system"
    # a named bundle goes with verify-ca too (only the whole system store does not)
    load_settings({**PROD, "DATABASE_URL": "postgresql://a@db/x?sslmode=verify-ca",
                   "DB_SSL_ROOT_CERT": str(bundle)})

    not_pem = tmp_path / "bundle.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a")
    for value, fragment in ((str(tmp_path), "is a directory: name the CA bundle file"),
                            (str(not_pem), "holds no PEM certificate")):
        with pytest.raises(ConfigError) as info:
            load_settings({"DB_SSL_ROOT_CERT": value})
        assert f"DB_SSL_ROOT_CERT={value}" in str(info.value)
        assert fragment in str(info.value)


def test_metrics_port_and_active_users_interval() -> None:
    """METRICS_PORT unset: no metrics port for serve (the worker picks 9091 itself)."""
    s = load_settings({})
    assert s.observability.metrics_port is None
    assert s.observability.active_users_interval_s == 10.0
    assert s.masked()["METRICS_PORT"] == "(unset)"
    s = load_settings({"METRICS_PORT": "9100", "ACTIVE_USERS_INTERVAL_S": "0.5"})
    assert (s.observability.metrics_port, s.observability.active_users_interval_s) == (9100, 0.5)
    assert s.masked()["METRICS_PORT"] == "9100"
    assert load_settings({"METRICS_PORT": "0"}).observability.metrics_port == 0


def test_the_drain_delay_is_read_in_seconds_and_counts_inside_the_deadline() -> None:
    s = load_settings({"SHUTDOWN_DRAIN_DELAY_S": "5", "SHUTDOWN_TIMEOUT_S": "35"}).server
    assert (s.shutdown_drain_delay_s, s.shutdown_timeout_s) == (5.0, 35.0)
    assert load_settings({"SHUTDOWN_DRAIN_DELAY_S": "0.5"}).server.shutdown_drain_delay_s == 0.5
    assert load_settings({**PROD, "SHUTDOWN_DRAIN_DELAY_S": "5"}).masked()[
        "SHUTDOWN_DRAIN_DELAY_S"] == "5"
    with pytest.raises(ConfigError) as info:  # the message says what to do
        load_settings({"SHUTDOWN_DRAIN_DELAY_S": "30"})
    assert "raise SHUTDOWN_TIMEOUT_S, e.g. to 60" in str(info.value)


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


ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"


def test_the_master_key_in_aws_kms() -> None:
    crypto = load_settings({"INNERA_MEK_KMS_KEY_ID": ARN}).crypto
    assert crypto.mek_kms_key_ids == ((1, ARN),)
    assert (crypto.dek_cache_size, crypto.dek_cache_ttl_s) == (10_000, 300.0)
    many = load_settings({"INNERA_MEK_KMS_KEY_ID": f"2:{ARN}, 3:alias/innera-mek,1:{KEY_ID}"})
    assert many.crypto.mek_kms_key_ids == ((3, "alias/innera-mek"), (2, ARN), (1, KEY_ID))
    assert many.masked()["INNERA_MEK_KMS_KEY_ID"] == f"3:alias/innera-mek,2:{ARN},1:{KEY_ID}"
    # a rotation between a local key and KMS: one numbering, each version once
    beside = load_settings({"INNERA_MEK": PROD["INNERA_MEK"], "INNERA_MEK_KMS_KEY_ID": f"2:{ARN}"})
    assert beside.crypto.mek_kms_key_ids == ((2, ARN),)
    # production needs no local key when KMS holds it
    prod = {k: v for k, v in PROD.items() if k != "INNERA_MEK"}
    assert load_settings({**prod, "INNERA_MEK_KMS_KEY_ID": ARN}).crypto.mek is None
    caches = load_settings({"INNERA_DEK_CACHE_SIZE": "0", "INNERA_DEK_CACHE_TTL_S": "2.5"})
    assert (caches.crypto.dek_cache_size, caches.crypto.dek_cache_ttl_s) == (0, 2.5)


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"INNERA_MEK_KMS_KEY_ID": "my key"},
         "INNERA_MEK_KMS_KEY_ID is invalid: 'my key' is not a KMS key id, key ARN, alias name"),
        ({"INNERA_MEK_KMS_KEY_ID": "arn:aws:s3:::bucket"},
         "INNERA_MEK_KMS_KEY_ID is invalid: 'arn:aws:s3:::bucket' is not a KMS key id"),
        ({"INNERA_MEK_KMS_KEY_ID": f"0:{ARN}"},
         "INNERA_MEK_KMS_KEY_ID is invalid: key version '0' is not a positive integer"),
        ({"INNERA_MEK_KMS_KEY_ID": f"2:{ARN},2:alias/x"},
         "INNERA_MEK_KMS_KEY_ID is invalid: key version 2 is given twice"),
        ({"INNERA_MEK_KMS_KEY_ID": f"2:{ARN},1:{ARN}"},
         f"INNERA_MEK_KMS_KEY_ID is invalid: {ARN} is given for two versions"),
        ({"INNERA_MEK_KMS_KEY_ID": ","}, "INNERA_MEK_KMS_KEY_ID is invalid: no KMS key given"),
        ({"INNERA_MEK": PROD["INNERA_MEK"], "INNERA_MEK_KMS_KEY_ID": ARN},
         "INNERA_MEK and INNERA_MEK_KMS_KEY_ID both configure master key version(s) 1: each "
         "key needs a version of its own (e.g. INNERA_MEK_KMS_KEY_ID=2:KEY_ARN"),
        ({"INNERA_DEK_CACHE_SIZE": "-1"}, "INNERA_DEK_CACHE_SIZE=-1 must be at least 0"),
        ({"INNERA_DEK_CACHE_SIZE": "lots"}, "INNERA_DEK_CACHE_SIZE='lots' is not an integer"),
        ({"INNERA_DEK_CACHE_TTL_S": "0"}, "INNERA_DEK_CACHE_TTL_S='0' must be a number above 0"),
    ],
)
def test_invalid_kms_and_cache_settings_name_the_variable(environ: dict[str, str],
                                                          fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    assert fragment in str(info.value)


def test_production_without_any_master_key_names_all_three_variables() -> None:
    prod = {k: v for k, v in PROD.items() if k != "INNERA_MEK"}
    with pytest.raises(ConfigError) as info:
        load_settings(prod)
    assert ("INNERA_MEK (or INNERA_MEK_FILE or INNERA_MEK_KMS_KEY_ID) is required when "
            "INNERA_ENV=production") in str(info.value)


@pytest.mark.parametrize(("value", "expected"), [
    ("https://api.innera.app", "https://api.innera.app"),
    ("https://api.innera.app/", "https://api.innera.app"),  # the trailing slash is dropped
    ("http://127.0.0.1:8080/innera//", "http://127.0.0.1:8080/innera"),
    ("", None),  # unset: links stay relative
])
def test_public_url_is_a_base_url_without_its_trailing_slash(value: str,
                                                            expected: str | None) -> None:
    assert load_settings({"PUBLIC_URL": value}).server.public_url == expected


@pytest.mark.parametrize(("value", "fragment"), [
    ("api.innera.app", "must be an absolute URL starting with http:// or https://"),
    ("ftp://api.innera.app", "must be an absolute URL starting with http:// or https://"),
    ("https:///v1", "must be an absolute URL starting with http:// or https://"),
    ("https://api.innera.app/?x=1", "must not have a query string or fragment"),
    ("https://api.innera.app/#top", "must not have a query string or fragment"),
    ("https://api.innera.app?", "must not have a query string or fragment"),
    ("https://user:pw@api.innera.app", "must not contain credentials"),
    ("https://api.innera.app:99999", "has an invalid port"),
])
def test_a_bad_public_url_is_refused_naming_the_variable(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"PUBLIC_URL": value})
    assert f"PUBLIC_URL={value!r} {fragment}" in str(info.value)


def test_log_format_is_auto_by_default_and_json_or_console_when_set() -> None:
    assert load_settings({}).observability.log_format == "auto"
    assert load_settings({"LOG_FORMAT": "JSON"}).observability.log_format == "json"
    assert load_settings({"LOG_FORMAT": "console"}).observability.log_format == "console"
    with pytest.raises(ConfigError) as info:
        load_settings({"LOG_FORMAT": "pretty"})
    assert "LOG_FORMAT='pretty' must be one of: auto, json, console" in str(info.value)
