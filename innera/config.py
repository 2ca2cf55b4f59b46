"""Settings from the environment (12-factor), validated once at start-up and passed down.

Every variable innera reads is declared once, in :data:`VARIABLES`: its name, its default
(as the text it would be written as), the section and field it fills, how its text is parsed
and validated (a :class:`Parser`), its meaning and whether it is a secret. That table is the
single source for :func:`load_settings`, for :meth:`Settings.masked` (``innera check-config``),
for ``conf/.env.example`` and for the README's configuration table (scripts/config_docs.py
writes both; a test keeps them in step).

:class:`Settings` holds one frozen dataclass per concern (``settings.db.pool_max``,
``settings.push.provider``, …), and a component is handed the section it needs rather than
the whole configuration (``open_refresh_store(settings.auth, …)``,
``make_provider(settings.push)``); only the code composing the process takes ``Settings``.

An invalid value raises :class:`ConfigError` naming the variable and what is wrong (every
problem at once); the CLI turns it into exit code 2 with the same message for ``serve`` and
``check-config``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit, urlunsplit

from innera.crypto.keyring import KeyringError, parse_keyring
from innera.crypto.kms import parse_kms_key_ids

ENVIRONMENTS = ("development", "test", "production")
HTTP_SERVERS = ("fast", "hypercorn")
PUSH_PROVIDERS = ("none", "expo", "fcm", "webhook")
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "critical")
LOG_FORMATS = ("auto", "json", "console")  # auto: innera.observability.logging decides
REFRESH_TOKEN_STORES = ("redis", "postgres")
#: the metrics port of ``innera worker`` when METRICS_PORT is unset (Prometheus' exporter
#: convention: 9090 is Prometheus itself)
WORKER_METRICS_PORT = 9091


class ConfigError(Exception):
    """The configuration is invalid; the message names every offending variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


# --- the sections -----------------------------------------------------------------------
# Their fields are filled from VARIABLES (no defaults here: a variable's default is written
# in the table only). Where a variable could belong to two concerns, it sits with the code
# that reads it: INNERA_INSTANCES with the pool sizing rule (db), LOG_LEVEL with the other
# diagnostics (observability), the master key with the key ring (crypto).


class _Section:
    """Base of the sections: the repr leaves the secrets out."""

    def __repr__(self) -> str:
        secret = {v.field for v in VARIABLES if v.secret and SECTIONS[v.section] is type(self)}
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                          for f in fields(self) if f.name not in secret)  # type: ignore[arg-type]
        return f"{type(self).__name__}({shown})"


@dataclass(frozen=True, repr=False)
class ServerSettings(_Section):
    """The process and its HTTP server: environment, listening address, request limits,
    CORS, proxy trust, the public base URL of links, what ``innera serve`` runs besides
    HTTP, the shutdown deadline and the drain delay inside it."""

    env: str
    host: str
    http_server: str
    port: int
    data_dir: Path
    shutdown_timeout_s: float
    shutdown_drain_delay_s: float
    max_body_bytes: int
    request_timeout_s: float
    cors_origins: tuple[str, ...]
    trust_proxy: int
    public_url: str | None
    workers: bool
    migrate_on_start: bool


@dataclass(frozen=True, repr=False)
class DatabaseSettings(_Section):
    """PostgreSQL: the URL (``None``: embedded) and the direct one for session-level work
    (``migration_url``; ``None``: ``url``), the pool, server-side prepared statements, TLS and
    the sizing rule's instance count. ``sslmode`` ``None`` leaves TLS to the URL
    (``?sslmode=`` always wins); ``ssl_root_cert`` is ``"system"`` or a bundle file's absolute
    path, used when TLS is verified (``?sslrootcert=`` wins)."""

    url: str | None
    migration_url: str | None
    pool_max: int
    pool_min: int
    idle_timeout_s: float
    connection_timeout_s: float
    prepared_statements: bool
    sslmode: str | None
    ssl_root_cert: str
    instances: int


@dataclass(frozen=True, repr=False)
class RedisSettings(_Section):
    """``url`` alone: a plain server (``redis://``, ``rediss://`` = TLS, credentials and DB
    in the URL). With ``sentinels``: the master named ``sentinel_master`` is discovered through
    them; ``url``, when given, still supplies password, DB and TLS (its host is ignored).
    ``None`` and no sentinels: the embedded Valkey. The two timeouts are the client's own
    constants, not read from the environment (the defaults below are theirs, and let a test
    or a tool build the section from a URL alone)."""

    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None
    socket_timeout_s: float = 5.0
    connect_timeout_s: float = 2.0


@dataclass(frozen=True, repr=False)
class StorageSettings(_Section):
    """Attachment storage: S3 (``s3_endpoint`` ``None``: the local disk outside production)
    and the attachment size and URL lifetime."""

    s3_endpoint: str | None
    s3_bucket: str
    s3_region: str
    s3_access_key_id: str | None
    s3_secret_access_key: str | None
    attachment_max_bytes: int
    attachment_url_ttl_s: int


@dataclass(frozen=True, repr=False)
class AuthSettings(_Section):
    """Tokens: the JWT secret (``None``: generated under the data dir outside production),
    their lifetimes and where refresh tokens live."""

    jwt_secret: str | None
    access_token_ttl_s: int
    refresh_token_ttl_s: int
    refresh_token_store: str


@dataclass(frozen=True, repr=False)
class CryptoSettings(_Section):
    """The master encryption keys: local ones, inline or in a file, and AWS KMS keys
    (``mek_kms_key_ids``: ``(version, key id)`` pairs, newest first; none of the three:
    a local key generated under the data dir outside production), and the cache of
    unwrapped data keys."""

    mek: str | None
    mek_file: Path | None
    mek_kms_key_ids: tuple[tuple[int, str], ...]
    dek_cache_size: int
    dek_cache_ttl_s: float


@dataclass(frozen=True, repr=False)
class LimitSettings(_Section):
    """Per-client limits: rate limits (``(count, window_s)``), WebSockets and push devices
    per user, the search scan's time budget."""

    rate_limit_auth: tuple[int, int]
    rate_limit_user: tuple[int, int]
    rate_limit_anon: tuple[int, int]
    rate_limit_ws: tuple[int, int]
    ws_max_connections_per_user: int
    max_devices_per_user: int
    search_timeout_s: float


@dataclass(frozen=True, repr=False)
class PushSettings(_Section):
    """The push provider (``none``: not sent), its endpoint, token and request timeout."""

    provider: str
    url: str | None
    access_token: str | None
    timeout_s: float


@dataclass(frozen=True, repr=False)
class ObservabilitySettings(_Section):
    """Logs, Sentry, the /metrics token and port, and how often the active users are
    counted. ``metrics_port`` ``None``: ``innera serve`` serves /metrics on its public port
    and ``innera worker`` on :data:`WORKER_METRICS_PORT`."""

    log_level: str
    log_format: str
    sentry_dsn: str | None
    sentry_traces_sample_rate: float
    sentry_untraced_paths: tuple[str, ...]
    metrics_token: str | None
    metrics_port: int | None
    active_users_interval_s: float


@dataclass(frozen=True, repr=False)
class JobSettings(_Section):
    """Limits of the import and export jobs and how long export archives are kept."""

    import_max_bytes: int
    import_max_entries: int
    import_max_attachments: int
    import_parse_memory_bytes: int
    import_parse_cpu_s: int
    import_parse_timeout_s: float
    export_url_ttl_s: int
    export_retention_days: int


@dataclass(frozen=True)
class Settings:
    """The validated configuration, one section per concern. Build it with
    :func:`load_settings`."""

    server: ServerSettings
    db: DatabaseSettings
    redis: RedisSettings
    storage: StorageSettings
    auth: AuthSettings
    crypto: CryptoSettings
    limits: LimitSettings
    push: PushSettings
    observability: ObservabilitySettings
    jobs: JobSettings

    @property
    def production(self) -> bool:
        return self.server.env == "production"

    @property
    def embedded_postgres(self) -> bool:
        return self.db.url is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis.url is None and not self.redis.sentinels

    @property
    def local_storage(self) -> bool:
        return self.storage.s3_endpoint is None and not self.production

    def masked(self) -> dict[str, str]:
        """The effective configuration by variable name, secrets masked (for check-config):
        a secret URL keeps all but its password, any other secret is ``********``."""
        shown: dict[str, str] = {}
        for var in VARIABLES:
            value = var.parse.show(getattr(getattr(self, var.section), var.field))
            if value is None or value == "":
                shown[var.name] = "(unset)"
            elif var.secret:
                shown[var.name] = mask_url(value) if isinstance(var.parse, Url) else "********"
            else:
                shown[var.name] = value
        return shown


#: Section name (the attribute of :class:`Settings`) → its dataclass.
SECTIONS: dict[str, type[_Section]] = {f.name: get_type_hints(Settings)[f.name]
                                       for f in fields(Settings)}


# --- parsing ----------------------------------------------------------------------------


class _Reader:
    """Reads variables, collecting every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        #: values parsed so far, by variable name (a parser may depend on an earlier one)
        self.parsed: dict[str, Any] = {}

    def raw(self, name: str) -> str | None:
        """The variable's text, stripped; its default when unset or blank."""
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return DEFAULTS.get(name)
        return value.strip()

    def convert(self, name: str, parse: Callable[[str], Any], what: str) -> Any:
        """``parse(text)``; on failure a problem, and the default parsed (or ``None``)."""
        value = self.raw(name)
        if value is None:
            return None
        try:
            return parse(value)
        except (ValueError, TypeError):
            self.problems.append(f"{name}={value!r} is not {what}")
            return parse(DEFAULTS[name]) if DEFAULTS.get(name) else None

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


class Parser:
    """How a variable's text becomes its field's value (:meth:`parse`, which reports problems
    through the reader and still returns a usable value), and how that value is shown again
    by ``check-config`` (:meth:`show`; ``None``: unset)."""

    def parse(self, name: str, read: _Reader) -> Any:
        return read.raw(name)

    def show(self, value: Any) -> str | None:
        return None if value is None else str(value)


class Text(Parser):
    """Any text, as written."""


@dataclass(frozen=True)
class Integer(Parser):
    """An integer in ``minimum`` .. ``maximum``."""

    minimum: int
    maximum: int | None = None

    def parse(self, name: str, read: _Reader) -> int:
        value = read.convert(name, int, "an integer")
        if value is None:
            return self.minimum
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            upper = f" and at most {self.maximum}" if self.maximum is not None else ""
            read.problems.append(f"{name}={value} must be at least {self.minimum}{upper}")
        return int(value)


@dataclass(frozen=True)
class Millis(Parser):
    """An integer of milliseconds (at least ``minimum``), held in seconds."""

    minimum: int

    def parse(self, name: str, read: _Reader) -> float:
        return Integer(self.minimum).parse(name, read) / 1000

    def show(self, value: Any) -> str | None:
        return str(round(value * 1000))


@dataclass(frozen=True)
class Number(Parser):
    """A finite number above ``above`` (or equal to it too, when ``inclusive``)."""

    above: float
    inclusive: bool = False

    def parse(self, name: str, read: _Reader) -> float:
        value = read.convert(name, float, "a number")
        if value is None or not math.isfinite(value) or value < self.above \
                or (value == self.above and not self.inclusive):
            bound = "at least" if self.inclusive else "above"
            read.problems.append(f"{name}={read.raw(name)!r} must be a number {bound} "
                                 f"{self.above:g}")
            return float(DEFAULTS[name] or 1)
        return float(value)

    def show(self, value: Any) -> str | None:
        return f"{value:g}"


class Share(Parser):
    """A number from 0 to 1."""

    def parse(self, name: str, read: _Reader) -> float:
        value = read.convert(name, float, "a number")
        if value is None or not 0.0 <= value <= 1.0:
            read.problems.append(f"{name}={read.raw(name)!r} must be between 0 and 1")
            return float(DEFAULTS[name] or 0)
        return float(value)

    def show(self, value: Any) -> str | None:
        return f"{value:g}"


@dataclass(frozen=True)
class Flag(Parser):
    """A boolean (1/true/yes/on, 0/false/no/off); an invalid one counts as the default.
    ``shown``: how check-config writes true and false."""

    shown: tuple[str, str] = ("true", "false")

    def parse(self, name: str, read: _Reader) -> bool:
        value = read.boolean(name)
        return value if value is not None else (DEFAULTS[name] or "").lower() in (
            "1", "true", "yes", "on")

    def show(self, value: Any) -> str | None:
        return self.shown[0] if value else self.shown[1]


@dataclass(frozen=True)
class Choice(Parser):
    """One of ``options`` (case-insensitive)."""

    options: tuple[str, ...]

    def parse(self, name: str, read: _Reader) -> str:
        value = (read.raw(name) or "").lower()
        if value not in self.options:
            read.problems.append(f"{name}={value!r} must be one of: {', '.join(self.options)}")
            return DEFAULTS[name] or self.options[0]
        return value


@dataclass(frozen=True)
class Url(Parser):
    """A URL with one of ``schemes`` and a valid port."""

    schemes: tuple[str, ...]

    def parse(self, name: str, read: _Reader) -> str | None:
        value = read.raw(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in self.schemes or not (parts.hostname or parts.path):
            read.problems.append(f"{name} must be a URL starting with "
                                 f"{' or '.join(s + '://' for s in self.schemes)}")
        else:
            try:
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                read.problems.append(f"{name} has an invalid port")
        return value


class PublicUrl(Parser):
    """An ``http(s)://`` base URL with a host and no query, fragment or credentials, held
    without its trailing ``/`` (``https://api.innera.app/`` → ``https://api.innera.app``), so
    a link is this plus a path starting with ``/``."""

    def parse(self, name: str, read: _Reader) -> str | None:
        value = read.raw(name)
        if value is None:
            return None
        parts = urlsplit(value)
        problem = None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = "must be an absolute URL starting with http:// or https://"
        elif parts.query or parts.fragment or "?" in value or "#" in value:
            problem = "must not have a query string or fragment"
        elif parts.username is not None or parts.password is not None:
            problem = "must not contain credentials"
        else:
            try:
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                problem = "has an invalid port"
        if problem is not None:
            read.problems.append(f"{name}={value!r} {problem}")
            return None
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class FilePath(Parser):
    """A file system path, ``~`` expanded; made absolute (against the working directory at
    start-up) when ``absolute``."""

    absolute: bool = False

    def parse(self, name: str, read: _Reader) -> Path | None:
        value = read.raw(name)
        if value is None:
            return None
        path = Path(value).expanduser()
        return path.absolute() if self.absolute else path


class KmsKeyIds(Parser):
    """AWS KMS keys: ``KEY`` (version 1) or ``VERSION:KEY,…``, each a key id, key ARN, alias
    name or alias ARN; held as ``((version, key), …)``, newest first (``()``: unset)."""

    def parse(self, name: str, read: _Reader) -> tuple[tuple[int, str], ...]:
        value = read.raw(name)
        if value is None:
            return ()
        try:
            keys = parse_kms_key_ids(value)
        except KeyringError as exc:
            read.problems.append(f"{name} is invalid: {exc}")
            return ()
        return tuple(sorted(keys.items(), reverse=True))

    def show(self, value: Any) -> str | None:
        return ",".join(f"{version}:{key}" for version, key in value) or None

class Port(Parser):
    """A TCP port, 0 to 65535 (0 picks a free one); unset: ``None``."""

    def parse(self, name: str, read: _Reader) -> int | None:
        if read.raw(name) is None:
            return None
        return Integer(0, 65535).parse(name, read)


class Rate(Parser):
    """A rate like ``10/min`` (per s, min or h), held as ``(count, window_s)``."""

    def parse(self, name: str, read: _Reader) -> tuple[int, int]:
        value = read.convert(name, parse_rate, "a rate like 10/min (per s, min or h)")
        return value if value is not None else parse_rate(DEFAULTS[name] or "1/s")

    def show(self, value: Any) -> str | None:
        return format_rate(value)


class Origins(Parser):
    """Comma-separated CORS origins (a trailing ``/`` dropped), held as a tuple."""

    def parse(self, name: str, read: _Reader) -> tuple[str, ...]:
        return tuple(o.strip().rstrip("/") for o in (read.raw(name) or "").split(",")
                     if o.strip())

    def show(self, value: Any) -> str | None:
        return ",".join(value) or None


class PathPrefixes(Parser):
    """Comma-separated URL path prefixes, each starting with ``/`` (a trailing ``/``
    dropped), held as a tuple; ``none`` for none."""

    def parse(self, name: str, read: _Reader) -> tuple[str, ...]:
        raw = read.raw(name) or ""
        if raw.lower() == "none":
            return ()
        prefixes = []
        for item in raw.split(","):
            prefix = item.strip()
            if not prefix:
                continue
            if not prefix.startswith("/") or any(c.isspace() for c in prefix) or "?" in prefix:
                read.problems.append(
                    f"{name} entry {prefix!r} is not a URL path prefix (like /health); "
                    "write none to trace every path")
                continue
            prefixes.append(prefix.rstrip("/") or "/")
        return tuple(prefixes)

    def show(self, value: Any) -> str | None:
        return ",".join(value) or "none"


class HostPorts(Parser):
    """Comma-separated ``host:port`` addresses (IPv6 hosts in brackets), held as a tuple of
    ``(host, port)``; each bad entry is a problem of its own."""

    def parse(self, name: str, read: _Reader) -> tuple[tuple[str, int], ...]:
        raw = read.raw(name)
        if not raw:
            return ()
        result = []
        for item in raw.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                read.problems.append(f"{name} entry {item.strip()!r} is not host:port")
                continue
            result.append((host.strip("[]"), int(port)))
        return tuple(result)

    def show(self, value: Any) -> str | None:
        return ",".join(f"{h}:{p}" for h, p in value) or None


@dataclass(frozen=True)
class SslMode(Parser):
    """DB_SSL and DB_SSL_REJECT_UNAUTHORIZED together give libpq's ``sslmode``, by the
    spec's rule: DB_SSL=false → ``disable``; production (or DB_SSL=true) → ``verify-full``,
    or ``require`` (encrypt without verifying) when DB_SSL_REJECT_UNAUTHORIZED=false;
    otherwise ``None``: left to the URL. Both variables fill that one field: it is parsed
    with the first, and each shows its own side of it (``verify``: the second's)."""

    verify: bool = False

    def parse(self, name: str, read: _Reader) -> str | None:
        ssl = read.boolean("DB_SSL")
        reject = read.boolean("DB_SSL_REJECT_UNAUTHORIZED")
        if ssl is False:
            return "disable"
        if read.parsed["INNERA_ENV"] == "production" or ssl is True:
            return "require" if reject is False else "verify-full"
        return None

    def show(self, value: Any) -> str | None:
        if self.verify:
            return "false" if value == "require" else "true"
        return "false" if value in (None, "disable") else "true"


class RootCert(Parser):
    """``system`` (the operating system's trust store), or a readable file holding at least
    one PEM certificate (made absolute). A file that cannot serve is a problem now rather
    than a refused connection later."""

    def parse(self, name: str, read: _Reader) -> str:
        value = read.raw(name) or "system"
        if value.lower() == "system":
            return "system"
        path = Path(value).expanduser().absolute()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            read.problems.append(f"{name}={value}: no such file (a CA bundle in PEM, or "
                                 "`system` for the operating system's trust store)")
        except IsADirectoryError:
            read.problems.append(f"{name}={value} is a directory: name the CA bundle file")
        except OSError as exc:
            read.problems.append(f"{name}={value} cannot be read: {exc.strerror}")
        else:
            if b"-----BEGIN CERTIFICATE-----" not in data:
                read.problems.append(f"{name}={value} holds no PEM certificate "
                                     "(-----BEGIN CERTIFICATE-----)")
        return str(path)


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


# --- the variables ----------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """One environment variable: its default (``None``: unset), the section and field of
    :class:`Settings` it fills, its parser, its meaning (the docs) and whether it is a
    secret (masked by check-config, left out of reprs)."""

    name: str
    default: str | None
    section: str
    field: str
    parse: Parser
    meaning: str
    secret: bool = False


_V = Variable
VARIABLES: tuple[Variable, ...] = (
    # server (INNERA_ENV first: DB_SSL's rule depends on it)
    _V("INNERA_ENV", "development", "server", "env", Choice(ENVIRONMENTS),
       "development | test | production (`NODE_ENV` is read when this is unset)"),
    _V("HOST", "0.0.0.0", "server", "host", Text(), "address the HTTP server binds"),
    _V("INNERA_HTTP_SERVER", "fast", "server", "http_server", Choice(HTTP_SERVERS),
       "fast | hypercorn: the HTTP/1.1 + WebSocket server (fast: innera's Trio-native "
       "server, innera/http/fast/; hypercorn for HTTP/2 or TLS in process)"),
    _V("PORT", "3000", "server", "port", Integer(0, 65535),
       "port the HTTP server binds (0 picks a free port)"),
    _V("INNERA_DATA_DIR", "./var", "server", "data_dir", FilePath(absolute=True),
       "local state: embedded PostgreSQL/Valkey data, local attachments, generated keys"),
    _V("SHUTDOWN_TIMEOUT_S", "30", "server", "shutdown_timeout_s", Number(above=0),
       "hard deadline of the graceful shutdown, counted from the signal (the drain delay "
       "included); past it the process exits 1"),
    _V("SHUTDOWN_DRAIN_DELAY_S", "0", "server", "shutdown_drain_delay_s",
       Number(above=0, inclusive=True),
       "on SIGTERM, readiness answers 503 at once but the listeners keep accepting and "
       "serving for this long before the drain (5 behind Kubernetes or a TCP balancer, "
       "which keep sending new connections for a moment); must be below SHUTDOWN_TIMEOUT_S"),
    _V("MAX_BODY_BYTES", "1048576", "server", "max_body_bytes", Integer(1),
       "largest request body; larger answers 413"),
    _V("REQUEST_TIMEOUT_S", "30", "server", "request_timeout_s", Number(above=0),
       "longest an API operation may run; past it: 503 request_timeout (its queries are "
       "cancelled server-side)"),
    _V("CORS_ORIGINS", None, "server", "cors_origins", Origins(),
       "comma-separated origins allowed by CORS (`*` for any); unset: no CORS headers"),
    _V("TRUST_PROXY", "0", "server", "trust_proxy", Integer(0, 10),
       "proxy hops to trust in X-Forwarded-For for the client IP (0: the socket peer)"),
    _V("PUBLIC_URL", None, "server", "public_url", PublicUrl(),
       "the API's public base URL (`https://api.innera.app`): every link the API returns "
       "(upload and download URLs of the local store, `Location` headers) is absolute on it; "
       "unset: links are relative to the URL the client called"),
    _V("INNERA_WORKERS", "1", "server", "workers", Flag(shown=("1", "0")),
       "`0` turns the job workers and the job reconciler off in `innera serve` (run "
       "them with `innera worker` instead)"),
    _V("INNERA_MIGRATE_ON_START", "true", "server", "migrate_on_start", Flag(),
       "apply pending migrations when the server starts"),
    # db
    _V("DATABASE_URL", None, "db", "url", Url(("postgresql", "postgres")),
       "PostgreSQL URL; unset outside production starts an embedded PostgreSQL", True),
    _V("DATABASE_MIGRATION_URL", None, "db", "migration_url", Url(("postgresql", "postgres")),
       "direct PostgreSQL URL (not through PgBouncer) for migrations and their session-level "
       "advisory lock; unset: DATABASE_URL", True),
    _V("DB_POOL_MAX", "20", "db", "pool_max", Integer(1, 10_000),
       "most pooled PostgreSQL connections per instance"),
    _V("DB_POOL_MIN", "5", "db", "pool_min", Integer(0, 10_000),
       "pooled connections kept open while idle"),
    _V("DB_IDLE_TIMEOUT_MS", "30000", "db", "idle_timeout_s", Millis(1),
       "idle time after which a pooled connection closes"),
    _V("DB_CONNECTION_TIMEOUT_MS", "5000", "db", "connection_timeout_s", Millis(1),
       "longest wait for a pooled connection before answering 503 database_unavailable"),
    _V("DB_PREPARED_STATEMENTS", "true", "db", "prepared_statements", Flag(),
       "`false` stops server-side prepared statements (needed behind PgBouncer in "
       "transaction mode)"),
    _V("DB_SSL", None, "db", "sslmode", SslMode(),
       "`false` turns TLS to PostgreSQL off; unset: on (verified) in production only"),
    _V("DB_SSL_REJECT_UNAUTHORIZED", "true", "db", "sslmode", SslMode(verify=True),
       "`false` encrypts without verifying the server certificate (production)"),
    _V("DB_SSL_ROOT_CERT", "system", "db", "ssl_root_cert", RootCert(),
       "CA bundle (PEM file) the PostgreSQL server certificate is verified against, or "
       "`system` for the operating system's trust store; used when TLS is verified "
       "(`?sslrootcert=` in the URL wins)"),
    _V("INNERA_INSTANCES", "1", "db", "instances", Integer(1),
       "instances sharing the database; warns when DB_POOL_MAX × this > "
       "max_connections − 10"),
    # redis
    _V("REDIS_URL", None, "redis", "url", Url(("redis", "rediss", "valkey", "valkeys")),
       "Redis URL (`redis://:password@host:6379/0`, `rediss://` for TLS); unset outside "
       "production starts an embedded Valkey", True),
    _V("REDIS_SENTINELS", None, "redis", "sentinels", HostPorts(),
       "comma-separated `host:port` Sentinel addresses (used instead of REDIS_URL's host)"),
    _V("REDIS_SENTINEL_MASTER", None, "redis", "sentinel_master", Text(),
       "master name monitored by the Sentinels"),
    # storage
    _V("S3_ENDPOINT", None, "storage", "s3_endpoint", Url(("http", "https")),
       "S3-compatible endpoint (MinIO, R2); unset outside production stores attachments "
       "under the data dir"),
    _V("S3_BUCKET", "innera-attachments", "storage", "s3_bucket", Text(),
       "bucket for attachments"),
    _V("S3_REGION", "us-east-1", "storage", "s3_region", Text(), "S3 region"),
    _V("S3_ACCESS_KEY_ID", None, "storage", "s3_access_key_id", Text(),
       "S3 access key id", True),
    _V("S3_SECRET_ACCESS_KEY", None, "storage", "s3_secret_access_key", Text(),
       "S3 secret access key", True),
    _V("ATTACHMENT_MAX_BYTES", "26214400", "storage", "attachment_max_bytes", Integer(1),
       "largest attachment (25 MiB)"),
    _V("ATTACHMENT_URL_TTL_S", "900", "storage", "attachment_url_ttl_s",
       Integer(10, 7 * 86400), "lifetime of upload and download URLs"),
    # auth
    _V("JWT_SECRET", None, "auth", "jwt_secret", Text(),
       "HS256 secret for access tokens; required in production, generated under the data "
       "dir otherwise", True),
    _V("ACCESS_TOKEN_TTL_S", "900", "auth", "access_token_ttl_s", Integer(10, 86_400),
       "lifetime of access tokens (JWT) in seconds"),
    _V("REFRESH_TOKEN_TTL_S", "2592000", "auth", "refresh_token_ttl_s", Integer(60),
       "lifetime of refresh tokens in seconds (30 days)"),
    _V("REFRESH_TOKEN_STORE", "redis", "auth", "refresh_token_store",
       Choice(REFRESH_TOKEN_STORES),
       "redis | postgres: where hashed refresh tokens live (postgres keeps refresh "
       "working while Redis is down)"),
    # crypto
    _V("INNERA_MEK", None, "crypto", "mek", Text(),
       "master encryption key: base64 of 32 bytes, or `VERSION:BASE64,…` during key "
       "rotation (the highest version wraps new keys); required in production (or "
       "INNERA_MEK_FILE or INNERA_MEK_KMS_KEY_ID), generated under the data dir otherwise "
       "(not when INNERA_MEK_KMS_KEY_ID is set)", True),
    _V("INNERA_MEK_FILE", None, "crypto", "mek_file", FilePath(),
       "file holding the master encryption key (base64)"),
    _V("INNERA_MEK_KMS_KEY_ID", None, "crypto", "mek_kms_key_ids", KmsKeyIds(),
       "the master key in AWS KMS: a key id, key ARN, alias (`alias/…`) or alias ARN "
       "(version 1), or `VERSION:KEY,…` with versions shared with INNERA_MEK (rotation "
       "between local and KMS keys); the standard AWS environment gives credentials, region "
       "and endpoint (`AWS_ENDPOINT_URL_KMS`)"),
    _V("INNERA_DEK_CACHE_SIZE", "10000", "crypto", "dek_cache_size", Integer(0, 10_000_000),
       "unwrapped data keys kept in memory per instance (least recently used evicted; "
       "0: none, every read unwraps, a KMS Decrypt with AWS KMS)"),
    _V("INNERA_DEK_CACHE_TTL_S", "300", "crypto", "dek_cache_ttl_s", Number(above=0),
       "how long an unwrapped data key stays cached; also how long a running instance "
       "still reads entries after their KMS key was disabled"),
    # limits
    _V("RATE_LIMIT_AUTH", "10/min", "limits", "rate_limit_auth", Rate(),
       "limit per client IP on the auth routes"),
    _V("RATE_LIMIT_USER", "300/min", "limits", "rate_limit_user", Rate(),
       "limit per user on authenticated routes"),
    _V("RATE_LIMIT_ANON", "100/min", "limits", "rate_limit_anon", Rate(),
       "limit per client IP on other anonymous routes"),
    _V("RATE_LIMIT_WS", "30/min", "limits", "rate_limit_ws", Rate(),
       "WebSocket handshakes (/v1/ws) per user and, separately, per client IP"),
    _V("WS_MAX_CONNECTIONS_PER_USER", "10", "limits", "ws_max_connections_per_user",
       Integer(1), "open WebSockets one user may hold on one instance"),
    _V("MAX_DEVICES_PER_USER", "20", "limits", "max_devices_per_user", Integer(1),
       "push devices one user may register"),
    _V("SEARCH_TIMEOUT_S", "5", "limits", "search_timeout_s", Number(above=0),
       "longest search scan; past it the results so far are returned with complete=false"),
    # push
    _V("PUSH_PROVIDER", "none", "push", "provider", Choice(PUSH_PROVIDERS),
       "none | expo | fcm | webhook: where push notifications go (none: not sent)"),
    _V("PUSH_URL", None, "push", "url", Url(("http", "https")),
       "push provider endpoint; default for expo: Expo's send API; required for fcm "
       "(`…/v1/projects/PROJECT/messages:send`) and webhook"),
    _V("PUSH_ACCESS_TOKEN", None, "push", "access_token", Text(),
       "bearer token sent to the push provider (Expo access token, FCM OAuth token, "
       "webhook secret)", True),
    _V("PUSH_TIMEOUT_S", "10", "push", "timeout_s", Number(above=0.1),
       "longest wait for one push provider request"),
    # observability
    _V("LOG_LEVEL", "info", "observability", "log_level", Choice(LOG_LEVELS),
       "trace | debug | info | warn | error | fatal"),
    _V("LOG_FORMAT", "auto", "observability", "log_format", Choice(LOG_FORMATS),
       "json | console (structlog's console renderer, coloured on a terminal; the same "
       "redaction); auto: console when stdout is a terminal outside production, else json"),
    _V("SENTRY_DSN", None, "observability", "sentry_dsn", Text(),
       "Sentry DSN; unset disables error reporting", True),
    _V("SENTRY_TRACES_SAMPLE_RATE", "0.1", "observability", "sentry_traces_sample_rate",
       Share(), "share of requests, WebSocket sessions and jobs traced by Sentry "
       "(0..1; 0 turns tracing off; needs SENTRY_DSN)"),
    _V("SENTRY_TRACES_SAMPLER", "/health,/metrics", "observability", "sentry_untraced_paths",
       PathPrefixes(), "comma-separated URL path prefixes never traced (`/health` also "
       "covers `/health/ready`): probes and scrapes make no transaction; `none` traces "
       "every path"),
    _V("METRICS_TOKEN", None, "observability", "metrics_token", Text(),
       "when set, GET /metrics needs `Authorization: Bearer <token>` (401 otherwise)", True),
    _V("METRICS_PORT", None, "observability", "metrics_port", Port(),
       "port (on HOST) of a second listener answering only GET /metrics and /health: "
       "`innera worker` always opens it (unset: 9091); set for `innera serve`, /metrics "
       "moves there and PORT answers it 404"),
    _V("ACTIVE_USERS_INTERVAL_S", "10", "observability", "active_users_interval_s",
       Number(above=0),
       "how often `innera serve` adds the users it authenticated to Redis and recounts "
       "`innera_active_users` (visible within this interval)"),
    # jobs
    _V("IMPORT_MAX_BYTES", "52428800", "jobs", "import_max_bytes", Integer(1),
       "largest import upload (50 MiB); also the most JSON an import's archive may "
       "expand to (its attachments: 4 times this, each reference counted)"),
    _V("IMPORT_MAX_ENTRIES", "100000", "jobs", "import_max_entries", Integer(1),
       "most entries one import may hold; more fails the job with too_many_entries"),
    _V("IMPORT_MAX_ATTACHMENTS", "5000", "jobs", "import_max_attachments", Integer(0),
       "most attachment references one import may hold; more fails the job with "
       "too_many_attachments"),
    _V("IMPORT_PARSE_MEMORY_BYTES", "536870912", "jobs", "import_parse_memory_bytes",
       Integer(64 * 1024 * 1024),
       "address space of the child process that parses an import file (512 MiB); "
       "a file needing more fails with import_too_large"),
    _V("IMPORT_PARSE_CPU_S", "60", "jobs", "import_parse_cpu_s", Integer(1),
       "CPU seconds the import parser's child process may use (import_too_large past it)"),
    _V("IMPORT_PARSE_TIMEOUT_S", "120", "jobs", "import_parse_timeout_s", Number(above=0),
       "wall-clock limit of the import parser's child process (import_too_large past it)"),
    _V("EXPORT_URL_TTL_S", "86400", "jobs", "export_url_ttl_s", Integer(60, 7 * 86400),
       "lifetime of an export's download link (24 h)"),
    _V("EXPORT_RETENTION_DAYS", "7", "jobs", "export_retention_days", Integer(1),
       "export archives are deleted this many days after they were made (the job then "
       "shows `expired`)"),
)
del _V
VARIABLE_NAMES = frozenset(v.name for v in VARIABLES) | {"NODE_ENV"}
DEFAULTS: dict[str, str | None] = {v.name: v.default for v in VARIABLES}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration; raise :class:`ConfigError` listing every problem.

    The variables are parsed in table order into their sections; a field several variables
    fill (``db.sslmode``) is parsed once, with the first of them."""
    environ = os.environ if environ is None else environ
    if not (environ.get("INNERA_ENV") or "").strip() and (environ.get("NODE_ENV") or "").strip():
        environ = {**environ, "INNERA_ENV": environ["NODE_ENV"]}
    read = _Reader(environ)
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for var in VARIABLES:
        section = values[var.section]
        if var.field not in section:
            section[var.field] = read.parsed[var.name] = var.parse.parse(var.name, read)
    settings = Settings(**{name: cls(**values[name]) for name, cls in SECTIONS.items()})
    _check_consistency(settings, read.problems)
    if read.problems:
        raise ConfigError(read.problems)
    return settings


def _check_consistency(s: Settings, problems: list[str]) -> None:
    db, redis = s.db, s.redis
    delay, timeout = s.server.shutdown_drain_delay_s, s.server.shutdown_timeout_s
    if delay >= timeout:
        problems.append(
            f"SHUTDOWN_DRAIN_DELAY_S={delay:g} must be below SHUTDOWN_TIMEOUT_S={timeout:g}: "
            "the delay counts inside the shutdown deadline, and the drain needs time after it "
            f"(raise SHUTDOWN_TIMEOUT_S, e.g. to {delay + 30:g})")
    if db.pool_min > db.pool_max:
        problems.append(f"DB_POOL_MIN={db.pool_min} is above DB_POOL_MAX={db.pool_max}")
    if redis.sentinels and not redis.sentinel_master:
        problems.append("REDIS_SENTINEL_MASTER is required when REDIS_SENTINELS is set")
    if redis.sentinel_master and not redis.sentinels:
        problems.append("REDIS_SENTINELS is required when REDIS_SENTINEL_MASTER is set")
    if db.migration_url and not db.url:
        problems.append("DATABASE_MIGRATION_URL needs DATABASE_URL (the embedded PostgreSQL "
                        "has no pooler to bypass)")
    for name, url in (("DATABASE_URL", db.url), ("DATABASE_MIGRATION_URL", db.migration_url)):
        if url:
            _check_tls(name, url, db, problems)
    if s.push.provider in ("fcm", "webhook") and not s.push.url:
        problems.append(f"PUSH_URL is required when PUSH_PROVIDER={s.push.provider}")
    if s.crypto.mek and s.crypto.mek_file:
        problems.append("set INNERA_MEK or INNERA_MEK_FILE, not both")
    if s.crypto.mek:
        try:
            both = set(parse_keyring(s.crypto.mek)) & {v for v, _ in s.crypto.mek_kms_key_ids}
        except KeyringError as exc:
            problems.append(f"INNERA_MEK is invalid: {exc}")
        else:
            if both:
                problems.append(
                    f"INNERA_MEK and INNERA_MEK_KMS_KEY_ID both configure master key "
                    f"version(s) {', '.join(map(str, sorted(both)))}: each key needs a version "
                    f"of its own (e.g. INNERA_MEK_KMS_KEY_ID={max(both) + 1}:KEY_ARN, then "
                    f"innera keys rotate --to {max(both) + 1})")
    if s.production:
        required = {
            "DATABASE_URL": db.url,
            "REDIS_URL": redis.url or (redis.sentinels or None),
            "JWT_SECRET": s.auth.jwt_secret,
            "INNERA_MEK (or INNERA_MEK_FILE or INNERA_MEK_KMS_KEY_ID)":
                s.crypto.mek or s.crypto.mek_file or s.crypto.mek_kms_key_ids,
        }
        for name, value in required.items():
            if not value:
                problems.append(
                    f"{name} is required when INNERA_ENV=production "
                    "(the embedded default and generated secrets are refused in production)"
                )
        if s.auth.jwt_secret and len(s.auth.jwt_secret) < 32:
            problems.append("JWT_SECRET must be at least 32 characters in production")


def _check_tls(name: str, url: str, db: DatabaseSettings, problems: list[str]) -> None:
    """The CA bundle a verified connection to ``url`` would use must exist; and the
    operating system's trust store only goes with ``verify-full`` (under ``verify-ca`` any
    certificate a public CA issued, for any host, would pass: libpq refuses that pairing)."""
    from innera.db.tls import SYSTEM, VERIFIED_MODES, system_ca_bundle, url_tls_params

    try:
        url_mode, url_root = url_tls_params(url)
    except ValueError:  # unparsable: libpq says why when connecting
        return
    sslmode = url_mode or db.sslmode
    if sslmode not in VERIFIED_MODES:
        return
    if (url_root or db.ssl_root_cert) != SYSTEM:
        return
    where = f"?sslrootcert=system in {name}" if url_root else "DB_SSL_ROOT_CERT=system"
    if sslmode == "verify-ca":
        problems.append(f"sslmode=verify-ca with {where} would accept a certificate any public "
                        "CA issued for any host: use sslmode=verify-full, or name your "
                        "provider's CA bundle in DB_SSL_ROOT_CERT")
    elif system_ca_bundle() is None:
        problems.append(f"{where}: the operating system has no CA bundle (install "
                        "ca-certificates, or set SSL_CERT_FILE or DB_SSL_ROOT_CERT to a bundle "
                        "file)")
