"""Logging: one structlog pipeline on stdout, as JSON lines or for a developer's terminal.

innera's own loggers and every library logger (hypercorn, psycopg, coredis, trio, …) end in
the same processors: context variables bound for the current request (``requestId``,
``userId``), the ``traceId`` of the Sentry trace the line belongs to (a traced request or
job, :func:`innera.observability.tracing.current_trace_id`), level, logger name, time,
exception text (never local variables), then redaction, then the renderer ``LOG_FORMAT``
picks: ``json`` (one JSON object per line, for log shippers) or ``console`` (structlog's
console renderer: aligned, coloured on a terminal, for someone reading ``./scripts/serve``).
``auto``, the default, is ``console`` when stdout is a terminal outside production and
``json`` otherwise (:func:`resolve_log_format`); both formats get the same redaction.

Libraries' retry chatter is demoted to debug (:class:`RetryChatterFilter`): coredis logs
"Retry attempt 1 due to error: No matching script." at info whenever a script is first run
on a server (it then loads it and runs it again), and the same line for the one retry of a
dropped connection. The attempt that finally fails raises, and innera logs that.

Redaction (censor ``[REDACTED]``) runs on every line, exceptions included, and has two
parts:

- the spec's pino paths, kept as written: exact paths such as ``req.headers.authorization``
  or ``req.body.code`` (:data:`REDACT_PATHS`);
- one name rule, :func:`is_redacted_key`, applied to every key at any depth (this covers the
  spec's wildcards ``*.email``, ``*.password``, ``*.token``, ``*.accessToken``,
  ``*.refreshToken`` and extends them). Sentry (:mod:`innera.observability.sentry`) uses the
  very same function.

The name rule. A key is compared *normalised*: lower-cased, every character that is not a
letter or a digit removed (``New_Password``, ``new-password`` and ``newPassword`` are all
``newpassword``). It is redacted when the normalised name

1. contains ``password``, ``passwd``, ``passphrase``, ``secret`` or ``token``
   (``newPassword``, ``currentPassword``, ``pushToken``, ``x-reauth-token``,
   ``client_secret`` …);
2. is ``authorization``, ``proxyauthorization``, ``cookie``, ``cookies``, ``setcookie`` or
   ``codeverifier``;
3. contains the name of a credential key: ``apikey``, ``accesskey``, ``privatekey``,
   ``secretkey``, ``signingkey``, ``encryptionkey``, ``masterkey``, ``sessionkey``
   (``apiKey``, ``x-api-key``, ``S3_ACCESS_KEY_ID``, ``privateKey`` …);
4. is or ends with ``mek``, ``dek`` or ``kek`` (key-encryption material: ``mek``,
   ``wrapped_dek``);
5. is ``email`` (the spec's ``*.email``: personal data rather than a secret).

``key`` on its own is *not* a credential: ``keyVersion``, ``sourceKey``, ``cache_key`` and
``Idempotency-Key`` are kept (the spec's exact path still censors the idempotency key of
``req.headers``). A ``None`` value stays ``null``: it reveals nothing.

Query strings in logged URLs (:func:`loggable_url`) have the values of ``q`` (a search term
is journal content), ``sig`` (a signed URL's signature) and of every name the rule matches
(``access_token`` …) censored.

The access line (:func:`log_request_completed`, one per request) skips the chain in ``json``:
it is built as one dict and written with orjson straight to the configured handler's stream,
under its lock (:func:`fast_access_handler` says when that is exactly what the chain would
write; ``tests/test_access_log.py`` compares the two line for line), and with Sentry on it
leaves the breadcrumb Sentry's logging integration would make of its record. Its fixed keys
are none the name rule matches; its ``url`` is censored as the chain censors it.
"""

from __future__ import annotations

import datetime
import functools
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import orjson
import sentry_sdk
import structlog
from sentry_sdk.integrations.logging import LoggingIntegration

from innera.observability.tracing import current_trace_id

CENSOR = "[REDACTED]"

#: The spec's redact paths (pino syntax) as key tuples.
REDACT_PATHS: tuple[tuple[str, ...], ...] = (
    ("req", "headers", "authorization"),
    ("req", "headers", "cookie"),
    ("req", "headers", "x-reauth-token"),
    ("req", "headers", "idempotency-key"),
    ("req", "body", "code"),
    ("req", "body", "codeVerifier"),
    ("req", "body", "identityToken"),
    ("req", "body", "refreshToken"),
    ("res", "headers", "set-cookie"),
    # innera's own: journal content is encrypted at rest, so it stays out of the logs too
    ("req", "body", "title"),
    ("req", "body", "body"),
    ("req", "body", "tags"),
    ("req", "body", "mood"),
)
#: query parameters whose values never reach a log line besides those :func:`is_redacted_key`
#: matches (search terms are journal content; ``sig`` signs an attachment URL)
HIDDEN_QUERY_PARAMS = frozenset({"q", "sig"})

#: rule 1: a normalised name containing one of these is a secret
SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token")
#: rule 2: normalised names that are secrets as a whole
SECRET_NAMES = frozenset({"authorization", "proxyauthorization", "cookie", "cookies",
                          "setcookie", "codeverifier"})
#: rule 3: a normalised name containing one of these names a credential key
CREDENTIAL_KEYS = ("apikey", "accesskey", "privatekey", "secretkey", "signingkey",
                   "encryptionkey", "masterkey", "sessionkey")
#: rule 4: a normalised name that is or ends with one of these is key material
KEY_MATERIAL_SUFFIXES = ("mek", "dek", "kek")
#: rule 5: personal data, redacted at any depth as the spec's ``*.email``
PERSONAL_NAMES = frozenset({"email"})

#: the spec's wildcard names (``*.email``, ``*.password`` …): every one matches the rule
SPEC_WILDCARDS = ("email", "password", "token", "accessToken", "refreshToken")

#: normalised keys whose string values are URLs: their query strings are censored too
URL_KEYS = frozenset({"url", "uri", "href", "referer", "referrer", "location"})

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise_key(name: str) -> str:
    """``New_Password``, ``new-password``, ``newPassword`` → ``newpassword``."""
    return _NOT_ALNUM.sub("", name.lower())


@functools.lru_cache(maxsize=4096)
def is_redacted_key(name: str) -> bool:
    """The one name rule of log and Sentry redaction (see the module docstring): ``True``
    when the value under the key ``name`` must never be logged nor sent."""
    n = normalise_key(name)
    return (
        any(word in n for word in SECRET_WORDS)
        or n in SECRET_NAMES
        or any(key in n for key in CREDENTIAL_KEYS)
        or n.endswith(KEY_MATERIAL_SUFFIXES)
        or n in PERSONAL_NAMES
    )


@functools.lru_cache(maxsize=4096)
def is_url_key(name: str) -> bool:
    """Whether the value under ``name`` is a URL (``url``, ``Referer`` …, see :data:`URL_KEYS`)."""
    return normalise_key(name) in URL_KEYS


_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}


def loggable_url(path: str, query_string: bytes) -> str:
    """``path?query`` with the values of :data:`HIDDEN_QUERY_PARAMS` and of every name
    :func:`is_redacted_key` matches censored."""
    if not query_string:
        return path
    return f"{path}?{_censor_query(query_string.decode('latin-1'))}"


def _censor_url(url: str) -> str:
    """A URL (or ``path?query``) with its query censored as :func:`loggable_url` does and
    its fragment dropped."""
    base, _, rest = url.partition("?")
    return f"{base}?{_censor_query(rest.partition('#')[0])}"


def _censor_query(query: str) -> str:
    from urllib.parse import parse_qsl, urlencode

    pairs = parse_qsl(query, keep_blank_values=True)
    shown = [(k, CENSOR if k in HIDDEN_QUERY_PARAMS or is_redacted_key(k) else v)
             for k, v in pairs]
    return urlencode(shown, safe="[]")


def redact(value: Any) -> Any:
    """A copy of ``value`` with every redact path and every key :func:`is_redacted_key`
    matches censored, at any depth (dicts within lists included)."""
    value = _redact_anywhere(value)
    if isinstance(value, MutableMapping):
        for path in REDACT_PATHS:
            _censor_path(value, path)
    return value


def _redact_anywhere(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _redact_item(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_anywhere(v) for v in value]
    return value


def _redact_item(key: Any, value: Any) -> Any:
    if not isinstance(key, str):
        return _redact_anywhere(value)
    if value is not None and is_redacted_key(key):
        return CENSOR
    if isinstance(value, str) and "?" in value and is_url_key(key):
        return _censor_url(value)
    return _redact_anywhere(value)


def _censor_path(obj: MutableMapping[str, Any], path: tuple[str, ...]) -> None:
    head, *rest = path
    if not isinstance(obj, MutableMapping) or head not in obj:
        return
    if not rest:
        obj[head] = CENSOR
        return
    child = obj[head]
    if isinstance(child, MutableMapping):
        if len(rest) == 1:  # the last key (a header name): matched case-insensitively
            for key in list(child):
                if isinstance(key, str) and key.lower() == rest[0].lower():
                    child[key] = CENSOR
        else:
            _censor_path(child, tuple(rest))


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return redact(event)


def _level_name(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    level = event.get("level")
    if level == "warning":
        event["level"] = "warn"
    elif level == "critical":
        event["level"] = "fatal"
    return event


def _add_trace_id(_: Any, __: str, event: MutableMapping[str, Any]
                  ) -> MutableMapping[str, Any]:
    """``traceId`` on the lines of a traced request or job, so logs and traces join."""
    trace_id = current_trace_id()
    if trace_id is not None:
        event["traceId"] = trace_id
    return event


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def resolve_log_format(log_format: str, *, production: bool, stream: TextIO) -> str:
    """``json`` or ``console``: ``log_format`` itself unless it is ``auto``, which is
    ``console`` for a terminal outside production (a developer reading the output) and
    ``json`` otherwise (a container, a pipe, a file: something that ships lines)."""
    if log_format != "auto":
        return log_format
    return "console" if not production and _is_terminal(stream) else "json"


class RetryChatterFilter(logging.Filter):
    """Demotes a library's "Retry attempt …" lines to debug (dropped unless the logger logs
    debug). Attached to the ``coredis`` logger: its retries (a script unknown to a server,
    which it then loads; the one retry of a connection that dropped) are routine, and a
    retry that does not help ends in an exception, which innera logs. Every other line of
    the library passes unchanged."""

    PREFIX = "Retry attempt "

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and isinstance(record.msg, str) \
                and record.msg.startswith(self.PREFIX):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


#: the libraries whose retry lines :class:`RetryChatterFilter` demotes
RETRY_CHATTER_LOGGERS = ("coredis",)


def configure_logging(level: str = "info", stream: TextIO | None = None, *,
                      log_format: str = "json", production: bool = False) -> str:
    """Route every logger (ours and the libraries') to ``stream`` (stdout) in ``log_format``
    (``auto`` resolved by :func:`resolve_log_format`); returns the format used."""
    stream = stream or sys.stdout
    log_format = resolve_log_format(log_format, production=production, stream=stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_trace_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: list[Any]
    if log_format == "console":
        renderer = [_redact_processor, structlog.dev.ConsoleRenderer(
            colors=_is_terminal(stream), timestamp_key="time",
            # the exception is already plain text (format_exc_info): never Rich's
            # traceback with its local variables
            exception_formatter=structlog.dev.plain_traceback)]
    else:
        renderer = [structlog.processors.EventRenamer("msg"), _redact_processor,
                    structlog.processors.JSONRenderer(ensure_ascii=False)]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _level_name,
            # plain traceback text: never local variables
            structlog.processors.format_exc_info,
            *renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    global _json_handler
    _json_handler = _JsonHandler(handler, formatter) if log_format == "json" else None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # Libraries log through the same root handler; keep their chatter at the chosen level,
    # except per-request access noise that innera logs itself.
    for noisy in ("hpack", "h11", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    for name in RETRY_CHATTER_LOGGERS:
        library = logging.getLogger(name)
        if not any(isinstance(f, RetryChatterFilter) for f in library.filters):
            library.addFilter(RetryChatterFilter())
    return log_format


#: the per-request lines (the spec's pino-http logger)
access_log = logging.getLogger("innera.request")

ACCESS_MESSAGE = "request completed"


@dataclass(frozen=True, slots=True)
class _JsonHandler:
    """The handler (and its formatter) :func:`configure_logging` installed for ``json``: the
    one the access line may be written to directly (:func:`fast_access_handler`)."""

    handler: logging.StreamHandler[TextIO]
    formatter: logging.Formatter


#: set by each :func:`configure_logging` call: its handler when the format is ``json``, else
#: None (``console`` lines keep the processor chain)
_json_handler: _JsonHandler | None = None


def fast_access_handler() -> logging.StreamHandler[TextIO] | None:
    """The handler :func:`log_request_completed` writes its line to directly, or None when
    the line must go through :mod:`logging` (the processor chain).

    Direct is exactly what logging would do with the line: the latest :func:`configure_logging`
    chose ``json``, its handler is the only one between ``innera.request`` and the root, and
    nothing else would see the record (no filter on the logger or the handler, the logger not
    disabled, the handler's level and formatter the ones configured, the stock ``LogRecord``
    factory: another may add keys to a line). Anything else, a test's extra handler, a filter,
    a replaced formatter, takes the ordinary path."""
    configured = _json_handler
    if configured is None or logging.getLogRecordFactory() is not logging.LogRecord:
        return None
    handler = configured.handler
    if access_log.disabled or access_log.filters or handler.filters \
            or handler.level > logging.INFO or handler.formatter is not configured.formatter:
        return None
    found = False
    logger: logging.Logger | None = access_log
    while logger is not None:  # the handlers logging would call (Logger.callHandlers)
        for candidate in logger.handlers:
            if found or candidate is not handler:
                return None
            found = True
        if not logger.propagate:
            break
        logger = logger.parent
    return handler if found else None


def _sentry_breadcrumbs() -> bool | None:
    """Whether Sentry's logging integration makes the access line a breadcrumb, as it does
    with every record at info and above (:func:`innera.observability.sentry.init_sentry`):
    True when Sentry is initialised, False when not; None when a ``before_breadcrumb``
    callback would be handed the ``LogRecord`` itself (innera sets none)."""
    client = sentry_sdk.get_client()
    if client.get_integration(LoggingIntegration) is None:
        return False
    return None if client.options.get("before_breadcrumb") is not None else True


def _write_access_line(handler: logging.StreamHandler[TextIO], path: str,
                       req: dict[str, Any], res: dict[str, Any], response_time: float) -> bool:
    """The access line, built as one dict and written to ``handler``'s stream under its lock,
    as the processor chain would render it (same keys, values and order), and the Sentry
    breadcrumb the logging integration would make of its record; False, having done nothing,
    when something the line cannot render exactly is bound (a context variable besides
    ``requestId`` and ``userId``), a string JSON cannot encode, or a ``before_breadcrumb``.

    ``req`` and ``res`` are the record's (``req["url"]`` is :func:`loggable_url`'s). The
    chain's redaction passes that URL through :func:`_censor_url` once more (the key is
    ``url``), which changes nothing unless the path itself holds a ``?`` (a ``%3F`` in the
    request): the query
    :func:`loggable_url` made parses back to the same pairs (``tests/test_access_log.py``
    checks this for arbitrary paths and queries)."""
    breadcrumbs = _sentry_breadcrumbs()
    if breadcrumbs is None:
        return False
    line = structlog.contextvars.get_contextvars()  # merge_contextvars' keys, in its order
    for key in line:
        if key != "requestId" and key != "userId":  # a caller's own: through the chain
            return False
    trace_id = current_trace_id()
    if trace_id is not None:
        line["traceId"] = trace_id
    now = datetime.datetime.now(tz=datetime.UTC)
    line["level"] = "info"
    line["logger"] = access_log.name
    line["req"] = {**req, "url": _censor_url(req["url"])} if "?" in path else req
    line["res"] = res
    line["responseTime"] = response_time
    line["time"] = now.isoformat().replace("+00:00", "Z")
    line["msg"] = ACCESS_MESSAGE
    try:
        text = orjson.dumps(line).decode()
    except orjson.JSONEncodeError:  # e.g. a lone surrogate: the chain's encoder decides
        return False
    handler.acquire()  # as Handler.handle: a line is never interleaved with another
    try:
        handler.stream.write(text + handler.terminator)
        handler.flush()
    except RecursionError:
        raise
    except Exception:  # as StreamHandler.emit: reported by the handler, never raised
        handler.handleError(access_log.makeRecord(
            access_log.name, logging.INFO, __file__, 0, ACCESS_MESSAGE, (), None))
    finally:
        handler.release()
    if breadcrumbs:  # what the integration's BreadcrumbHandler makes of the record
        sentry_sdk.add_breadcrumb({
            "type": "log", "level": "info", "category": access_log.name,
            "message": ACCESS_MESSAGE, "timestamp": now,
            "data": {"req": req, "res": res, "responseTime": response_time}})
    return True


def log_request_completed(method: str, path: str, query_string: bytes, request_id: str,
                          user_id: str | None, status: int, elapsed_s: float) -> None:
    """The one completion line per request (the framework's after-request hook and the
    framework-free routes both write it); nothing is formatted when it is not logged.

    In ``json`` it is written straight to the configured handler (:func:`fast_access_handler`,
    :func:`_write_access_line`): the same JSON object the processor chain renders, and the
    same Sentry breadcrumb, without a ``LogRecord`` and the chain (about a tenth of the CPU:
    ``bench/access_log.py``), compact (orjson) where the chain puts a space after ``:`` and
    ``,``. Everything else (``console``, another handler or a filter, a caller's own context
    variable) goes through logging."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    req = {"method": method, "url": loggable_url(path, query_string),
           "requestId": request_id, "userId": user_id}
    res = {"statusCode": status}
    response_time = round(elapsed_s * 1000, 2)
    handler = fast_access_handler()
    if handler is not None and _write_access_line(handler, path, req, res, response_time):
        return
    access_log.info(ACCESS_MESSAGE, extra={"req": req, "res": res, "responseTime": response_time})


def bind_request(request_id: str) -> None:
    """Bind ``requestId`` to every line logged while serving the current request, and forget
    the previous request's ``userId`` (a keep-alive connection's requests can share a task).
    These two are all innera binds, so this is ``clear_contextvars()`` without its walk over
    every context variable of the task (an ``Ellipsis`` value is structlog's "unbound")."""
    structlog.contextvars.bind_contextvars(requestId=request_id, userId=...)


def bind_user(user_id: str) -> None:
    """Authenticated requests carry ``userId`` on every line (the spec's child logger)."""
    structlog.contextvars.bind_contextvars(userId=user_id)
