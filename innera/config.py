"""Settings from the environment (12-factor), validated once at start-up and passed down.

Every variable innera reads is declared once in :data:`VARIABLES` (name, default, meaning,
whether it is a secret). That table is the single source for the parser, for
``innera check-config``, for ``conf/.env.example`` and for the README's configuration table
(a test keeps the last two in step with it).

An invalid value raises :class:`ConfigError` naming the variable and what is wrong; the
CLI turns it into exit code 2 with the same message for ``serve`` and ``check-config``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENVIRONMENTS = ("development", "test", "production")
HTTP_SERVERS = ("fast", "hypercorn")
PUSH_PROVIDERS = ("none", "expo", "fcm", "webhook")
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "critical")


class ConfigError(Exception):
    """The configuration is invalid; the message names every offending variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None
    meaning: str
    secret: bool = False


VARIABLES: tuple[Variable, ...] = (
    Variable("INNERA_ENV", "development",
             "development | test | production (`NODE_ENV` is read when this is unset)"),
    Variable("HOST", "0.0.0.0", "address the HTTP server binds"),
    Variable("INNERA_HTTP_SERVER", "fast",
             "fast | hypercorn: the HTTP/1.1 + WebSocket server (fast: innera's Trio-native "
             "server, innera/http/fast/; hypercorn for HTTP/2 or TLS in process)"),
    Variable("PORT", "3000", "port the HTTP server binds (0 picks a free port)"),
    Variable("LOG_LEVEL", "info", "trace | debug | info | warn | error | fatal"),
    Variable("INNERA_DATA_DIR", "./var",
             "local state: embedded PostgreSQL/Valkey data, local attachments, generated keys"),
    Variable("DATABASE_URL", None,
             "PostgreSQL URL; unset outside production starts an embedded PostgreSQL", True),
    Variable("DB_POOL_MAX", "20", "most pooled PostgreSQL connections per instance"),
    Variable("DB_POOL_MIN", "5", "pooled connections kept open while idle"),
    Variable("DB_IDLE_TIMEOUT_MS", "30000", "idle time after which a pooled connection closes"),
    Variable("DB_CONNECTION_TIMEOUT_MS", "5000",
             "longest wait for a pooled connection before answering 503 database_unavailable"),
    Variable("DB_SSL", None,
             "`false` turns TLS to PostgreSQL off; unset: on (verified) in production only"),
    Variable("DB_SSL_REJECT_UNAUTHORIZED", "true",
             "`false` encrypts without verifying the server certificate (production)"),
    Variable("INNERA_INSTANCES", "1",
             "instances sharing the database; warns when DB_POOL_MAX × this > "
             "max_connections − 10"),
    Variable("INNERA_MIGRATE_ON_START", "true", "apply pending migrations when the server starts"),
    Variable("INNERA_WORKERS", "1",
             "`0` turns the job workers and the job reconciler off in `innera serve` (run "
             "them with `innera worker` instead)"),
    Variable("REDIS_URL", None,
             "Redis URL (`redis://:password@host:6379/0`, `rediss://` for TLS); unset outside "
             "production starts an embedded Valkey", True),
    Variable("REDIS_SENTINELS", None,
             "comma-separated `host:port` Sentinel addresses (used instead of REDIS_URL's host)"),
    Variable("REDIS_SENTINEL_MASTER", None, "master name monitored by the Sentinels"),
    Variable("S3_ENDPOINT", None,
             "S3-compatible endpoint (MinIO, R2); unset outside production stores attachments "
             "under the data dir"),
    Variable("S3_BUCKET", "innera-attachments", "bucket for attachments"),
    Variable("S3_REGION", "us-east-1", "S3 region"),
    Variable("S3_ACCESS_KEY_ID", None, "S3 access key id", True),
    Variable("S3_SECRET_ACCESS_KEY", None, "S3 secret access key", True),
    Variable("JWT_SECRET", None,
             "HS256 secret for access tokens; required in production, generated under the data "
             "dir otherwise", True),
    Variable("ACCESS_TOKEN_TTL_S", "900", "lifetime of access tokens (JWT) in seconds"),
    Variable("REFRESH_TOKEN_TTL_S", "2592000", "lifetime of refresh tokens in seconds (30 days)"),
    Variable("REFRESH_TOKEN_STORE", "redis",
             "redis | postgres: where hashed refresh tokens live (postgres keeps refresh "
             "working while Redis is down)"),
    Variable("TRUST_PROXY", "0",
             "proxy hops to trust in X-Forwarded-For for the client IP (0: the socket peer)"),
    Variable("RATE_LIMIT_AUTH", "10/min", "limit per client IP on the auth routes"),
    Variable("RATE_LIMIT_USER", "300/min", "limit per user on authenticated routes"),
    Variable("RATE_LIMIT_ANON", "100/min", "limit per client IP on other anonymous routes"),
    Variable("RATE_LIMIT_WS", "30/min",
             "WebSocket handshakes (/v1/ws) per user and, separately, per client IP"),
    Variable("WS_MAX_CONNECTIONS_PER_USER", "10",
             "open WebSockets one user may hold on one instance"),
    Variable("MAX_DEVICES_PER_USER", "20", "push devices one user may register"),
    Variable("METRICS_TOKEN", None,
             "when set, GET /metrics needs `Authorization: Bearer <token>` (401 otherwise)",
             True),
    Variable("CORS_ORIGINS", None,
             "comma-separated origins allowed by CORS (`*` for any); unset: no CORS headers"),
    Variable("SEARCH_TIMEOUT_S", "5",
             "longest search scan; past it the results so far are returned with complete=false"),
    Variable("ATTACHMENT_MAX_BYTES", "26214400", "largest attachment (25 MiB)"),
    Variable("ATTACHMENT_URL_TTL_S", "900", "lifetime of upload and download URLs"),
    Variable("INNERA_MEK", None,
             "master encryption key: base64 of 32 bytes, or `VERSION:BASE64,…` during key "
             "rotation (the highest version wraps new keys); required in production (or "
             "INNERA_MEK_FILE), generated under the data dir otherwise", True),
    Variable("INNERA_MEK_FILE", None, "file holding the master encryption key (base64)"),
    Variable("SENTRY_DSN", None, "Sentry DSN; unset disables error reporting", True),
    Variable("SENTRY_TRACES_SAMPLE_RATE", "0.1", "share of transactions traced by Sentry (0..1)"),
    Variable("SHUTDOWN_TIMEOUT_S", "30",
             "hard deadline of the graceful shutdown; past it the process exits 1"),
    Variable("MAX_BODY_BYTES", "1048576", "largest request body; larger answers 413"),
    Variable("REQUEST_TIMEOUT_S", "30",
             "longest an API operation may run; past it: 503 request_timeout (its queries are "
             "cancelled server-side)"),
    Variable("PUSH_PROVIDER", "none",
             "none | expo | fcm | webhook: where push notifications go (none: not sent)"),
    Variable("PUSH_URL", None,
             "push provider endpoint; default for expo: Expo's send API; required for fcm "
             "(`…/v1/projects/PROJECT/messages:send`) and webhook"),
    Variable("PUSH_ACCESS_TOKEN", None,
             "bearer token sent to the push provider (Expo access token, FCM OAuth token, "
             "webhook secret)", True),
    Variable("PUSH_TIMEOUT_S", "10", "longest wait for one push provider request"),
    Variable("IMPORT_MAX_BYTES", "52428800",
             "largest import upload (50 MiB); also the most JSON an import's archive may "
             "expand to (its attachments: 4 times this, each reference counted)"),
    Variable("IMPORT_MAX_ENTRIES", "100000",
             "most entries one import may hold; more fails the job with too_many_entries"),
    Variable("IMPORT_MAX_ATTACHMENTS", "5000",
             "most attachment references one import may hold; more fails the job with "
             "too_many_attachments"),
    Variable("IMPORT_PARSE_MEMORY_BYTES", "536870912",
             "address space of the child process that parses an import file (512 MiB); "
             "a file needing more fails with import_too_large"),
    Variable("IMPORT_PARSE_CPU_S", "60",
             "CPU seconds the import parser's child process may use (import_too_large past it)"),
    Variable("IMPORT_PARSE_TIMEOUT_S", "120",
             "wall-clock limit of the import parser's child process (import_too_large past it)"),
    Variable("EXPORT_URL_TTL_S", "86400", "lifetime of an export's download link (24 h)"),
    Variable("EXPORT_RETENTION_DAYS", "7",
             "export archives are deleted this many days after they were made (the job then "
             "shows `expired`)"),
)
VARIABLE_NAMES = frozenset(v.name for v in VARIABLES) | {"NODE_ENV"}


@dataclass(frozen=True)
class Settings:
    """The validated configuration. Build it with :func:`load_settings`."""

    env: str
    host: str
    port: int
    http_server: str
    log_level: str
    data_dir: Path
    database_url: str | None
    db_pool_max: int
    db_pool_min: int
    db_idle_timeout_s: float
    db_connection_timeout_s: float
    db_sslmode: str | None
    instances: int
    migrate_on_start: bool
    workers: bool
    redis_url: str | None
    redis_sentinels: tuple[tuple[str, int], ...]
    redis_sentinel_master: str | None
    s3_endpoint: str | None
    s3_bucket: str
    s3_region: str
    s3_access_key_id: str | None = field(repr=False)
    s3_secret_access_key: str | None = field(repr=False)
    jwt_secret: str | None = field(repr=False)
    mek: str | None = field(repr=False)
    mek_file: Path | None
    sentry_dsn: str | None = field(repr=False)
    sentry_traces_sample_rate: float
    access_token_ttl_s: int
    refresh_token_ttl_s: int
    refresh_token_store: str
    trust_proxy: int
    rate_limit_auth: tuple[int, int]
    rate_limit_user: tuple[int, int]
    rate_limit_anon: tuple[int, int]
    cors_origins: tuple[str, ...]
    search_timeout_s: float
    attachment_max_bytes: int
    attachment_url_ttl_s: int
    shutdown_timeout_s: float
    max_body_bytes: int
    request_timeout_s: float
    push_provider: str = "none"
    push_url: str | None = None
    push_access_token: str | None = field(default=None, repr=False)
    push_timeout_s: float = 10.0
    import_max_bytes: int = 52_428_800
    import_max_entries: int = 100_000
    import_max_attachments: int = 5_000
    import_parse_memory_bytes: int = 536_870_912
    import_parse_cpu_s: int = 60
    import_parse_timeout_s: float = 120.0
    export_url_ttl_s: int = 86_400
    rate_limit_ws: tuple[int, int] = (30, 60)
    ws_max_connections_per_user: int = 10
    max_devices_per_user: int = 20
    metrics_token: str | None = field(default=None, repr=False)
    export_retention_days: int = 7

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None and not self.redis_sentinels

    @property
    def local_storage(self) -> bool:
        return self.s3_endpoint is None and not self.production

    def masked(self) -> dict[str, str]:
        """The effective configuration by variable name, secrets masked (for check-config)."""
        raw = _effective_values(self)
        shown: dict[str, str] = {}
        for var in VARIABLES:
            value = raw.get(var.name)
            if value is None or value == "":
                shown[var.name] = "(unset)"
            elif var.name in ("DATABASE_URL", "REDIS_URL"):
                shown[var.name] = mask_url(value)
            elif var.secret:
                shown[var.name] = "********"
            else:
                shown[var.name] = value
        return shown


def mask_url(url: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:********@host``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:********@{host}"))


def _effective_values(s: Settings) -> dict[str, str | None]:
    return {
        "INNERA_ENV": s.env,
        "HOST": s.host,
        "INNERA_HTTP_SERVER": s.http_server,
        "PORT": str(s.port),
        "LOG_LEVEL": s.log_level,
        "INNERA_DATA_DIR": str(s.data_dir),
        "DATABASE_URL": s.database_url,
        "DB_POOL_MAX": str(s.db_pool_max),
        "DB_POOL_MIN": str(s.db_pool_min),
        "DB_IDLE_TIMEOUT_MS": str(round(s.db_idle_timeout_s * 1000)),
        "DB_CONNECTION_TIMEOUT_MS": str(round(s.db_connection_timeout_s * 1000)),
        "DB_SSL": "false" if s.db_sslmode in (None, "disable") else "true",
        "DB_SSL_REJECT_UNAUTHORIZED": "false" if s.db_sslmode == "require" else "true",
        "INNERA_INSTANCES": str(s.instances),
        "INNERA_MIGRATE_ON_START": str(s.migrate_on_start).lower(),
        "INNERA_WORKERS": "1" if s.workers else "0",
        "REDIS_URL": s.redis_url,
        "REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in s.redis_sentinels) or None,
        "REDIS_SENTINEL_MASTER": s.redis_sentinel_master,
        "S3_ENDPOINT": s.s3_endpoint,
        "S3_BUCKET": s.s3_bucket,
        "S3_REGION": s.s3_region,
        "S3_ACCESS_KEY_ID": s.s3_access_key_id,
        "S3_SECRET_ACCESS_KEY": s.s3_secret_access_key,
        "JWT_SECRET": s.jwt_secret,
        "INNERA_MEK": s.mek,
        "INNERA_MEK_FILE": str(s.mek_file) if s.mek_file else None,
        "SENTRY_DSN": s.sentry_dsn,
        "SENTRY_TRACES_SAMPLE_RATE": f"{s.sentry_traces_sample_rate:g}",
        "ACCESS_TOKEN_TTL_S": str(s.access_token_ttl_s),
        "REFRESH_TOKEN_TTL_S": str(s.refresh_token_ttl_s),
        "REFRESH_TOKEN_STORE": s.refresh_token_store,
        "TRUST_PROXY": str(s.trust_proxy),
        "RATE_LIMIT_AUTH": format_rate(s.rate_limit_auth),
        "RATE_LIMIT_USER": format_rate(s.rate_limit_user),
        "RATE_LIMIT_ANON": format_rate(s.rate_limit_anon),
        "CORS_ORIGINS": ",".join(s.cors_origins) or None,
        "SEARCH_TIMEOUT_S": f"{s.search_timeout_s:g}",
        "ATTACHMENT_MAX_BYTES": str(s.attachment_max_bytes),
        "ATTACHMENT_URL_TTL_S": str(s.attachment_url_ttl_s),
        "SHUTDOWN_TIMEOUT_S": f"{s.shutdown_timeout_s:g}",
        "MAX_BODY_BYTES": str(s.max_body_bytes),
        "REQUEST_TIMEOUT_S": f"{s.request_timeout_s:g}",
        "PUSH_PROVIDER": s.push_provider,
        "PUSH_URL": s.push_url,
        "PUSH_ACCESS_TOKEN": s.push_access_token,
        "PUSH_TIMEOUT_S": f"{s.push_timeout_s:g}",
        "IMPORT_MAX_BYTES": str(s.import_max_bytes),
        "IMPORT_MAX_ENTRIES": str(s.import_max_entries),
        "IMPORT_MAX_ATTACHMENTS": str(s.import_max_attachments),
        "IMPORT_PARSE_MEMORY_BYTES": str(s.import_parse_memory_bytes),
        "IMPORT_PARSE_CPU_S": str(s.import_parse_cpu_s),
        "IMPORT_PARSE_TIMEOUT_S": f"{s.import_parse_timeout_s:g}",
        "EXPORT_URL_TTL_S": str(s.export_url_ttl_s),
        "RATE_LIMIT_WS": format_rate(s.rate_limit_ws),
        "WS_MAX_CONNECTIONS_PER_USER": str(s.ws_max_connections_per_user),
        "MAX_DEVICES_PER_USER": str(s.max_devices_per_user),
        "METRICS_TOKEN": s.metrics_token,
        "EXPORT_RETENTION_DAYS": str(s.export_retention_days),
    }


class _Reader:
    """Reads variables, collecting every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.defaults = {v.name: v.default for v in VARIABLES}
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return self.defaults.get(name)
        return value.strip()

    def convert(self, name: str, parse: Callable[[str], Any], what: str) -> Any:
        value = self.raw(name)
        if value is None:
            return None
        try:
            return parse(value)
        except (ValueError, TypeError):
            self.problems.append(f"{name}={value!r} is not {what}")
            return parse(self.defaults[name]) if self.defaults.get(name) else None

    def integer(self, name: str, *, minimum: int, maximum: int | None = None) -> int:
        value = self.convert(name, int, "an integer")
        if value is None:
            return minimum
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            self.problems.append(f"{name}={value} must be at least {minimum}{upper}")
        return int(value)

    def number(self, name: str, *, minimum: float) -> float:
        value = self.convert(name, float, "a number")
        if value is None or value <= minimum:
            self.problems.append(f"{name}={self.raw(name)!r} must be a number above {minimum:g}")
            return float(self.defaults[name] or 1)
        return float(value)

    def boolean(self, name: str) -> bool | None:
        value = self.raw(name)
        if value is None:
            return None
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={value!r} is not a boolean (true or false)")
        return None

    def choice(self, name: str, options: tuple[str, ...]) -> str:
        value = (self.raw(name) or "").lower()
        if value not in options:
            self.problems.append(f"{name}={value!r} must be one of: {', '.join(options)}")
            return self.defaults[name] or options[0]
        return value

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.hostname or parts.path):
            self.problems.append(
                f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
            )
        else:
            try:
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                self.problems.append(f"{name} has an invalid port")
        return value


def _sentinels(reader: _Reader) -> tuple[tuple[str, int], ...]:
    raw = reader.raw("REDIS_SENTINELS")
    if not raw:
        return ()
    result = []
    for item in raw.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            reader.problems.append(
                f"REDIS_SENTINELS entry {item.strip()!r} is not host:port"
            )
            continue
        result.append((host.strip("[]"), int(port)))
    return tuple(result)


_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(text: str) -> tuple[int, int]:
    """``"10/min"`` → ``(10, 60)``: at most 10 requests per 60-second window."""
    count, _, unit = text.strip().partition("/")
    unit = unit.strip().lower()
    window = _RATE_UNITS.get(unit.rstrip("s") if unit not in _RATE_UNITS else unit)
    if window is None or not count.strip().isdigit() or int(count) < 1:
        raise ValueError(text)
    return int(count), window


def format_rate(rate: tuple[int, int]) -> str:
    count, window = rate
    unit = {1: "s", 60: "min", 3600: "h"}.get(window)
    return f"{count}/{unit}" if unit else f"{count}/{window}s"


def _rate(reader: _Reader, name: str) -> tuple[int, int]:
    value = reader.convert(name, parse_rate, "a rate like 10/min (per s, min or h)")
    return value if value is not None else parse_rate(reader.defaults[name] or "1/s")


def _sample_rate(reader: _Reader) -> float:
    value = reader.convert("SENTRY_TRACES_SAMPLE_RATE", float, "a number")
    if value is None or not 0.0 <= value <= 1.0:
        reader.problems.append(
            f"SENTRY_TRACES_SAMPLE_RATE={reader.raw('SENTRY_TRACES_SAMPLE_RATE')!r} must be "
            "between 0 and 1")
        return 0.1
    return float(value)


def _sslmode(reader: _Reader, env: str) -> str | None:
    """The spec's rule: DB_SSL=false → off; production → verify unless
    DB_SSL_REJECT_UNAUTHORIZED=false (encrypt without verifying); otherwise off.
    ``None`` means: leave it to the URL (``?sslmode=`` there always wins)."""
    ssl = reader.boolean("DB_SSL")
    reject = reader.boolean("DB_SSL_REJECT_UNAUTHORIZED")
    if ssl is False:
        return "disable"
    if env == "production" or ssl is True:
        return "require" if reject is False else "verify-full"
    return None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration; raise :class:`ConfigError` listing every problem."""
    environ = os.environ if environ is None else environ
    r = _Reader(environ)
    if not (environ.get("INNERA_ENV") or "").strip() and (environ.get("NODE_ENV") or "").strip():
        r.environ = {**environ, "INNERA_ENV": environ["NODE_ENV"]}
    env = r.choice("INNERA_ENV", ENVIRONMENTS)
    data_dir = Path(r.raw("INNERA_DATA_DIR") or "./var").expanduser().absolute()
    mek_file = r.raw("INNERA_MEK_FILE")

    settings = Settings(
        env=env,
        host=r.raw("HOST") or "0.0.0.0",
        http_server=r.choice("INNERA_HTTP_SERVER", HTTP_SERVERS),
        port=r.integer("PORT", minimum=0, maximum=65535),
        log_level=r.choice("LOG_LEVEL", LOG_LEVELS),
        data_dir=data_dir,
        database_url=r.url("DATABASE_URL", ("postgresql", "postgres")),
        db_pool_max=r.integer("DB_POOL_MAX", minimum=1, maximum=10_000),
        db_pool_min=r.integer("DB_POOL_MIN", minimum=0, maximum=10_000),
        db_idle_timeout_s=r.integer("DB_IDLE_TIMEOUT_MS", minimum=1) / 1000,
        db_connection_timeout_s=r.integer("DB_CONNECTION_TIMEOUT_MS", minimum=1) / 1000,
        db_sslmode=_sslmode(r, env),
        instances=r.integer("INNERA_INSTANCES", minimum=1),
        migrate_on_start=r.boolean("INNERA_MIGRATE_ON_START") is not False,
        workers=r.boolean("INNERA_WORKERS") is not False,
        redis_url=r.url("REDIS_URL", ("redis", "rediss", "valkey", "valkeys")),
        redis_sentinels=_sentinels(r),
        redis_sentinel_master=r.raw("REDIS_SENTINEL_MASTER"),
        s3_endpoint=r.url("S3_ENDPOINT", ("http", "https")),
        s3_bucket=r.raw("S3_BUCKET") or "innera-attachments",
        s3_region=r.raw("S3_REGION") or "us-east-1",
        s3_access_key_id=r.raw("S3_ACCESS_KEY_ID"),
        s3_secret_access_key=r.raw("S3_SECRET_ACCESS_KEY"),
        jwt_secret=r.raw("JWT_SECRET"),
        mek=r.raw("INNERA_MEK"),
        mek_file=Path(mek_file).expanduser() if mek_file else None,
        sentry_dsn=r.raw("SENTRY_DSN"),
        sentry_traces_sample_rate=_sample_rate(r),
        access_token_ttl_s=r.integer("ACCESS_TOKEN_TTL_S", minimum=10, maximum=86_400),
        refresh_token_ttl_s=r.integer("REFRESH_TOKEN_TTL_S", minimum=60),
        refresh_token_store=r.choice("REFRESH_TOKEN_STORE", ("redis", "postgres")),
        trust_proxy=r.integer("TRUST_PROXY", minimum=0, maximum=10),
        rate_limit_auth=_rate(r, "RATE_LIMIT_AUTH"),
        rate_limit_user=_rate(r, "RATE_LIMIT_USER"),
        rate_limit_anon=_rate(r, "RATE_LIMIT_ANON"),
        search_timeout_s=r.number("SEARCH_TIMEOUT_S", minimum=0),
        attachment_max_bytes=r.integer("ATTACHMENT_MAX_BYTES", minimum=1),
        attachment_url_ttl_s=r.integer("ATTACHMENT_URL_TTL_S", minimum=10, maximum=7 * 86400),
        cors_origins=tuple(o.strip().rstrip("/") for o in (r.raw("CORS_ORIGINS") or "").split(",")
                           if o.strip()),
        shutdown_timeout_s=r.number("SHUTDOWN_TIMEOUT_S", minimum=0),
        max_body_bytes=r.integer("MAX_BODY_BYTES", minimum=1),
        request_timeout_s=r.number("REQUEST_TIMEOUT_S", minimum=0),
        push_provider=r.choice("PUSH_PROVIDER", PUSH_PROVIDERS),
        push_url=r.url("PUSH_URL", ("http", "https")),
        push_access_token=r.raw("PUSH_ACCESS_TOKEN"),
        push_timeout_s=r.number("PUSH_TIMEOUT_S", minimum=0.1),
        import_max_bytes=r.integer("IMPORT_MAX_BYTES", minimum=1),
        import_max_entries=r.integer("IMPORT_MAX_ENTRIES", minimum=1),
        import_max_attachments=r.integer("IMPORT_MAX_ATTACHMENTS", minimum=0),
        import_parse_memory_bytes=r.integer("IMPORT_PARSE_MEMORY_BYTES", minimum=64 * 1024 * 1024),
        import_parse_cpu_s=r.integer("IMPORT_PARSE_CPU_S", minimum=1),
        import_parse_timeout_s=r.number("IMPORT_PARSE_TIMEOUT_S", minimum=0),
        export_url_ttl_s=r.integer("EXPORT_URL_TTL_S", minimum=60, maximum=7 * 86400),
        rate_limit_ws=_rate(r, "RATE_LIMIT_WS"),
        ws_max_connections_per_user=r.integer("WS_MAX_CONNECTIONS_PER_USER", minimum=1),
        max_devices_per_user=r.integer("MAX_DEVICES_PER_USER", minimum=1),
        metrics_token=r.raw("METRICS_TOKEN"),
        export_retention_days=r.integer("EXPORT_RETENTION_DAYS", minimum=1),
    )
    _check_consistency(settings, r.problems)
    if r.problems:
        raise ConfigError(r.problems)
    return settings


def _check_consistency(s: Settings, problems: list[str]) -> None:
    if s.db_pool_min > s.db_pool_max:
        problems.append(f"DB_POOL_MIN={s.db_pool_min} is above DB_POOL_MAX={s.db_pool_max}")
    if s.redis_sentinels and not s.redis_sentinel_master:
        problems.append("REDIS_SENTINEL_MASTER is required when REDIS_SENTINELS is set")
    if s.redis_sentinel_master and not s.redis_sentinels:
        problems.append("REDIS_SENTINELS is required when REDIS_SENTINEL_MASTER is set")
    if s.push_provider in ("fcm", "webhook") and not s.push_url:
        problems.append(f"PUSH_URL is required when PUSH_PROVIDER={s.push_provider}")
    if s.mek and s.mek_file:
        problems.append("set INNERA_MEK or INNERA_MEK_FILE, not both")
    if s.mek:
        from innera.crypto.keyring import KeyringError, parse_keyring

        try:
            parse_keyring(s.mek)
        except KeyringError as exc:
            problems.append(f"INNERA_MEK is invalid: {exc}")
    if s.production:
        required = {
            "DATABASE_URL": s.database_url,
            "REDIS_URL": s.redis_url or (s.redis_sentinels or None),
            "JWT_SECRET": s.jwt_secret,
            "INNERA_MEK (or INNERA_MEK_FILE)": s.mek or s.mek_file,
        }
        for name, value in required.items():
            if not value:
                problems.append(
                    f"{name} is required when INNERA_ENV=production "
                    "(the embedded default and generated secrets are refused in production)"
                )
        if s.jwt_secret and len(s.jwt_secret) < 32:
            problems.append("JWT_SECRET must be at least 32 characters in production")


def settings_fields() -> list[str]:
    """Field names of :class:`Settings` (used by tests that keep docs in step)."""
    return [f.name for f in fields(Settings)]
